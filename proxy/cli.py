"""The `turnout` command: serve, demo, check-config, mock-upstream, models, route, train, keys."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from proxy import __version__
from proxy import config as config_mod
from proxy.config import Config, ConfigError, ConfigUnreadable

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
DEMO_LOCAL_CONFIG = Path(__file__).with_name("demo-local.yaml")


def _default_config() -> str:
    return os.environ.get("TURNOUT_CONFIG") or "proxy.yaml"


def setup_logging(level: str, fmt: str = "text") -> None:
    from proxy.observability.logs import setup  # text or JSON lines on stderr; quiets httpx's URL logging

    setup(level, fmt)


def multiprocess_dir() -> str:
    """An empty PROMETHEUS_MULTIPROC_DIR for several workers: the one set (cleared of an old run's
    files), or a new temporary one. Set before any worker imports prometheus-client."""
    import glob
    import tempfile

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="turnout-metrics-")
    os.makedirs(path, exist_ok=True)
    for old in glob.glob(os.path.join(path, "*.db")) + glob.glob(os.path.join(path, "stats_*.json")):
        os.unlink(old)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def load_or_exit(path: str) -> Config:
    try:
        cfg = config_mod.load(path)
        from proxy.backends import create

        for b in cfg.backends.values():
            create(b)  # a backend's own options (e.g. llamacpp's) are checked when it is built
        return cfg
    except ConfigUnreadable as e:  # a missing file is not an invalid one
        print(f"turnout: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except ConfigError as e:
        print(f"turnout: invalid config: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def describe(cfg: Config) -> str:
    """The banner: each backend and whether it is usable, each route's chain."""
    from proxy.backends import create
    from proxy.local.doctor import discovery_lines, probes

    found = probes(cfg)  # Ollama backends: reachable or not (one status word per backend, below and after)
    lines = [f"Turnout config {cfg.path or '(inline)'}", "backends:"]
    for name, b in cfg.backends.items():
        backend = create(b)
        p = found.get(name)
        state = (f"UNAVAILABLE: {backend.unavailable}" if backend.unavailable else
                 f"NOT REACHABLE ({p.error}): see below" if p is not None and not p.reachable else "usable")
        lines.append(f"  {backend.describe():50s} {state}")
    from proxy.local.autoconfig import resolve_auto

    auto = resolve_auto(cfg)  # `model: auto` targets: the installed model chosen for each, or why none
    lines.append("models:")
    for name, t in cfg.models.items():
        lines.append(f"  {name:20s} {t.backend}/{t.model}  in ${t.price.input:g}/M out ${t.price.output:g}/M"
                     + ("  vision" if t.vision else "") + (f"  UNAVAILABLE: {t.unavailable}" if t.unavailable else ""))
    if auto:
        lines.append("model: auto:")
        lines += [f"  {line}" for line in auto]
    lines.append("routes:")
    for name, r in cfg.routes.items():
        if not r.rules:
            lines.append(f"  {name:20s} {' -> '.join(r.chain)}" + (f"   # {r.description}" if r.description else ""))
            continue
        lines.append(f"  {name}" + (f"   # {r.description}" if r.description else ""))
        for rule in r.rules:
            when = ", ".join(f"{k} {v}" if k in ("complexity", "prompt_tokens") else
                             f"{k}={','.join(sorted(v)) if isinstance(v, frozenset) else v}"
                             for k in rule.when.__struct_fields__ if (v := getattr(rule.when, k)) is not None) or "always"
            esc = f"  (escalate up to {rule.escalate}x)" if rule.escalate else ""
            lines.append(f"    {rule.name:18s} when {when}: {' -> '.join(rule.then)}{esc}")
    lines += discovery_lines(cfg, found=found)  # which configured Ollama models are installed or missing
    if not cfg.keys:
        lines.append("keys: none configured - the proxy is OPEN to anyone who can reach it")
    else:
        lines.append(f"keys: {', '.join(k.name for k in cfg.keys)}")
    from proxy.usage.cli import usage_lines

    lines += usage_lines(cfg)  # the ledger, built-in prices, quotas, rate limits, budgets
    if cfg.state.redis is not None:
        from proxy.state.redis import public

        r = cfg.state.redis
        lines.append(f"state: shared by every replica in Redis at {public(r.url)} (prefix {r.prefix!r}; "
                     f"if unreachable: {'own counters' if r.on_error == 'local' else '503 for shared limits'})")
    return "\n".join(lines)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def open_bind_refusal(cfg: Config, host: str) -> str | None:
    """Why Turnout will not listen on `host`: no keys (anyone who reaches it may spend) and an
    address beyond loopback, unless `server.allow_open: true` says the operator means it."""
    if cfg.keys or cfg.server.allow_open or host in LOOPBACK_HOSTS or host.startswith("127."):
        return None
    return (f"Refusing to listen on {host} with no keys configured: anyone who can reach it could spend "
            "through it. Add keys (keys: [...]) or set server.allow_open: true (e.g. behind your own "
            "authenticating proxy).")


def serve(cfg: Config, host: str | None, port: int | None, workers: int = 1) -> None:
    import uvicorn

    from proxy.server.assembly import build_app
    from proxy.server.protocol import BoundedReadProtocol

    host = host or cfg.server.host
    port = cfg.server.port if port is None else port
    refusal = open_bind_refusal(cfg, host)
    if refusal:
        raise SystemExit(refusal)
    setup_logging(cfg.server.log_level, cfg.server.log_format)
    print(describe(cfg), file=sys.stderr)
    print(f"\nServing the OpenAI API at http://{host}:{port}/v1  (Ctrl+C to stop)", file=sys.stderr, flush=True)
    # JSON logs: uvicorn's own loggers go through ours too (its default config has its own text handler)
    log_config = None if cfg.server.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    BoundedReadProtocol.read_timeout = cfg.server.read_timeout  # slowloris: proxy/server/protocol.py
    http = "proxy.server.protocol:BoundedReadProtocol"
    if workers > 1:
        # each worker builds its app from $TURNOUT_CONFIG (proxy.server.assembly.create_app); metrics are shared
        # through prometheus-client's multiprocess files
        os.environ["TURNOUT_CONFIG"] = os.path.abspath(cfg.path or _default_config())
        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        metrics_dir = multiprocess_dir()
        print(f"{workers} workers; metrics shared in {metrics_dir}", file=sys.stderr, flush=True)
        try:
            uvicorn.run("proxy.server.assembly:create_app", factory=True, workers=workers, host=host, port=port,
                        loop="uvloop", http=http, access_log=False, log_level=cfg.server.log_level,
                        lifespan="on", timeout_graceful_shutdown=5, log_config=log_config)
        finally:
            if not given:
                import shutil

                shutil.rmtree(metrics_dir, ignore_errors=True)
        return
    uvicorn.run(build_app(cfg), host=host, port=port, loop="uvloop", http=http,
                access_log=False, log_level=cfg.server.log_level, lifespan="on", timeout_graceful_shutdown=5,
                log_config=log_config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="turnout", description="An OpenAI-compatible LLM gateway.")
    parser.add_argument("--version", action="version", version=f"turnout {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the gateway")
    p.add_argument("--config", default=None, help="config file (default: $TURNOUT_CONFIG or ./proxy.yaml)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--workers", type=int, default=1, help="worker processes (metrics are summed across them)")

    p = sub.add_parser("demo", help="serve a config of built-in mock backends: no keys, nothing else needed")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--local", action="store_true",
                   help="route the simple tier to a real local model (SmolLM2 via llama.cpp; needs turnout[local])")

    p = sub.add_parser("models", help="the local model cache: fetch a GGUF model, list, print a path")
    p.add_argument("action", choices=["fetch", "list", "path"])
    p.add_argument("name", nargs="?", default=None, help="a known model, e.g. smollm2")

    p = sub.add_parser("check-config", help="validate a config and print the resolved routes")
    p.add_argument("file", nargs="?", default=None)

    p = sub.add_parser("doctor", help="check local models: Ollama version, installed and loaded models, GPU fit")
    p.add_argument("--config", default=None, help="config file (default: $TURNOUT_CONFIG or ./proxy.yaml)")
    p.add_argument("--reserve", "--headroom", dest="headroom", type=float, default=None,
                   help="GB of memory to keep for other work (default on a GPU: what lies beyond 10 GB, up "
                        "to 6, for image generation; without a GPU a quarter of the memory)")
    p.add_argument("--json", action="store_true", help="print GPUs, models and recommendations as JSON")
    p.add_argument("--write", metavar="FILE", default=None, help="write a proxy.yaml for this machine")
    p.add_argument("--force", action="store_true", help="let --write overwrite an existing file")

    p = sub.add_parser("route", help="explain how a prompt would be routed (no upstream call)")
    p.add_argument("prompt")
    p.add_argument("--config", default=None, help="config file (default: $TURNOUT_CONFIG or ./proxy.yaml)")
    p.add_argument("--model", default="auto", help="route or target the client names (default: auto)")
    p.add_argument("--image", action="append", default=[], help="attach an image file (repeatable)")
    p.add_argument("--turn", choices=("first", "followup"), default="first")
    p.add_argument("--task", default=None)
    p.add_argument("--tier", default=None, help="the key tier to assume (free, pro, admin, ...)")
    p.add_argument("--requirement", choices=("quality", "speed", "budget"), default=None)
    p.add_argument("--tools", action="store_true", help="the request offers tools")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")

    from proxy.usage.cli import add_arguments as add_usage_arguments

    add_usage_arguments(sub)  # usage, usage export, simulate

    from proxy.usage.keys_cli import add_arguments as add_keys_arguments

    add_keys_arguments(sub)  # keys create | list | revoke | rotate

    p = sub.add_parser("train", help="train a semantic router on labelled prompts (needs turnout[semantic])")
    p.add_argument("file", help="JSON lines of {\"text\": ..., \"label\": ...} (optional \"split\": train|test)")
    p.add_argument("-o", "--output", default="router.npz")
    p.add_argument("--label", default=None, help="the label whose share table to print (default: cloud, else the last)")

    p = sub.add_parser("mock-upstream", help="serve the mock as an OpenAI-compatible upstream (benchmarks, tests)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4010)
    p.add_argument("--chunks", type=int, default=None, help="pad streamed replies to this many chunks")

    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(load_or_exit(args.config or _default_config()), args.host, args.port, max(1, args.workers))
    elif args.command == "demo" and args.local:
        from proxy.local.models import prepare_local_demo

        prepare_local_demo()
        serve(load_or_exit(str(DEMO_LOCAL_CONFIG)), args.host, args.port)
    elif args.command == "demo":
        serve(load_or_exit(str(DEMO_CONFIG)), args.host, args.port)
    elif args.command == "models":
        from proxy.local.models import main as models_main

        raise SystemExit(models_main(args.action, args.name))
    elif args.command == "doctor":
        from proxy.local import autoconfig, doctor

        # no config file (none given, no $TURNOUT_CONFIG, no ./proxy.yaml): the local Ollama alone
        path = args.config or _default_config()
        cfg = doctor.default_config() if args.config is None and not os.path.exists(path) else load_or_exit(path)
        if args.json or args.write:
            raise SystemExit(autoconfig.main(cfg, args.headroom, args.json, args.write, args.force))
        raise SystemExit(doctor.main(cfg, args.headroom))
    elif args.command == "route":
        from proxy.routing.explain import route_command

        raise SystemExit(route_command(load_or_exit(args.config or _default_config()), args))
    elif args.command == "usage":
        from proxy.usage.cli import usage_command, usage_config

        cfg = None if args.url else (usage_config(args.config, _default_config(), args.ledger)
                                     or load_or_exit(args.config or _default_config()))
        raise SystemExit(usage_command(cfg, args))
    elif args.command == "keys":
        from proxy.usage.keys_cli import keys_command

        raise SystemExit(keys_command(args, _default_config()))
    elif args.command == "simulate":
        from proxy.usage.cli import simulate_command

        raise SystemExit(simulate_command(load_or_exit(args.config or _default_config()), args))
    elif args.command == "train":
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: threads only contend
        try:
            from proxy.semantic.train import train_command
        except ImportError as e:
            print(f"turnout train needs the semantic extra: pip install 'turnout[semantic]' ({e})", file=sys.stderr)
            raise SystemExit(2) from None
        raise SystemExit(train_command(args))
    elif args.command == "check-config":
        cfg = load_or_exit(args.file or _default_config())
        print(describe(cfg))
        print("config OK")
    elif args.command == "mock-upstream":
        import uvicorn

        from proxy.mock.server import build_mock_upstream

        app = build_mock_upstream({"chunks": args.chunks} if args.chunks else {})
        uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                    access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
