"""Where Turnout's CPU goes on the hot path: py-spy samples the server while a client drives it.

Starts the mock upstream and Turnout (as benchmarks/bench.py does: an `openai` backend, ledger,
metrics and health on), sends `--requests` non-streamed or 20-chunk streamed requests from
`--concurrency` clients, records Turnout with py-spy (raw collapsed stacks, pip install py-spy)
and prints the functions with the most samples: inclusive (the function and what it calls) and
self. py-spy samples wall time: on a loaded machine a process descheduled inside a syscall (a
loopback write that wakes its peer) is charged to that call. `--cprofile` instead runs the server
under cProfile with a CPU clock (time.thread_time: the event loop thread's CPU only, the profiler's
own cost inflates small functions) and prints the top CPU totals. 127.0.0.1 only; bounded by the
request count and a time limit.

    python benchmarks/profile_hot_path.py [--stream] [--requests 3000] [--top 40] [--raw out.txt]
    python benchmarks/profile_hot_path.py --cprofile [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import BODY, free_port, wait_up  # noqa: E402

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "/proxy/", "/translators/", "lib/python3"):
        if marker in path:
            path = (marker.strip("/") + "/" if marker.startswith("/") else "") + path.split(marker, 1)[1]
            break
    return f"{m['fn']} ({path})"


def summarise(raw: str, top: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [_short(f) for f in stack.split(";")[1:]]  # the first frame is the process/thread
        count = int(n)
        total += count
        for f in set(frames):
            inclusive[f] += count
        if frames:
            own[frames[-1]] += count
    out = [f"{total} samples", "", f"{'incl %':>7} {'self %':>7}  function"]
    for f, n in inclusive.most_common(top):
        out.append(f"{100 * n / total:7.1f} {100 * own[f] / total:7.1f}  {f}")
    out += ["", "by self time:", f"{'self %':>7}  function"]
    for f, n in own.most_common(top):
        out.append(f"{100 * n / total:7.1f}  {f}")
    return "\n".join(out)


async def drive(url: str, n: int, conc: int, body: dict) -> None:
    left = n
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                r = await client.post(url, json=body)
                assert r.status_code == 200, r.text

        await asyncio.gather(*(worker() for _ in range(conc)))


def serve_profiled(config: str, out: str) -> None:
    """`turnout serve` under cProfile (CPU clock): SIGUSR1 starts it, SIGUSR2 stops it and writes `out`."""
    import cProfile
    import signal

    sys.path.insert(0, os.getcwd())  # the worktree the benchmark runs from
    from proxy import cli

    prof = cProfile.Profile(time.thread_time)

    def stop(*_: object) -> None:
        prof.disable()
        prof.dump_stats(out)

    signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
    signal.signal(signal.SIGUSR2, stop)
    cli.main(["serve", "--config", config])


def cprofile_table(path: str, top: int) -> str:
    import io
    import pstats

    buf = io.StringIO()
    st = pstats.Stats(path, stream=buf)
    st.sort_stats("cumulative").print_stats(top)
    st.sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-profiled":
        serve_profiled(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--stream", action="store_true", help="20-chunk streams instead of plain requests")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL (leaves out idle waits)")
    ap.add_argument("--raw", help="also keep py-spy's collapsed stacks (or the cProfile stats) in this file")
    ap.add_argument("--cprofile", action="store_true", help="cProfile with a CPU clock instead of py-spy")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    up_port, tp_port = free_port(), free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as cfg:
        cfg.write(f"""
server: {{host: 127.0.0.1, port: {tp_port}, log_level: warning}}
backends:
  upstream: {{type: openai, base_url: "http://127.0.0.1:{up_port}/v1"}}
models:
  bench: {{backend: upstream, model: bench}}
""")
    raw_path = args.raw or cfg.name + ".raw"
    if os.path.exists(raw_path):
        os.unlink(raw_path)
    turnout = [sys.executable, "-m", "proxy"]
    up = subprocess.Popen(turnout + ["mock-upstream", "--port", str(up_port), "--chunks", "20"])
    if args.cprofile:
        turnout_cmd = [sys.executable, os.path.abspath(__file__), "--serve-profiled", cfg.name, raw_path]
    else:
        turnout_cmd = turnout + ["serve", "--config", cfg.name]
    tp = subprocess.Popen(turnout_cmd, stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{up_port}/v1/models")
        wait_up(f"http://127.0.0.1:{tp_port}/health")
        url = f"http://127.0.0.1:{tp_port}/v1/chat/completions"
        body = {**BODY, "stream": True} if args.stream else BODY
        asyncio.run(drive(url, 300, args.concurrency, body))  # warm up
        if args.cprofile:
            os.kill(tp.pid, signal.SIGUSR1)
            asyncio.run(asyncio.wait_for(drive(url, args.requests, args.concurrency, body), 600))
            os.kill(tp.pid, signal.SIGUSR2)
            for _ in range(100):
                time.sleep(0.1)
                if os.path.exists(raw_path) and os.path.getsize(raw_path):
                    break
            time.sleep(0.5)
            print(cprofile_table(raw_path, args.top))
            return
        rec = subprocess.Popen([spy, "record", "--pid", str(tp.pid), "--format", "raw", "--rate", str(args.rate),
                                "--nonblocking", *(["--gil"] if args.gil else []), "--output", raw_path], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        asyncio.run(asyncio.wait_for(drive(url, args.requests, args.concurrency, body), 600))
        rec.send_signal(2)  # py-spy writes its output on SIGINT
        rec.wait(30)
        with open(raw_path) as f:
            print(summarise(f.read(), args.top))
    finally:
        for proc in (tp, up):
            proc.terminate()
            proc.wait(5)
        os.unlink(cfg.name)
        if not args.raw and os.path.exists(raw_path):
            os.unlink(raw_path)


if __name__ == "__main__":
    main()
