"""The response cache (response.py) and the replay of a completion as a stream (replay.py)."""

from proxy.cache.replay import Accumulator, chunks
from proxy.cache.response import Plan, Policy, ResponseCache

__all__ = ["Accumulator", "Plan", "Policy", "ResponseCache", "chunks"]
