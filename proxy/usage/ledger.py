"""The usage ledger: one row per chat request, written off the request path, in SQLite (one file) or
PostgreSQL (one ledger for several replicas; the dialects live in `proxy.usage.db`).

`Recorder` is an observer of the app. When a request finishes it measures the tokens (the
provider's usage when given; otherwise a tiktoken estimate, marked ``estimated``, of the prompt
and of what was actually sent — a stream cut short counts the chunks that went out), prices them,
settles what the request reserved of quotas, rate limits and budgets (`proxy.usage.quota`), and
appends a tuple to a list: that is all the request path pays. A writer task swaps the list out
every `usage.flush_interval` (at most 1 s) or when `usage.batch_size` rows are waiting, and a
single writer thread turns the tuples into rows (JSON of the attempts and routing features) and inserts them in one transaction
together with a snapshot of the quota and budget counters (also when only admissions changed
them, so that other worker processes see requests in flight). Shutdown flushes what is left.

Durability (SQLite): WAL journal, ``synchronous=FULL`` (each batch is on disk when its commit returns). A
hard crash (kill -9, power loss) loses at most the rows of the last `flush_interval` — one second
by default — plus a batch being written at that instant. Quotas and budgets restart from the last
snapshot, which is part of the same transaction as the rows, so the two always agree.

Several processes (``--workers``) or replicas (one PostgreSQL ledger) write one ledger: row ids come
from the database, rollup rows are upserted (``ON CONFLICT … DO UPDATE``, in key order so that two
writers never deadlock), each process saves its own counters under its own worker id and reads
the others'. The schema is created and migrated at start under a lock (`migrate`).

Never stored: prompts, answers, API keys (a request is known by its key's *name*). Stored for
``turnout simulate`` replays: the routing features (images, tools, turn, prompt tokens,
complexity score, task, tier, requirement, max_tokens).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, TypeVar

import orjson

from proxy.usage import pricing
from proxy.usage.db import Db, is_postgres, label, open_db

from proxy.usage import tokens
from proxy.call import SENT_SAMPLE, Call
from proxy.config import Config
from proxy.state import State
from proxy.usage.quota import Accounts

log = logging.getLogger("turnout.ledger")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id {id},
    ts {real} NOT NULL,            -- when the request arrived, Unix seconds
    request_id TEXT, key TEXT, model TEXT, route TEXT, rule TEXT,
    chain TEXT,                    -- JSON list of the targets the rule chose
    attempts TEXT,                 -- JSON list of {{target, outcome, status}}: skipped, failed, escalated, ok
    target TEXT, backend TEXT,     -- the target that answered and its backend
    status INTEGER, error TEXT, stream INTEGER, chunks INTEGER,
    prompt_tokens INTEGER, completion_tokens INTEGER, cached_tokens INTEGER, reasoning_tokens INTEGER,
    estimated INTEGER,             -- 1: tokens are a tiktoken estimate (no usage from the provider)
    cost_usd {real}, latency_ms {real}, ttft_ms {real},
    cache TEXT, saved_usd {real},  -- the response cache: hit | miss | bypass (NULL: none); what a hit saved
    features TEXT                  -- JSON of the routing features, for replays
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
CREATE TABLE IF NOT EXISTS rollup (  -- the rows summed per quarter hour, key, backend and target ('' for none)
    bucket INTEGER NOT NULL, key TEXT NOT NULL, backend TEXT NOT NULL, target TEXT NOT NULL,
    requests {big}, ok {big}, prompt_tokens {big}, completion_tokens {big}, cached_tokens {big},
    reasoning_tokens {big}, cost_usd {real}, estimated {big},
    PRIMARY KEY (bucket, key, backend, target)
);
CREATE TABLE IF NOT EXISTS counters (  -- quota and budget counts of each process in the current period
    name TEXT NOT NULL, worker TEXT NOT NULL, start {real}, requests {big}, tokens {big}, usd {real},
    PRIMARY KEY (name, worker)
);
CREATE TABLE IF NOT EXISTS ledger_schema (  -- the schema's version: MIGRATIONS[:version] have run
    id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL
);
"""
COLUMNS = ("ts", "request_id", "key", "model", "route", "rule", "chain", "attempts", "target", "backend",
           "status", "error", "stream", "chunks", "prompt_tokens", "completion_tokens", "cached_tokens",
           "reasoning_tokens", "estimated", "cost_usd", "latency_ms", "ttft_ms", "cache", "saved_usd", "features")
INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
BUCKET = 900  # seconds per rollup bucket: day and month starts fall on one in every time zone
OK = "SUM(CASE WHEN status = 200 THEN 1 ELSE 0 END)"  # SQLite could sum booleans; PostgreSQL cannot
ROLLUP_FROM_ROWS = (
    "SELECT {bucket}, COALESCE(key, ''), COALESCE(backend, ''), COALESCE(target, ''), "
    f"COUNT(*), {OK}, SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens), "
    "SUM(reasoning_tokens), SUM(cost_usd), SUM(estimated) FROM requests GROUP BY 1, 2, 3, 4")
ROLLUP_ADD = (
    "INSERT INTO rollup VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (bucket, key, backend, target) DO UPDATE "
    "SET " + ", ".join(f"{c} = rollup.{c} + excluded.{c}" for c in (
        "requests", "ok", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_usd",
        "estimated")))
SAVE_COUNTERS = ("INSERT INTO counters (name, worker, start, requests, tokens, usd) VALUES (?, ?, ?, ?, ?, ?) "
                 "ON CONFLICT (name, worker) DO UPDATE SET start = excluded.start, requests = excluded.requests, "
                 "tokens = excluded.tokens, usd = excluded.usd")
MAX_PENDING = 200_000  # rows kept in memory while the disk refuses them; older ones are dropped beyond


def _v1(db: Db) -> None:
    """The schema of issue 14. A SQLite ledger from before: the rollup is built from its rows, and an
    early development counters table (no worker column) is dropped (derived again from the rows)."""
    cols = db.columns("counters")
    if cols and "worker" not in cols:
        db.execute("DROP TABLE counters")
    db.script(SCHEMA)
    if db.execute("SELECT NOT EXISTS (SELECT 1 FROM rollup)").fetchone()[0]:
        db.execute("INSERT INTO rollup " + ROLLUP_FROM_ROWS.format(bucket=db.bucket("ts", BUCKET)))


def _v2(db: Db) -> None:
    """The response cache's columns, for a ledger made before them."""
    cols = db.columns("requests")
    for col, typ in (("cache", "TEXT"), ("saved_usd", db.types["real"])):
        if col not in cols:
            db.execute(f"ALTER TABLE requests ADD COLUMN {col} {typ}")


MIGRATIONS: list[Callable[[Db], None]] = [_v1, _v2]  # MIGRATIONS[i]: schema version i to i + 1; append only


def migrate(db: Db) -> int:
    """Create the schema or bring it up to date, under the schema lock (replicas starting together
    migrate once); returns the version."""
    with db.schema_lock():
        version = 0
        if db.columns("ledger_schema"):
            row = db.execute("SELECT version FROM ledger_schema WHERE id = 1").fetchone()
            version = row[0] if row else 0
        for step in MIGRATIONS[version:]:
            step(db)
        if version < len(MIGRATIONS):
            db.execute("INSERT INTO ledger_schema (id, version) VALUES (1, ?) ON CONFLICT (id) DO UPDATE "
                       "SET version = excluded.version", (len(MIGRATIONS),))
        return len(MIGRATIONS)


def connect(url: str, readonly: bool = False) -> Db:
    """The ledger at `url` (a SQLite path or a PostgreSQL URL); read-only for reports, else migrated."""
    db = open_db(url, readonly)
    if readonly:
        if not db.columns("requests"):
            db.close()
            raise FileNotFoundError(f"no ledger at {db.label}")
        return db
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


# --- measuring a finished request --------------------------------------------------------------


def sent_text(payloads: Iterable[bytes]) -> str:
    """The text a client received, from stream chunks or a completion body (content, reasoning,
    tool-call names and arguments)."""
    parts: list[str] = []
    for p in payloads:
        try:
            d = orjson.loads(p)
        except orjson.JSONDecodeError:
            continue
        _texts(d, parts)
    return "".join(parts)


def _texts(d: Any, parts: list[str]) -> None:
    for ch in (d.get("choices") or ()) if isinstance(d, dict) else ():
        m = ch.get("delta") or ch.get("message") or {}
        for k in ("content", "reasoning_content", "refusal"):
            if isinstance(m.get(k), str):
                parts.append(m[k])
        for tc in m.get("tool_calls") or ():
            fn = tc.get("function") or {}
            parts += [str(fn.get("name") or ""), str(fn.get("arguments") or "")]


def record_answer(call: Call, completion: dict[str, Any]) -> None:
    """A non-streamed answer that came without usage: keep what the ledger's estimate needs, an
    evenly spread sample of its text (at most `SENT_SAMPLE` characters, as one payload) and its full
    length, never the answer itself, so a 20 MB answer is neither held nor parsed again nor
    tokenized whole on the event loop (`sent_tokens` scales the sample's count; the row is estimated)."""
    parts: list[str] = []
    _texts(completion, parts)
    text = "".join(parts)
    if len(text) > SENT_SAMPLE:
        n, piece = 8, SENT_SAMPLE // 8
        step = len(text) // n
        sample = "".join(text[i * step:i * step + piece] for i in range(n))
    else:
        sample = text
    call.sent = [orjson.dumps({"choices": [{"message": {"content": sample}}]})]
    call.sent_count = 1
    call.sent_sampled, call.sent_bytes = max(1, len(sample)), len(text)


def sent_tokens(call: Call) -> int:
    """Tokens of what the client received, from the kept sample (`Call.record_sent`) scaled by the
    bytes sent in all: exact for answers up to the sample's size, an estimate beyond (the row is
    marked estimated either way; `tokens.count` itself samples very long texts)."""
    if not call.sent:
        return 0
    n = tokens.count(sent_text(call.sent))
    if call.sent_bytes > call.sent_sampled:
        n = round(n * call.sent_bytes / call.sent_sampled)
    return n


def measure(call: Call, price: Any) -> tuple[int, int, int, int, int, float]:
    """prompt, completion, cached, reasoning tokens, estimated (0/1) and cost in USD of a finished call."""
    u = call.usage
    cut = call.stream and call.sent is not None and (u is None or call.status != 200)
    if u is not None and not cut:
        cost = call.cost_usd if call.cost_usd is not None else (pricing.cost(u, price) if price else 0.0)
        return (u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0,
                (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
                (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0, 0, cost)
    if call.target is None or (call.sent is None and call.status != 200):
        return 0, 0, 0, 0, 0, 0.0  # nothing answered: nothing to bill
    prompt = (u or {}).get("prompt_tokens") or (call.features.prompt_tokens if call.features is not None else 0)
    completion = sent_tokens(call)
    completion = max(completion, (u or {}).get("completion_tokens") or 0)
    est = {"prompt_tokens": prompt, "completion_tokens": completion}
    cost = pricing.cost(est, price) if price else 0.0
    call.cost_usd = cost
    return prompt, completion, 0, 0, 1, cost


def features_of(f: Any, reported_prompt_tokens: int | None = None) -> dict[str, Any] | None:
    if f is None:
        return None
    try:
        # routing's own count if it made one, else the provider's: a tokenizer run only when neither exists
        prompt_tokens = f.__dict__.get("prompt_tokens") or reported_prompt_tokens or f.prompt_tokens
        return {"has_images": f.has_images, "has_tools": f.has_tools, "turn": f.turn,
                "prompt_tokens": prompt_tokens, "complexity": f.complexity.value, "task": f.task,
                "tier": f.tier, "requirement": f.requirement, "max_tokens": f.max_tokens}
    except Exception:  # noqa: BLE001 - a feature that cannot be computed must not lose the row
        log.debug("features not recorded", exc_info=True)
        return None


def _row(t: tuple[Any, ...], with_features: bool) -> tuple[Any, ...]:
    *head, chain, attempts, f = t
    return (*head[:6], orjson.dumps(chain).decode() if chain else None,
            orjson.dumps([{"target": a.target, "outcome": a.outcome, "status": a.status} for a in attempts]).decode()
            if attempts else None,
            *head[6:], orjson.dumps(features_of(f, head[12] if not head[16] else None)).decode()
            if with_features and f is not None and head[6] is not None else None)  # replays need an answered request


# --- the ledger --------------------------------------------------------------------------------


class Ledger:
    """The ledger database and the one thread that touches it."""

    def __init__(self, path: str) -> None:
        self.path = path  # a SQLite file or a PostgreSQL URL
        self.label = label(path)  # without a password, for logs
        self.conn: Db | None = None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="turnout-ledger")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def open(self) -> None:
        try:
            self.conn = connect(self.path)
        except Exception as e:
            log.error("ledger: cannot open %s: %s", self.label, e)  # the label: never a password
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def write(self, batch: list[tuple[Any, ...]], counters: list[tuple[Any, ...]], with_features: bool,
              worker: str) -> list[tuple[Any, ...]]:
        """Insert the rows and this worker's counters in one transaction; the other workers' counters."""
        assert self.conn is not None
        rows = [_row(t, with_features) for t in batch]
        c = self.conn
        counters = sorted(counters)  # rows locked in one order by every writer: no deadlock between replicas
        with c.transaction():
            if rows:
                c.executemany(INSERT, rows)
                c.executemany(ROLLUP_ADD, sorted(rollup(batch)))
            if counters:
                c.executemany(SAVE_COUNTERS, [(n, worker, start, r, t, u) for n, start, r, t, u in counters])
                c.executemany("DELETE FROM counters WHERE name = ? AND start < ?",
                              [(n, start) for n, start, *_ in counters])
        return others(c, worker)


def rollup(batch: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A batch's rows summed per bucket, key, backend and target (the queued tuples' layout)."""
    sums: dict[tuple[Any, ...], list[Any]] = {}
    for t in batch:
        k = (int(t[0] // BUCKET), t[2] or "", t[7] or "", t[6] or "")
        s = sums.get(k)
        if s is None:
            s = sums[k] = [0, 0, 0, 0, 0, 0, 0.0, 0]
        s[0] += 1
        s[1] += t[8] == 200
        s[2] += t[12]
        s[3] += t[13]
        s[4] += t[14]
        s[5] += t[15]
        s[6] += t[17]
        s[7] += t[16]
    return [(*k, *v) for k, v in sums.items()]


def others(conn: Db, worker: str) -> list[tuple[Any, ...]]:
    """Per counter and period, what every other worker (and earlier runs) counted."""
    return [tuple(r) for r in conn.execute(
        "SELECT name, start, SUM(requests), SUM(tokens), SUM(usd) FROM counters WHERE worker != ? "
        "GROUP BY name, start", (worker,))]


def load_counters(conn: Db, accounts: Accounts, worker: str = "", readonly: bool = True) -> None:
    """Restore quota and budget counters from a ledger: the saved counters of every process, else the
    rows of the current period (saved as the worker "ledger", so that workers starting together
    count them once)."""
    found = accounts.restore(others(conn, worker))
    derived = derive(conn, accounts, found)
    if derived and not readonly:
        with conn.transaction():
            conn.executemany("INSERT INTO counters (name, worker, start, requests, tokens, usd) "
                             "VALUES (?, 'ledger', ?, ?, ?, ?) ON CONFLICT (name, worker) DO NOTHING", derived)
        accounts.restore(others(conn, worker))
    elif derived:
        accounts.restore(derived)


def derive(conn: Db, accounts: Accounts, skip: set[str]) -> list[tuple[Any, ...]]:
    """Counters with nothing saved (a quota or budget added since the last run) start from the rows
    already in the ledger for their current period."""
    out: list[tuple[Any, ...]] = []
    usage = accounts.state.usage
    for q in accounts.quotas:
        if q.counter in skip:
            continue
        start = usage(q.counter, q.window).start
        col = "target" if q.scope == "target" else "backend"
        n, tok = conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM requests "
            f"WHERE ts >= ? AND {col} = ?", (start, q.name)).fetchone()
        out.append((q.counter, start, n, tok, 0.0))
    for b in accounts.budgets:
        for p in b.periods:
            if p.counter in skip:
                continue
            start = usage(p.counter, p.window).start
            sql, args = "SELECT COALESCE(SUM(cost_usd), 0) FROM requests WHERE ts >= ?", [start]
            if b.scope.startswith("key:"):
                sql += " AND key = ?"
                args.append(b.scope[4:])
            out.append((p.counter, start, 0, 0, float(conn.execute(sql, args).fetchone()[0])))
    return out


class Recorder:
    """The observer: measures and counts each finished request, queues its row, writes in batches."""

    def __init__(self, cfg: Config, accounts: Accounts, ledger: Ledger | None) -> None:
        self.models = cfg.models
        self.accounts = accounts
        self.ledger = ledger
        u = cfg.usage
        self.interval, self.batch_size, self.with_features = u.flush_interval, u.batch_size, u.features
        self.pending: list[tuple[Any, ...]] = []
        self.task: asyncio.Task[None] | None = None
        self.wake: asyncio.Event | None = None
        self.lock: asyncio.Lock | None = None
        self.closed = False
        self.worker = f"{os.getpid()}-{os.urandom(3).hex()}"  # this process's counters in the ledger
        self.shared = bool(accounts.counters())  # counters to share with other worker processes
        self.saved = -1  # the state's change count when the counters were last saved
        self.retention = u.retention_days
        self.next_prune = 0.0

    async def start(self) -> None:
        self.wake, self.lock = asyncio.Event(), asyncio.Lock()
        if self.ledger is not None:
            await self.ledger.run(self._load)
            self.task = asyncio.create_task(self._run(), name="turnout-ledger-writer")

    def _load(self) -> None:
        assert self.ledger is not None
        self.ledger.open()
        assert self.ledger.conn is not None
        load_counters(self.ledger.conn, self.accounts, self.worker, readonly=False)

    async def aclose(self) -> None:
        if self.task is not None:
            self.closed = True  # the writer ends after its current round; no cancel mid-write
            assert self.wake is not None
            self.wake.set()
            try:
                await asyncio.wait_for(self.task, 30)
            except (asyncio.CancelledError, TimeoutError):
                pass
            self.task = None
        if self.ledger is not None:
            self.closed = True
            await self.flush()
            await self.ledger.run(self.ledger.close)
            self.ledger.pool.shutdown(wait=True)

    def started(self, call: Call) -> None:
        pass

    def finished(self, call: Call) -> None:
        target = self.models.get(call.target) if call.target else None
        p, c, cached, reasoning, est, cost = measure(call, target.price if target else None)
        self.accounts.settle(call, p + c, cost)
        if self.ledger is None:
            return
        latency = (call.finished or time.perf_counter()) - call.started
        key = call.key
        self.pending.append((
            time.time() - latency, call.request_id, key.name if key is not None else None, call.request_model or None,
            call.route, call.reason, call.target, target.backend if target else None, call.status, call.error,
            int(call.stream), call.chunks, p, c, cached, reasoning, est, cost, round(latency * 1000, 3),
            round((call.first_token_at - call.started) * 1000, 3) if call.first_token_at else None,
            call.cache, call.saved_usd or None, call.chain, call.walked(), call.features))
        call.sent = None
        if len(self.pending) >= self.batch_size and self.wake is not None:
            self.wake.set()

    async def _run(self) -> None:
        assert self.wake is not None
        while not self.closed:
            try:
                await asyncio.wait_for(self.wake.wait(), self.interval)
            except TimeoutError:
                pass
            self.wake.clear()
            try:
                if not await self.flush() and self.shared:
                    await self.sync()
                if self.retention and time.time() >= self.next_prune:
                    self.next_prune = time.time() + 3600
                    await self.prune()
            except Exception:  # noqa: BLE001 - a full or locked disk must not stop the writer
                log.exception("ledger: writing %d rows to %s failed; will retry", len(self.pending),
                              self.ledger.label if self.ledger else "-")

    async def flush(self) -> int:
        """Write what is waiting now; returns the number of rows written."""
        if self.ledger is None or self.lock is None:
            return 0
        async with self.lock:
            changes = self.accounts.state.changes
            if self.ledger.conn is None or (not self.pending and (not self.shared or changes == self.saved)):
                return 0  # no rows, and no counter changed (admissions change them too): nothing to save
            batch, self.pending = self.pending, []
            counters, self.saved = self.accounts.snapshot(), changes
            fut = asyncio.ensure_future(self.ledger.run(self.ledger.write, batch, counters, self.with_features,
                                                        self.worker))
            try:
                # shielded: a cancelled caller must not leave a committed batch looking unwritten
                rest = await asyncio.shield(fut)
            except asyncio.CancelledError:
                def done(f: asyncio.Future[Any]) -> None:
                    if f.cancelled() or f.exception() is not None:
                        self.pending[:0] = batch
                    else:
                        self.accounts.restore(f.result())

                fut.add_done_callback(done)
                raise
            except BaseException:
                self.pending[:0] = batch  # keep them for the next try, bounded
                if len(self.pending) > MAX_PENDING:
                    log.error("ledger: dropping %d unwritten rows", len(self.pending) - MAX_PENDING)
                    del self.pending[:len(self.pending) - MAX_PENDING]
                raise
            self.accounts.restore(rest)
            return len(batch)

    async def prune(self) -> int:
        """Delete the rows older than `usage.retention_days` (hourly, on the writer's thread)."""
        if self.ledger is None or self.ledger.conn is None or not self.retention:
            return 0
        conn, cutoff = self.ledger.conn, time.time() - self.retention * 86400

        def delete() -> int:
            n = conn.execute("DELETE FROM requests WHERE ts < ?", (cutoff,)).rowcount
            conn.execute("DELETE FROM rollup WHERE bucket < ?", (int(cutoff // BUCKET),))
            if n:
                log.info("ledger: deleted %d rows older than %d days", n, self.retention)
            return n

        return await self.ledger.run(delete)

    async def sync(self) -> None:
        """Take in what other worker processes counted (each writes its own counters with its rows)."""
        if self.ledger is not None and self.ledger.conn is not None:
            conn = self.ledger.conn
            self.accounts.restore(await self.ledger.run(others, conn, self.worker))


class Usage:
    """What the app holds: the counters, the recorder and (if configured) the ledger."""

    def __init__(self, accounts: Accounts, recorder: Recorder, ledger: Ledger | None) -> None:
        self.accounts, self.recorder, self.ledger = accounts, recorder, ledger

    async def query(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run `fn(conn, *args, **kw)` on the ledger's thread after flushing, so it sees every finished request."""
        assert self.ledger is not None
        await self.recorder.flush()
        return await self.ledger.run(lambda: fn(self.ledger.conn, *args, **kw))  # type: ignore[union-attr]


def build_usage(cfg: Config, state: State | None = None) -> Usage:
    """The counters (in `state`), the ledger (if configured) and the recorder that feeds both."""
    accounts = Accounts(cfg, state)
    path = cfg.usage.ledger
    ledger = Ledger(path if is_postgres(path) else os.path.expanduser(path)) if path else None
    return Usage(accounts, Recorder(cfg, accounts, ledger), ledger)
