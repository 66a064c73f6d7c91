"""Stored Responses (``store`` / ``previous_response_id`` / ``GET`` and ``DELETE /v1/responses/{id}``),
kept in the ledger's database (SQLite or PostgreSQL) with a time to live.

Why here: the ledger is the one durable store Turnout already has (one database, one writer thread);
stored responses share its connection and thread, so no second database or lock appears. Unlike
the ledger rows, these rows do hold conversation text — that is what storing a response means —
so each expires after ``ttl`` seconds (30 days by default, as OpenAI keeps them) and belongs to
the proxy key that created it: another key cannot read, continue or delete it. With a PostgreSQL
ledger every replica sees every stored response, so a follow-up may land on any of them.

A row keeps the Response object as sent and the chat messages of the whole conversation up to
and including its answer (without the instructions), which is what a follow-up continues from.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxy.usage.db import Db
from proxy.usage.ledger import Ledger

Json = dict[str, Any]
DEFAULT_TTL = 30 * 86400

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,       -- the proxy key's name ('' without keys)
    created {real} NOT NULL,
    expires {real} NOT NULL,
    response TEXT NOT NULL,    -- the Response object as sent (JSON)
    messages TEXT NOT NULL     -- the conversation as chat messages, for previous_response_id (JSON)
);
CREATE INDEX IF NOT EXISTS responses_expires ON responses(expires);
"""


class ResponseStore:
    def __init__(self, ledger: Ledger, ttl: float = DEFAULT_TTL) -> None:
        self.ledger = ledger
        self.ttl = ttl
        self.ready = False

    def _conn(self) -> Db:
        if self.ledger.conn is None:
            self.ledger.open()
        conn = self.ledger.conn
        assert conn is not None
        if not self.ready:
            with conn.schema_lock():
                conn.script(SCHEMA)
            self.ready = True
        return conn

    async def put(self, id: str, owner: str, response: Json, messages: list[Json]) -> None:
        now = time.time()

        def write() -> None:
            c = self._conn()
            c.execute("INSERT INTO responses VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                      "owner = excluded.owner, created = excluded.created, expires = excluded.expires, "
                      "response = excluded.response, messages = excluded.messages",
                      (id, owner, now, now + self.ttl, orjson.dumps(response).decode(),
                       orjson.dumps(messages).decode()))
            c.execute("DELETE FROM responses WHERE expires < ?", (now,))

        await self.ledger.run(write)

    async def get(self, id: str, owner: str) -> tuple[Json, list[Json]] | None:
        def read() -> Any:
            return self._conn().execute("SELECT response, messages FROM responses WHERE id = ? AND owner = ? "
                                        "AND expires >= ?", (id, owner, time.time())).fetchone()

        row = await self.ledger.run(read)
        return None if row is None else (orjson.loads(row[0]), orjson.loads(row[1]))

    async def delete(self, id: str, owner: str) -> bool:
        def remove() -> int:
            return self._conn().execute("DELETE FROM responses WHERE id = ? AND owner = ?", (id, owner)).rowcount

        return bool(await self.ledger.run(remove))
