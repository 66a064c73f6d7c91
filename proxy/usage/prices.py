"""The built-in price table, for the usage package: it lives in `proxy.config.prices` because config
fills unpriced cloud targets from it at load."""

from proxy.config.prices import TABLE, Entry, apply, examples, free, lookup

__all__ = ["TABLE", "Entry", "apply", "examples", "free", "lookup"]
