"""A throwaway PostgreSQL database per test, on the server at 127.0.0.1:5432 (or
$TURNOUT_TEST_POSTGRES, an admin URL): ``turnout_test_<random>``, created for the test and dropped
after it. Without a server the test is skipped with the reason — except in CI (``CI`` set), where
it fails: CI starts PostgreSQL (.ci/run), so a missing one is a broken run, not a skip.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

ADMIN = os.environ.get("TURNOUT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _missing() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    try:
        with psycopg.connect(ADMIN, connect_timeout=3):
            return None
    except psycopg.Error as e:
        return f"no PostgreSQL at {urlsplit(ADMIN).hostname}:{urlsplit(ADMIN).port or 5432} ({str(e).strip()[:120]})"


@contextmanager
def database() -> Iterator[str]:
    """The URL of a fresh, empty database, dropped afterwards."""
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(reason)
    import psycopg

    name = f"turnout_test_{secrets.token_hex(5)}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    u = urlsplit(ADMIN)
    try:
        yield urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
