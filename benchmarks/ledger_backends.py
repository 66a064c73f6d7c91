"""The ledger writer's cost per row on SQLite and on PostgreSQL: batches of `--batch` rows (the
writer's default is up to 500 a second) through `Ledger.write`, as the writer thread runs them —
off the request path, so this is CPU and time on the ledger's own thread, not request latency.

    PYTHONPATH=. python benchmarks/ledger_backends.py --pg postgresql://postgres@127.0.0.1:5432/postgres

Creates a throwaway database on the PostgreSQL server (dropped after) and a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's proxy, not an installed one
from proxy.usage.ledger import Ledger  # noqa: E402


def batch(n: int, now: float) -> list[tuple]:
    return [(now - i * 0.01, f"r{i}", "alice", "auto", "auto", "rest", "paid", "cloud", 200, None, 0, 1, 120, 80, 0,
             0, 0, 0.0002, 5.0, None, None, None, ["paid"], [], None) for i in range(n)]


def measure(url: str, rows: int, rounds: int) -> tuple[float, float]:
    led = Ledger(url)
    led.open()
    times, cpu = [], []
    try:
        for _ in range(rounds):
            b = batch(rows, time.time())
            t0, c0 = time.perf_counter(), time.process_time()
            led.write(b, [("quota:backend:cloud", time.time() - 10, 3, 30, 0.0)], True, "bench")
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    finally:
        led.close()
    return statistics.median(times) / rows * 1e6, statistics.median(cpu) / rows * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres", help="an admin URL")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    import psycopg

    name = f"turnout_bench_{secrets.token_hex(4)}"
    with psycopg.connect(a.pg, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    u = urlsplit(a.pg)
    try:
        with tempfile.TemporaryDirectory() as d:
            for label, url in (("sqlite", str(Path(d) / "bench.db")),
                               ("postgresql", urlunsplit((u.scheme, u.netloc, "/" + name, "", "")))):
                wall, cpu = measure(url, a.batch, a.rounds)
                print(f"{label:11s} batches of {a.batch}: {wall:6.1f} µs per row (wall), {cpu:6.1f} µs CPU per row")
    finally:
        with psycopg.connect(a.pg, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
