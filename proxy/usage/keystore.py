"""Proxy keys created at run time (`turnout keys …`, `/turnout/admin/keys`), kept in the ledger database.

A key is `tk-` + 32 random URL-safe characters, shown once when created (or rotated); the table
`api_keys` keeps only its SHA-256 and its first `PREFIX` characters, which is all `list` shows.
Keys in proxy.yaml keep working beside these. Every process that shares the database sees the same
keys: `lookup()` asks the table at most once a second per key (a cache of `TTL` seconds, positive
and negative), so a key created or revoked anywhere works or is refused everywhere within a second.
A key may carry a tier, a role (`user`, or `admin`: the admin endpoints), a rate limit (`rpm`), a daily budget (USD), the models or routes it may call
(`routes`), and an expiry. Names are unique among active keys (and must not shadow a proxy.yaml key).

The ledger's `connect` and its `Db` (SQLite or PostgreSQL); the queries are the plain SQL both share.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from proxy.config import Budget, Key, RateLimit
from proxy.usage.db import Db
from proxy.usage.ledger import connect

PREFIX = 10  # characters of a key kept and shown: "tk-" and 7 more
TTL = 1.0  # seconds a lookup (found or not) is trusted: the longest a revocation takes to apply
TABLE = """
CREATE TABLE IF NOT EXISTS api_keys (
  hash TEXT PRIMARY KEY, prefix TEXT NOT NULL, name TEXT NOT NULL, tier TEXT, rpm INTEGER, budget_day REAL,
  routes TEXT, expires REAL, created REAL NOT NULL, revoked REAL, role TEXT NOT NULL DEFAULT 'user'
);
CREATE INDEX IF NOT EXISTS api_keys_name ON api_keys (name);
"""
COLUMNS = "hash, prefix, name, tier, rpm, budget_day, routes, expires, created, revoked, role"
ROLES = ("user", "admin")


class KeyStoreError(ValueError):
    """A key operation that cannot be done (unknown name, duplicate name, bad expiry): the message says why."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_expiry(value: str | None, now: float | None = None) -> float | None:
    """`30d`, `12h`, `90m`, an ISO date or date-time (UTC unless it says) → epoch seconds; None: never."""
    if not value:
        return None
    now = time.time() if now is None else now
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([dhm])", value.strip())
    if m:
        return now + float(m[1]) * {"d": 86400, "h": 3600, "m": 60}[m[2]]
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise KeyStoreError(f"expires: expected 30d, 12h, 90m or an ISO date, got {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


@dataclass
class StoredKey:
    hash: str
    prefix: str
    name: str
    tier: str | None
    rpm: int | None
    budget_day: float | None
    routes: list[str] | None
    expires: float | None
    created: float
    revoked: float | None
    role: str = "user"

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> "StoredKey":
        h, prefix, name, tier, rpm, budget, routes, expires, created, revoked, role = row
        return cls(h, prefix, name, tier, rpm, budget, json.loads(routes) if routes is not None else None, expires,
                   created, revoked, role)

    def active(self, now: float) -> bool:
        return self.revoked is None and (self.expires is None or self.expires > now)

    def as_key(self) -> Key:
        """The config-shaped Key the rest of Turnout reads (its `key` is the prefix: never the secret)."""
        allow = frozenset(self.routes) if self.routes is not None else None  # route or target names alike
        return Key(key=self.prefix, name=self.name, tier=self.tier, role=self.role,  # type: ignore[arg-type]
                   rate_limit=RateLimit(requests_per_minute=self.rpm) if self.rpm else None,
                   budget=Budget(daily=self.budget_day) if self.budget_day is not None else None,
                   routes=allow, targets=allow)

    def public(self) -> dict[str, Any]:
        """What list and the admin API show: never the hash or the secret."""
        iso = lambda t: None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")  # noqa: E731
        return {"name": self.name, "prefix": self.prefix, "tier": self.tier, "role": self.role, "rpm": self.rpm,
                "budget_day": self.budget_day, "routes": self.routes, "expires": iso(self.expires),
                "created": iso(self.created), "revoked": iso(self.revoked),
                "status": "revoked" if self.revoked else ("expired" if not self.active(time.time()) else "active")}


class KeyStore:
    """The `api_keys` table of one database, with the one-second lookup cache of a serving process."""

    def __init__(self, path: str, reserved: frozenset[str] = frozenset()) -> None:
        self.path = path
        self.reserved = reserved  # names of proxy.yaml keys: not to be taken by a stored key
        self.conn: Db | None = None
        self.cache: dict[str, tuple[float, Key | None]] = {}  # hash → (monotonic fetch time, key or None)

    def db(self) -> Db:
        if self.conn is None:
            self.conn = connect(self.path)
            self.conn.script(TABLE)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # --- the request path ------------------------------------------------------------------------

    def lookup(self, secret: str) -> Key | None:
        """The active key with this secret, asking the table at most once per `TTL` seconds per key."""
        h = digest(secret)
        now = time.monotonic()
        hit = self.cache.get(h)
        if hit is not None and now - hit[0] < TTL:
            return hit[1]
        row = self.db().execute(f"SELECT {COLUMNS} FROM api_keys WHERE hash = ?", (h,)).fetchone()
        stored = StoredKey.of(row) if row else None
        key = stored.as_key() if stored is not None and stored.active(time.time()) else None
        if len(self.cache) > 100_000:  # bounded: random wrong keys cannot grow it without limit
            self.cache.clear()
        self.cache[h] = (now, key)
        return key

    # --- management (the CLI and the admin API) --------------------------------------------------

    def create(self, name: str, tier: str | None = None, rpm: int | None = None, budget_day: float | None = None,
               routes: list[str] | None = None, expires: str | float | None = None,
               role: str = "user") -> tuple[str, StoredKey]:
        """A new key: (the secret, shown this once; its stored record)."""
        if role not in ROLES:
            raise KeyStoreError(f"role: expected user or admin, got {role!r}")
        if not name or not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
            raise KeyStoreError(f"name: expected 1 to 64 letters, digits or _.@-, got {name!r}")
        if name in self.reserved:
            raise KeyStoreError(f"name: {name!r} is a key in proxy.yaml")
        if rpm is not None and rpm < 1:
            raise KeyStoreError(f"rpm: expected at least 1, got {rpm}")
        if budget_day is not None and budget_day < 0:
            raise KeyStoreError(f"budget_day: expected USD >= 0, got {budget_day}")
        until = parse_expiry(expires) if isinstance(expires, str) or expires is None else float(expires)
        now = time.time()
        db = self.db()
        if any(StoredKey.of(r).active(now) for r in db.execute(f"SELECT {COLUMNS} FROM api_keys WHERE name = ?",
                                                                (name,))):
            raise KeyStoreError(f"name: an active key is already called {name!r} (rotate or revoke it)")
        secret = "tk-" + secrets.token_urlsafe(24)
        stored = StoredKey(digest(secret), secret[:PREFIX], name, tier, rpm, budget_day, routes, until, now, None, role)
        db.execute(f"INSERT INTO api_keys ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (stored.hash, stored.prefix, name, tier, rpm, budget_day,
                    json.dumps(routes) if routes is not None else None, until, now, None, role))
        return secret, stored

    def list(self, all: bool = False) -> list[StoredKey]:
        rows = [StoredKey.of(r) for r in self.db().execute(f"SELECT {COLUMNS} FROM api_keys ORDER BY created")]
        now = time.time()
        return rows if all else [k for k in rows if k.active(now)]

    def find(self, ref: str) -> StoredKey:
        """The active key named `ref`, or whose prefix `ref` is."""
        now = time.time()
        found = [k for k in self.list() if k.active(now) and (k.name == ref or k.prefix == ref)]
        if not found:
            raise KeyStoreError(f"no active key named {ref!r} or with that prefix")
        return found[0]

    def revoke(self, ref: str) -> StoredKey:
        k = self.find(ref)
        k.revoked = time.time()
        self.db().execute("UPDATE api_keys SET revoked = ? WHERE hash = ?", (k.revoked, k.hash))
        return k

    def rotate(self, ref: str) -> tuple[str, StoredKey]:
        """A new secret with the same settings; the old one is revoked at once."""
        old = self.revoke(ref)
        return self.create(old.name, old.tier, old.rpm, old.budget_day, old.routes, old.expires, old.role)
