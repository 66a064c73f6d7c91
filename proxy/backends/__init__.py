"""Backends, one module per `type` in proxy.yaml, each exposing a `Backend` subclass named `Backend`.

Loaded by name so that adding a provider is adding a module, not editing a registry.
"""

from __future__ import annotations

import importlib

from proxy.backends.base import Backend
from proxy.config import BackendConfig


def create(cfg: BackendConfig) -> Backend:
    module = importlib.import_module(f"proxy.backends.{cfg.type}")
    return module.Backend(cfg)
