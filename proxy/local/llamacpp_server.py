"""The child process behind `type: llamacpp`: llama.cpp's server (via `xllamacpp`) for one GGUF file.

Started by `Child.spawn()` (used by `proxy.backends.llamacpp` and the tests) as ``python -m proxy.local.llamacpp_server --model FILE --ready-file F ...``;
it runs in its own process so that a crash inside llama.cpp cannot take Turnout down and so that
it can always be killed. Loopback only. It

- loads the model and serves llama.cpp's HTTP API on 127.0.0.1 (port 0 → the kernel picks a free one),
- then writes ``{"pid": …, "port": …, "url": …}`` to the ready file (atomically), so the parent learns
  the port without racing for it,
- exits promptly on SIGTERM/SIGINT (llama.cpp's server swallows SIGTERM, so we install our own
  handler after it has started),
- never outlives its parent: on Linux the kernel kills it when the parent dies
  (``PR_SET_PDEATHSIG``), and everywhere a watchdog thread exits when the parent pid changes.

Exit codes: 0 on a signal, 2 for bad arguments, 3 when xllamacpp is missing, 4 when the model fails to load.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

PR_SET_PDEATHSIG = 1
POOLING = ("mean", "cls", "last")  # llama.cpp's --pooling values that give one vector per input


# --- parent side -----------------------------------------------------------------------------------


class Child:
    """One running `proxy.local.llamacpp_server` process, seen from the parent.

    It runs in its own session (process group) so that `stop()` can end it and anything it started
    together; a module-level registry lets an ``atexit`` hook stop whatever is still running if the
    parent exits without closing it.
    """

    def __init__(self, proc: subprocess.Popen, workdir: str, log_path: str, own_workdir: bool = False) -> None:
        self.proc = proc
        self.own_workdir = own_workdir  # a temp dir made by spawn(), removed by stop()
        self.pid = proc.pid
        self.workdir = workdir
        self.log_path = log_path
        self.ready_file = os.path.join(workdir, "ready.json")
        self.url: str | None = None  # http://127.0.0.1:PORT once serving

    @classmethod
    def spawn(cls, model: str, *, n_ctx: int = 2048, threads: int = 2, parallel: int = 1, http_threads: int = 0,
              alias: str | None = None, verbose: bool = False, workdir: str | None = None,
              log_path: str | None = None, embedding: bool = False, pooling: str | None = None) -> "Child":
        own = workdir is None
        workdir = workdir or make_workdir()
        log_path = log_path or os.path.join(workdir, "server.log")
        for stale in ("ready.json", "ready.json.tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(workdir, stale))
        cmd = [sys.executable, "-m", "proxy.local.llamacpp_server", "--model", str(model), "--n-ctx", str(n_ctx),
               "--threads", str(threads), "--parallel", str(parallel), "--http-threads", str(http_threads),
               "--parent-pid", str(os.getpid()),
               "--ready-file", os.path.join(workdir, "ready.json")]
        if alias:
            cmd += ["--alias", alias]
        if verbose:
            cmd += ["--verbose"]
        if embedding:
            cmd += ["--embedding"]
        if pooling:
            cmd += ["--pooling", pooling]
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # so `proxy` imports uninstalled
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True, close_fds=True)
        child = cls(proc, workdir, log_path, own)
        _LIVE.add(child)
        return child

    def poll(self) -> int | None:
        """The exit code once the process has ended, else None."""
        rc = self.proc.poll()
        if rc is not None:
            _LIVE.discard(self)
        return rc

    def read_ready(self) -> str | None:
        """The server's URL once it has written its ready file, else None."""
        if self.url is None:
            try:
                with open(self.ready_file) as f:
                    info = json.load(f)
            except (OSError, ValueError):
                return None
            self.url = f"http://127.0.0.1:{int(info['port'])}"
        return self.url

    def signal(self, sig: int) -> None:
        """Signal the whole process group (the child leads it)."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; blocks until the process is gone (and reaped)."""
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.poll()

    def log_tail(self, lines: int = 12) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


_LIVE: set[Child] = set()
_WORKDIR = re.compile(r"^turnout-llamacpp-(?:.*-)?(\d+)-[a-z0-9_]+$")


def make_workdir(label: str = "") -> str:
    """A private temp dir for a server's ready file and log, named with this pid (see `sweep_workdirs`)."""
    return tempfile.mkdtemp(prefix=f"turnout-llamacpp-{label + '-' if label else ''}{os.getpid()}-")


def sweep_workdirs() -> int:
    """Remove temp dirs left by Turnout processes that are gone (killed before they could clean up)."""
    removed = 0
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        m = _WORKDIR.match(name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its owner is alive
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        path = os.path.join(root, name)
        with contextlib.suppress(OSError):
            if os.stat(path).st_uid == os.getuid():
                shutil.rmtree(path)
                removed += 1
    return removed


@atexit.register
def _stop_all() -> None:
    for child in list(_LIVE):
        with contextlib.suppress(Exception):
            child.stop(grace=1.0)


# --- child side ------------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """Make sure this process ends when `parent` does."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if parent and os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    if parent:
        threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _exit_on_signal() -> None:
    def handler(signum: int, frame: object) -> None:
        os._exit(0)  # llama.cpp's threads hold no state worth flushing

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m proxy.local.llamacpp_server",
                                description="Serve one GGUF file with llama.cpp's server on 127.0.0.1.")
    p.add_argument("--model", required=True, help="GGUF file")
    p.add_argument("--port", type=int, default=0, help="0 lets the kernel pick a free port")
    p.add_argument("--n-ctx", type=int, default=2048, help="context size (shared by all slots)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", type=int, default=1, help="concurrent requests (slots)")
    p.add_argument("--http-threads", type=int, default=0,
                   help="HTTP worker threads (0: parallel + 8); each open request holds one, /health needs one free")
    p.add_argument("--alias", default=None, help="model name the server reports")
    p.add_argument("--embedding", action="store_true",
                   help="serve /v1/embeddings (llama.cpp's embedding mode; it then refuses completions)")
    p.add_argument("--pooling", choices=POOLING, default=None, help="how token vectors become one (default: the model's)")
    p.add_argument("--verbose", action="store_true", help="llama.cpp's info log (per request); default: errors only")
    p.add_argument("--parent-pid", type=int, default=0, help="exit when this process is no longer the parent")
    p.add_argument("--ready-file", default=None, help="write {pid, port, url} here once serving")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _die_with_parent(args.parent_pid)
    _exit_on_signal()  # until the server replaces it; reinstalled below
    if not os.path.isfile(args.model):
        print(f"llamacpp_server: model file not found: {args.model}", file=sys.stderr, flush=True)
        return 4
    try:
        import xllamacpp
    except ImportError:
        print("llamacpp_server: xllamacpp is not installed (pip install 'turnout[local]')", file=sys.stderr,
              flush=True)
        return 3

    p = xllamacpp.CommonParams()
    p.model.path = args.model
    p.hostnames = ["127.0.0.1"]
    p.port = args.port
    p.n_ctx = args.n_ctx
    p.n_parallel = args.parallel
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.n_threads_http = args.http_threads if args.http_threads > 0 else args.parallel + 8
    if args.alias:
        p.model_alias = {args.alias}
    if args.embedding:
        p.embedding = True
        if args.pooling:
            p.pooling_type = getattr(xllamacpp.llama_pooling_type, f"LLAMA_POOLING_TYPE_{args.pooling.upper()}")
    p.verbosity = 3 if args.verbose else 1  # 1: warnings and errors (a failed load still says why)
    try:
        server = xllamacpp.Server(p)  # blocks until the model is loaded and the port is bound
    except Exception as e:  # noqa: BLE001 - reported to the parent through the exit code and the log
        print(f"llamacpp_server: failed to start: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 4
    _exit_on_signal()  # the server installed its own handlers, which ignore SIGTERM
    address = server.listening_address  # e.g. http://127.0.0.1:41234
    port = int(address.rsplit(":", 1)[1].strip("/"))
    info = {"pid": os.getpid(), "port": port, "url": f"http://127.0.0.1:{port}"}
    print(f"llamacpp_server: serving {args.model} at {info['url']}", file=sys.stderr, flush=True)
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f)
        os.replace(tmp, args.ready_file)
    while True:
        time.sleep(3600)  # llama.cpp serves from its own threads; signals end us


if __name__ == "__main__":
    sys.exit(main())
