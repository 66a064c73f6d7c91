"""Deterministic embedding vectors for the provider emulators: the same text always gets the same
unit vector (seeded by its SHA-256), so tests can check that Turnout kept inputs and order."""

from __future__ import annotations

import hashlib
import math
import random


def vector(text: str, dimensions: int) -> list[float]:
    """A unit vector of `dimensions` floats for `text`."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    v = [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]
