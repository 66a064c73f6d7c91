"""The ledger's database: one small interface, two dialects — SQLite (one file, the default) and
PostgreSQL (``usage.ledger: postgresql://…``, one ledger that several replicas write).

The ledger, the usage report, the export, replays and stored responses are written once, against
`Db`, in the SQL both engines share (``?`` placeholders, ``INSERT … ON CONFLICT``, ``CASE`` instead
of summing booleans, qualified columns in upserts). What differs is kept here and nowhere else:
placeholders (PostgreSQL's driver takes ``%s``), column types (``REAL`` is 8 bytes in SQLite but 4
in PostgreSQL; row ids), transactions and the schema lock, PRAGMAs, reading JSON arrays, the
integer bucket of a time (``CAST`` truncates in SQLite, rounds in PostgreSQL), and the numbers
PostgreSQL's ``SUM(bigint)`` returns (``numeric``, read here as int or float, never ``Decimal``).

PostgreSQL goes through psycopg 3 (the ``fleet`` extra; imported only when a PostgreSQL ledger is
opened: it takes a third of a second) with a plain synchronous connection, used
only from the ledger's one thread, like SQLite's; a connection that broke (server restart, network)
is opened again on the next statement, and the rows of a failed batch stay queued until then.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

SCHEMA_LOCK = 0x7475726E  # "turn": the advisory lock replicas take while they create or migrate the schema
_URL = re.compile(r"^postgres(ql)?://", re.I)



def errors() -> tuple[type[Exception], ...]:
    """The database errors a ledger can raise (psycopg's only once it was imported)."""
    pg = sys.modules.get("psycopg")
    return (sqlite3.Error,) if pg is None else (sqlite3.Error, pg.Error)


def is_postgres(url: str) -> bool:
    return bool(_URL.match(url))


def label(url: str) -> str:
    """Where a ledger lives, fit for logs and banners: a PostgreSQL URL without its password."""
    if not is_postgres(url):
        return url
    u = urlsplit(url)
    if u.password is None:
        return url
    host = u.hostname or ""
    netloc = f"{u.username}:***@{host}" + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def statements(script: str) -> list[str]:
    """A schema script's statements (each ends with ``;`` at the end of a line)."""
    return [s.strip() for s in re.split(r";\s*$", script, flags=re.M) if s.strip()]


class Db:
    """A connection with its dialect. Statements use ``?`` placeholders and the ``{real}``, ``{big}``
    and ``{id}`` column types in schema scripts; the JSON and bucket fragments come from here."""

    dialect = ""
    types: dict[str, str] = {}
    same = "IS"  # NULL-safe equality
    each_attempt = ""  # FROM item: one row `a` per element of r.attempts

    def __init__(self, url: str) -> None:
        self.url = url
        self.label = label(url)

    def execute(self, sql: str, args: Iterable[Any] = ()) -> Any:
        raise NotImplementedError

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def script(self, sql: str) -> None:
        """Run a schema script (several statements, column types as ``{real}`` etc.)."""
        raise NotImplementedError

    @contextmanager
    def transaction(self) -> Iterator[None]:
        raise NotImplementedError
        yield

    @contextmanager
    def schema_lock(self) -> Iterator[None]:
        """Held while the schema is created or migrated (one replica at a time)."""
        raise NotImplementedError
        yield

    def columns(self, table: str) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def attempt(self, field: str) -> str:
        """A field of the attempt `a` (see `each_attempt`) as text."""
        raise NotImplementedError

    def bucket(self, expr: str, seconds: int) -> str:
        """The integer number of the `seconds`-long bucket that the time `expr` falls in."""
        raise NotImplementedError


class SQLite(Db):
    dialect = "sqlite"
    types = {"real": "REAL", "big": "INTEGER", "id": "INTEGER PRIMARY KEY"}
    each_attempt = "json_each(r.attempts) AS a"

    def __init__(self, path: str, readonly: bool = False) -> None:
        super().__init__(path)
        if readonly:
            if path != ":memory:" and not Path(path).exists():
                raise FileNotFoundError(path)
            self.conn = sqlite3.connect(f"file:{path}?mode=ro" if path != ":memory:" else path,
                                        uri=path != ":memory:", check_same_thread=False)
            self.conn.execute("PRAGMA busy_timeout=5000")
            return
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=5000")

    def execute(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, tuple(args))

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.conn.executemany(sql, rows)

    def script(self, sql: str) -> None:
        for stmt in statements(sql.format(**self.types)):
            self.conn.execute(stmt)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def schema_lock(self) -> Iterator[None]:
        with self.transaction():  # BEGIN IMMEDIATE: one writer (and so one migrating process) at a time
            yield

    def columns(self, table: str) -> list[str]:
        return [r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")]

    def close(self) -> None:
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.conn.close()

    def attempt(self, field: str) -> str:
        return f"json_extract(a.value, '$.{field}')"

    def bucket(self, expr: str, seconds: int) -> str:
        return f"CAST({expr} / {seconds} AS INTEGER)"  # times are positive: truncation is the floor


def _number(data: Any) -> int | float:
    """numeric (what SUM of a bigint column gives) as int or float, like SQLite's sums."""
    s = bytes(data)
    return int(s) if s.lstrip(b"-").isdigit() else float(s)


@lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """``?`` placeholders → psycopg's ``%s`` (a literal ``%`` doubled). Our statements have no ``?``
    inside string literals."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgreSQL(Db):
    dialect = "postgresql"
    types = {"real": "DOUBLE PRECISION", "big": "BIGINT", "id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"}
    same = "IS NOT DISTINCT FROM"
    each_attempt = "jsonb_array_elements(r.attempts::jsonb) AS a(value)"

    def __init__(self, url: str, readonly: bool = False) -> None:
        try:
            import psycopg
            from psycopg.adapt import Loader
        except ImportError:
            raise RuntimeError("a PostgreSQL ledger needs psycopg: pip install 'turnout[fleet]'") from None

        class Number(Loader):  # type: ignore[misc]
            def load(self, data: Any) -> int | float:
                return _number(data)

        self.psycopg, self.number = psycopg, Number
        super().__init__(url)
        self.readonly = readonly
        self.in_transaction = False
        self.conn = self._connect()

    def _connect(self) -> Any:
        conn = self.psycopg.connect(self.url, autocommit=True, connect_timeout=5, application_name="turnout")
        conn.adapters.register_loader("numeric", self.number)
        if self.readonly:
            conn.execute("SET default_transaction_read_only = on")
        return conn

    def _c(self) -> Any:
        if self.conn.closed or self.conn.broken:
            if self.in_transaction:  # never carry on a transaction's statements on a new connection
                raise self.psycopg.OperationalError("the ledger's connection was lost in a transaction")
            self.conn.close()
            self.conn = self._connect()
        return self.conn

    def _again(self, fn: Any) -> Any:
        """`fn(connection)`, once more on a new connection if the old one turned out to be broken (a
        server restart, a dropped network) — only where nothing can have happened twice: a statement
        outside a transaction (reads and idempotent writes), or the BEGIN of one."""
        idle = self.psycopg.pq.TransactionStatus.IDLE
        if self.conn.info.transaction_status != idle:
            return fn(self._c())
        try:
            return fn(self._c())
        except self.psycopg.OperationalError:
            if not self.conn.broken:
                raise
            return fn(self._c())

    def execute(self, sql: str, args: Iterable[Any] = ()) -> Any:
        args = tuple(args)
        return self._again(lambda c: c.execute(_pg(sql) if args else sql, args or None))

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self._c().cursor() as cur:
            cur.executemany(_pg(sql), rows)

    def script(self, sql: str) -> None:
        for stmt in statements(sql.format(**self.types)):
            self._c().execute(stmt)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.execute("BEGIN")
        self.in_transaction = True
        try:
            yield
        except BaseException:
            if not self.conn.broken:
                self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")
        finally:
            self.in_transaction = False

    @contextmanager
    def schema_lock(self) -> Iterator[None]:
        with self.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            yield

    def columns(self, table: str) -> list[str]:
        return [r[0] for r in self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ? ORDER BY ordinal_position", (table,))]

    def close(self) -> None:
        self.conn.close()

    def attempt(self, field: str) -> str:
        return f"(a.value ->> '{field}')"

    def bucket(self, expr: str, seconds: int) -> str:
        return f"CAST(FLOOR({expr} / {seconds}) AS BIGINT)"


def open_db(url: str, readonly: bool = False) -> Db:
    """The ledger database at `url`: a PostgreSQL URL, else a SQLite file path (or ``:memory:``)."""
    if is_postgres(url):
        return PostgreSQL(url, readonly)
    return SQLite(url, readonly)
