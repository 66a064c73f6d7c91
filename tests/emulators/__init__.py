"""Upstream emulators: real HTTP servers (ASGI apps run by `tests.conftest.serve`) that validate
requests as each provider's API does and answer with its real wire format, scriptable per test."""
