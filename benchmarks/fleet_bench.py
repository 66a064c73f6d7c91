"""Turnout at LLM scale, one worker, one table (not part of the test suite; 127.0.0.1 only).

Part 1 (always), against the instant mock upstream (`turnout mock-upstream`, as benchmarks/bench.py):
CPU per non-streamed request and per 20-chunk stream (utime+stime of the Turnout process from
/proc), added latency p50/p99 of one client, time to first chunk with 16 concurrent streams through
Turnout and direct, and RSS.

Part 2 (`--streams N`): N long streams open at once through one Turnout worker. The upstream is a
small raw-asyncio SSE server started from this file (`--upstream PORT`): it sends a stream's first
chunk at once, then one chunk to every open stream each `--interval` seconds (one timer for all),
for `--stream-seconds`. The client is raw asyncio too (it only looks for the first ``data:`` and the
final ``[DONE]``), and a plain non-streamed request goes through every 100 ms meanwhile. Reported:
errors (a status other than 200, a cut connection, a stream without [DONE]), Turnout's peak RSS, time
to first chunk p50/p99 through Turnout and direct (the same N streams against the upstream alone,
before), and the plain request's p50/p99. File descriptors: Turnout holds two sockets per stream
(client and upstream), so it needs 2N + ~300; the benchmark raises its soft RLIMIT_NOFILE to that
(up to the hard limit; its children inherit it) and stops if the hard limit is lower: then run it
from a shell with `ulimit -n 20300` (10,000 streams) or more, which needs a hard limit that high
(`ulimit -Hn`; raising it needs root outside a container that forbids it). A production
`turnout serve` for N open streams needs the same `ulimit -n` (systemd: `LimitNOFILE=`).
Bounded: N ≤ 20,000, stream length ≤ 600 s, every phase has a deadline.

    python benchmarks/fleet_bench.py                       # part 1, ~1 min
    python benchmarks/fleet_bench.py --streams 10000       # and part 2: 10,000 streams, 100 ms chunks, 60 s
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import BODY, cpu_seconds, free_port, one_by_one, rss_mb, wait_up  # noqa: E402

FLOOR = {"plain": 0.28, "stream": 0.36, "ttfb16": 4.9}  # bare aiohttp pass-through on this machine (issue 20)
TARGET = {"plain": 0.45, "stream": 0.6, "ttfb16": 2 * 4.9, "ttfb_fleet": 50.0, "plain_fleet": 20.0, "rss_fleet": 400.0}


def pct(xs: list[float], q: int) -> float:
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100)[q - 1]


# --- the fleet upstream: raw asyncio, one timer for every open stream ------------------------------

def _chunk(content: str, role: bool = False, finish: str | None = None) -> bytes:
    delta: dict[str, Any] = {"role": "assistant", "content": content} if role else ({"content": content} if content else {})
    c = {"id": "chatcmpl-fleet", "object": "chat.completion.chunk", "created": 0, "model": "bench",
         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return _framed(b"data: " + orjson.dumps(c) + b"\n\n")


def _framed(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


FIRST, TOKEN = _chunk("Hello", role=True), _chunk(" token")
USAGE = _framed(b"data: " + orjson.dumps({"id": "chatcmpl-fleet", "object": "chat.completion.chunk", "created": 0,
                                          "model": "bench", "choices": [], "usage": {"prompt_tokens": 9,
                                          "completion_tokens": 1, "total_tokens": 10}}) + b"\n\n")
END = _chunk("", finish="stop") + USAGE + _framed(b"data: [DONE]\n\n") + b"0\r\n\r\n"
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
COMPLETION = orjson.dumps({"id": "chatcmpl-fleet", "object": "chat.completion", "created": 0, "model": "bench",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                                        "logprobs": None, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}})
PLAIN = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(COMPLETION)) + COMPLETION
MODELS = b'{"object":"list","data":[{"id":"bench","object":"model","created":0,"owned_by":"fleet"}]}'
MODELS_RESP = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(MODELS)) + MODELS


class UpstreamConn(asyncio.Protocol):
    open_streams: dict["UpstreamConn", int] = {}

    def connection_made(self, transport: Any) -> None:
        self.t = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4:head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length:]
            if head.startswith(b"get"):
                self.t.write(MODELS_RESP)
            elif b'"stream":true' in body:
                self.t.write(SSE_HEAD + FIRST)
                UpstreamConn.open_streams[self] = TICKS
            else:
                self.t.write(PLAIN)

    def connection_lost(self, exc: BaseException | None) -> None:
        UpstreamConn.open_streams.pop(self, None)


TICKS = 600


async def _ticker(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        done = []
        for conn, left in UpstreamConn.open_streams.items():
            if left <= 1:
                conn.t.write(TOKEN + END)
                done.append(conn)
            else:
                conn.t.write(TOKEN)
                UpstreamConn.open_streams[conn] = left - 1
        for conn in done:
            UpstreamConn.open_streams.pop(conn, None)


def serve_upstream(port: int, interval: float, seconds: float) -> None:
    global TICKS
    TICKS = max(1, int(seconds / interval))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(UpstreamConn, "127.0.0.1", port, backlog=4096)
        asyncio.get_running_loop().create_task(_ticker(interval))
        async with server:
            await server.serve_forever()

    import uvloop

    uvloop.run(main())


# --- the fleet client: raw asyncio, one connection per stream --------------------------------------

class StreamClient(asyncio.Protocol):
    """One stream: sends the request, notes the first ``data:``, closes after ``[DONE]``."""

    def __init__(self, request: bytes, done: asyncio.Future) -> None:
        self.request, self.done = request, done
        self.t0 = 0.0
        self.ttfb: float | None = None
        self.status_ok: bool | None = None
        self.finished = False
        self.tail = b""
        self.error: str | None = None

    def connection_made(self, transport: Any) -> None:
        self.t = transport
        self.t0 = time.perf_counter()
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.status_ok is None:
            self.status_ok = data.startswith(b"HTTP/1.1 200")
            if not self.status_ok:
                self.error = "status " + data[9:12].decode("latin-1")
                self.t.close()
                return
        if self.ttfb is None and b"data: " in data:
            self.ttfb = time.perf_counter() - self.t0
        seen = self.tail + data
        if b"data: [DONE]" in seen:
            self.finished = True
            self.t.close()
            return
        self.tail = seen[-16:]

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.error is None and not self.finished:
            self.error = f"cut ({type(exc).__name__ if exc else 'closed early'})"
        if not self.done.done():
            self.done.set_result(self)


def stream_request(port: int) -> bytes:
    body = orjson.dumps({**BODY, "stream": True})
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (port, len(body), body))


async def fleet(port: int, n: int, ramp: float, seconds: float, plain_url: str | None,
                sample_rss: Any = None) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    req = stream_request(port)
    futures: list[asyncio.Future] = []
    connect_errors: list[str] = []
    plain: list[float] = []
    plain_errors = 0
    peak_rss = 0.0
    stop = asyncio.Event()

    clients: list[StreamClient] = []

    def client(fut: asyncio.Future) -> StreamClient:
        clients.append(StreamClient(req, fut))
        return clients[-1]

    async def open_one() -> None:
        fut = loop.create_future()
        try:
            await loop.create_connection(lambda: client(fut), "127.0.0.1", port)
            futures.append(fut)
        except OSError as e:
            connect_errors.append(type(e).__name__)

    async def plain_loop() -> None:
        nonlocal plain_errors
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    r = await client.post(plain_url, json=BODY)
                    if r.status_code != 200:
                        plain_errors += 1
                except httpx.HTTPError:
                    plain_errors += 1
                plain.append((time.perf_counter() - t) * 1000)
                await asyncio.sleep(0.1)

    async def rss_loop() -> None:
        nonlocal peak_rss
        while not stop.is_set():
            peak_rss = max(peak_rss, sample_rss())
            await asyncio.sleep(1)

    side = [loop.create_task(plain_loop())] if plain_url else []
    if sample_rss:
        side.append(loop.create_task(rss_loop()))
    t_start = time.perf_counter()
    batch = max(1, n // max(1, int(ramp * 20)))
    opened = 0
    while opened < n:
        k = min(batch, n - opened)
        await asyncio.gather(*(open_one() for _ in range(k)))
        opened += k
        next_at = t_start + ramp * opened / n
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    ramped = time.perf_counter() - t_start
    if futures:
        await asyncio.wait(futures, timeout=seconds + ramp + 120)  # bounded: unfinished streams count as errors
    stop.set()
    for task in side:
        task.cancel()
    results = [f.result() for f in futures if f.done()]
    late = len(futures) - len(results)
    errors = len(connect_errors) + sum(1 for r in results if r.error) + late
    if late:
        connect_errors.append(f"{late} not finished in time")
    ttfb = [c.ttfb * 1000 for c in clients if c.ttfb is not None]  # finished in time or not
    for c in clients:
        if not c.done.done():
            c.t.close()
    return {"n": n, "errors": errors, "connect_errors": len(connect_errors), "ramp_s": ramped, "ttfb": ttfb,
            "plain": plain, "plain_errors": plain_errors, "peak_rss": peak_rss,
            "error_kinds": sorted({r.error for r in results if r.error} | set(connect_errors))[:5]}


# --- part 1 ---------------------------------------------------------------------------------------

async def ttfb_concurrent(client: httpx.AsyncClient, url: str, conc: int, rounds: int) -> list[float]:
    out: list[float] = []
    body = {**BODY, "stream": True}

    async def one() -> None:
        for _ in range(rounds):
            t = time.perf_counter()
            async with client.stream("POST", url, json=body) as r:
                first = True
                async for line in r.aiter_lines():
                    if first and line.startswith("data: "):
                        out.append((time.perf_counter() - t) * 1000)
                        first = False

    await asyncio.gather(*(one() for _ in range(conc)))
    return out


async def part1(args: argparse.Namespace, rows: list[tuple[str, str, str, str]]) -> None:
    up_port, tp_port = free_port(), free_port()
    cfg = write_config(tp_port, up_port)
    turnout = [sys.executable, "-m", "proxy"]
    up = subprocess.Popen(turnout + ["mock-upstream", "--port", str(up_port), "--chunks", "20"])
    tp = subprocess.Popen(turnout + ["serve", "--config", cfg], stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{up_port}/v1/models")
        wait_up(f"http://127.0.0.1:{tp_port}/health")
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        via = f"http://127.0.0.1:{tp_port}/v1/chat/completions"
        n = args.requests
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            await one_by_one(client, via, 200, BODY)
            await one_by_one(client, direct, 200, BODY)
            d = await one_by_one(client, direct, n, BODY)
            c0 = cpu_seconds(tp.pid)
            v = await one_by_one(client, via, n, BODY)
            cpu_plain = (cpu_seconds(tp.pid) - c0) / n * 1000
            sn = max(200, n // 4)
            c0 = cpu_seconds(tp.pid)
            await one_by_one(client, via, sn, {**BODY, "stream": True})
            cpu_stream = (cpu_seconds(tp.pid) - c0) / sn * 1000
            t_direct = await ttfb_concurrent(client, direct, 16, args.ttfb_rounds)
            t_via = await ttfb_concurrent(client, via, 16, args.ttfb_rounds)
        added = pct(v, 50) - pct(d, 50)
        over = pct(t_via, 50) - pct(t_direct, 50)
        rows += [
            ("CPU per non-streamed request", f"{cpu_plain:.3f} ms", f"≤ {TARGET['plain']} ms", f"{FLOOR['plain']} ms"),
            ("CPU per 20-chunk stream", f"{cpu_stream:.3f} ms", f"≤ {TARGET['stream']} ms", f"{FLOOR['stream']} ms"),
            ("added latency p50 / p99", f"{added:.2f} / {pct(v, 99) - pct(d, 99):.2f} ms", "", ""),
            ("TTFB, 16 concurrent streams, p50 via / direct",
             f"{pct(t_via, 50):.1f} / {pct(t_direct, 50):.1f} ms (+{over:.1f})",
             f"+≤ {TARGET['ttfb16']:.1f} ms", f"+{FLOOR['ttfb16']} ms"),
            ("RSS after part 1", f"{rss_mb(tp.pid):.0f} MB", "", ""),
        ]
    finally:
        for proc in (tp, up):
            proc.terminate()
            proc.wait(5)
        os.unlink(cfg)


def write_config(tp_port: int, up_port: int, connections: int = 1000) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(f"""
server: {{host: 127.0.0.1, port: {tp_port}, log_level: warning}}
backends:
  upstream: {{type: openai, base_url: "http://127.0.0.1:{up_port}/v1", max_connections: {connections}}}
models:
  bench: {{backend: upstream, model: bench}}
""")
    return f.name


async def part2(args: argparse.Namespace, rows: list[tuple[str, str, str, str]]) -> None:
    up_port, tp_port = free_port(), free_port()
    cfg = write_config(tp_port, up_port, args.streams + 100)  # one upstream connection per open stream
    up = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--upstream", str(up_port),
                           "--interval", str(args.interval), "--stream-seconds", str(args.stream_seconds)])
    tp = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", cfg], stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{up_port}/v1/models")
        wait_up(f"http://127.0.0.1:{tp_port}/health")
        n = args.streams
        direct = await fleet(up_port, n, args.ramp, args.stream_seconds, None)
        c0 = cpu_seconds(tp.pid)
        via = await fleet(tp_port, n, args.ramp, args.stream_seconds,
                          f"http://127.0.0.1:{tp_port}/v1/chat/completions", lambda: rss_mb(tp.pid))
        cpu = cpu_seconds(tp.pid) - c0
        chunks = n * (int(args.stream_seconds / args.interval) + 3)
        over99 = pct(via["ttfb"], 99) - pct(direct["ttfb"], 99)
        label = f"{n} streams, a chunk per {args.interval * 1000:.0f} ms for {args.stream_seconds:g} s"
        rows += [
            (f"{label}: errors via / direct", f"{via['errors']} / {direct['errors']}"
             + (f" ({', '.join(via['error_kinds'])})" if via["error_kinds"] else ""), "0", ""),
            ("  Turnout peak RSS", f"{via['peak_rss']:.0f} MB", f"≤ {TARGET['rss_fleet']:.0f} MB", ""),
            ("  TTFB p50 / p99 via", f"{pct(via['ttfb'], 50):.1f} / {pct(via['ttfb'], 99):.1f} ms", "", ""),
            ("  TTFB p50 / p99 direct", f"{pct(direct['ttfb'], 50):.1f} / {pct(direct['ttfb'], 99):.1f} ms", "", ""),
            ("  TTFB overhead p99", f"{over99:.1f} ms", f"≤ {TARGET['ttfb_fleet']:.0f} ms", ""),
            ("  plain request meanwhile p50 / p99", f"{pct(via['plain'], 50):.1f} / {pct(via['plain'], 99):.1f} ms "
             f"({len(via['plain'])} sent, {via['plain_errors']} errors)", f"p99 ≤ {TARGET['plain_fleet']:.0f} ms", ""),
            ("  Turnout CPU", f"{cpu:.1f} s ({cpu / chunks * 1e6:.0f} µs per chunk)", "", ""),
            ("  streams opened in", f"{via['ramp_s']:.1f} s", "", ""),
        ]
    finally:
        for proc in (tp, up):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        os.unlink(cfg)


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:  # root (CAP_SYS_RESOURCE) may raise the hard limit, up to /proc/sys/fs/nr_open
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            soft, hard = need, need
        except (ValueError, OSError):
            pass
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need:
        raise SystemExit(f"need {need} file descriptors per process, the hard limit is {hard}: "
                         f"run under `ulimit -n {need}` (root may raise the hard limit)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000, help="part 1: requests per measurement")
    ap.add_argument("--ttfb-rounds", type=int, default=10, help="part 1: streams per client of the 16")
    ap.add_argument("--streams", type=int, default=0, help="part 2: concurrent long streams (0: skip)")
    ap.add_argument("--interval", type=float, default=0.1, help="part 2: seconds between upstream chunks")
    ap.add_argument("--stream-seconds", type=float, default=60.0, help="part 2: each stream's length")
    ap.add_argument("--ramp", type=float, default=10.0, help="part 2: seconds over which the streams open")
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # internal: serve the fleet upstream
    args = ap.parse_args()
    if args.upstream:
        serve_upstream(args.upstream, args.interval, args.stream_seconds)
        return
    if not (0 <= args.streams <= 20_000 and 0 < args.stream_seconds <= 600 and args.interval >= 0.01):
        raise SystemExit("bounds: --streams ≤ 20000, --stream-seconds ≤ 600, --interval ≥ 0.01")
    raise_fd_limit(2 * args.streams + 300)  # Turnout: a client and an upstream socket per stream, plus its own
    rows: list[tuple[str, str, str, str]] = []
    if not args.skip_part1:
        asyncio.run(part1(args, rows))
    if args.streams:
        import uvloop

        uvloop.run(part2(args, rows))
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':{w}}  {'figure':32}  {'target':14}  floor")
    for r in rows:
        print(f"{r[0]:{w}}  {r[1]:32}  {r[2]:14}  {r[3]}")


if __name__ == "__main__":
    main()
