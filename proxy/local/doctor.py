"""Local-model discovery and `turnout doctor`.

`discovery_lines(cfg)` is what the start-up banner and `turnout check-config` print for the Ollama
backends: whether each answers, and which configured models are installed or missing (with the
`ollama pull` to run). It never hangs: a backend that does not answer within a second or two is
reported as not reachable.

`report(cfg)` is `turnout doctor`: per Ollama backend its version (``/api/version``), installed
models (``/api/tags``), loaded models (``/api/ps``) and the configured targets' state; then the
hardware (proxy/local/hardware.py: NVIDIA, AMD, Apple silicon or CPU-only), which installed models
fit the memory budget, and the recommended models (proxy/local/recommend.py). `--json` and
`--write` are proxy/local/autoconfig.py's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from proxy.config import BackendConfig, Config
from proxy.errors import TransportError
from proxy.http import HTTPClient, Timeout, run_sync
from proxy.local import hardware, recommend
from proxy.local.recommend import GB, full_name

DEFAULT_OLLAMA = "http://localhost:11434"


@dataclass
class Probe:
    backend: str
    url: str
    reachable: bool = False
    error: str | None = None
    version: str | None = None
    installed: list[dict[str, Any]] = field(default_factory=list)
    loaded: list[dict[str, Any]] | None = None
    capabilities: dict[str, list[str]] = field(default_factory=dict)  # /api/show's, where the server says

    @property
    def names(self) -> set[str]:
        return {full_name(m.get("model") or m.get("name") or "") for m in self.installed}


def ollama_backends(cfg: Config) -> list[BackendConfig]:
    return [b for b in cfg.backends.values() if b.type == "ollama"]


MAX_SHOW = 40  # /api/show calls one probe makes at most


def probe(b: BackendConfig, *, timeout: float = 2.0, full: bool = False, show: bool = False) -> Probe:
    """Ask one Ollama backend what it has; `full` also asks its version and loaded models, `show`
    each installed model's capabilities (``/api/show``; older servers do not list them)."""
    url = (b.base_url or DEFAULT_OLLAMA).rstrip("/")
    p = Probe(b.name, url)
    headers = dict(b.headers)
    if b.api_key:
        headers["authorization"] = f"Bearer {b.api_key}"

    async def ask(c: HTTPClient) -> None:
        r = await c.get("/api/tags")
        if r.status_code != 200:
            p.error = f"/api/tags answered HTTP {r.status_code}"
            return
        p.installed = list(r.json().get("models") or [])
        p.reachable = True
        if full:
            r = await c.get("/api/version")
            if r.status_code == 200:
                p.version = r.json().get("version")
            r = await c.get("/api/ps")
            if r.status_code == 200:
                p.loaded = list(r.json().get("models") or [])
        deadline = time.monotonic() + 2 * timeout  # all /api/show calls together, however many models
        for m in p.installed[:MAX_SHOW] if show else []:
            if time.monotonic() > deadline:
                break
            name = m.get("model") or m.get("name")
            r = await c.post("/api/show", json={"model": name})
            body = r.json() if r.status_code == 200 else None
            caps = body.get("capabilities") if isinstance(body, dict) else None
            if isinstance(caps, list):
                p.capabilities[full_name(str(name))] = [str(x) for x in caps]

    try:
        run_sync(url, ask, headers=headers, timeout=Timeout(connect=min(timeout, b.timeout.connect), read=timeout))
    except TransportError as e:
        p.error = type(e).__name__
    except (ValueError, AttributeError):
        p.error = "it answered something that is not Ollama's JSON"
    return p


def _targets(cfg: Config, backend: str) -> list[tuple[str, str]]:
    return [(name, t.model) for name, t in cfg.models.items() if t.backend == backend and t.model != "auto"]


def probes(cfg: Config, timeout: float = 1.5) -> dict[str, Probe]:
    """Each Ollama backend asked what it has (never longer than `timeout` each)."""
    return {b.name: probe(b, timeout=timeout) for b in ollama_backends(cfg)}


def discovery_lines(cfg: Config, timeout: float = 1.5, found: dict[str, Probe] | None = None) -> list[str]:
    """Banner lines: per Ollama backend, reachable or not, and which configured models are missing
    (`found`: probes already made, so that the banner's lines agree with each other)."""
    backends = ollama_backends(cfg)
    if not backends:
        return []
    found = probes(cfg, timeout) if found is None else found
    lines = ["ollama models:"]
    for b in backends:
        p = found.get(b.name) or probe(b, timeout=timeout)
        targets = _targets(cfg, b.name)
        if not p.reachable:
            lines.append(f"  {b.name}: not reachable at {p.url} ({p.error}) - is `ollama serve` running? "
                         f"Cannot check {', '.join(m for _, m in targets) or 'its models'}.")
            continue
        missing = [(n, m) for n, m in targets if full_name(m) not in p.names]
        lines.append(f"  {b.name}: {len(p.installed)} installed at {p.url}; "
                     f"{len(targets) - len(missing)} of {len(targets)} configured models present")
        for n, m in missing:
            lines.append(f"    MISSING {m} (model {n}) - run `ollama pull {m}`")
    return lines


# --- hardware and fit -----------------------------------------------------------------------------


def _gb(n: float) -> str:
    return f"{n:.1f} GB"


def _when(s: Any) -> str:
    try:
        return datetime.fromisoformat(str(s).replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return str(s)


def fit_lines(hw: hardware.Hardware, installed: list[dict[str, Any]], reserve_gb: float | None = None) -> list[str]:
    """The doctor's hardware section: GPUs (or none), the memory budget, which installed models fit,
    and the recommendations (proxy/local/recommend.py)."""
    lines: list[str] = []
    if hw.gpus:
        lines.append(f"GPU ({hw.kind}):")
        for g in hw.gpus:
            used = f", {g.used_mib} MiB used, {g.free_mib} MiB free" if g.used_mib is not None else ""
            lines.append(f"  GPU {g.index}: {g.name}, {g.total_mib} MiB total{used}")
    else:
        lines.append("GPU: none found; Ollama will run models on the CPU (prefer 1B-3B models: larger ones answer "
                     "slowly).")
        total = hw.system_total_mib
        lines.append(f"  system memory: {_gb(total / 1024) if total else 'unknown'}")
    for note in hw.notes:
        lines.append(f"  ({note})")
    memory = hw.memory_mib * hardware.MIB
    reserve = int(reserve_gb * GB) if reserve_gb is not None else recommend.default_reserve(hw.kind, memory)
    budget = max(0, memory - reserve)
    lines.append(f"Budget: {_gb(budget / GB)} for models ({_gb(memory / GB)}, {_gb(reserve / GB)} kept for other "
                 "work; --reserve GB changes it)")
    have = [m for m in (recommend.from_installed(e) for e in installed) if m]
    for m in have:
        verdict = "fits" if m.need <= budget else "does NOT fit (Ollama would split it onto the CPU, slowly)"
        lines.append(f"  {m.name:28s} needs ~{_gb(m.need / GB):8s} {verdict}")
    names = {m.name for m in have}
    cands = have + [m for m in recommend.CATALOGUE if m.name not in names]
    for kind, c in recommend.recommend(cands, budget, hw.kind == "cpu").items():
        if c is None:
            lines.append(f"  Recommended {kind}: nothing fits {_gb(budget / GB)}")
            continue
        names_ = " + ".join(m.name + ("" if m.installed else " (ollama pull " + m.name + ")") for m in c.models)
        lines.append(f"  Recommended {kind}: {names_} - {_gb(c.need / GB)}, {_gb(c.free / GB)} left")
    return lines


# --- the report -----------------------------------------------------------------------------------


def report(cfg: Config, headroom_gb: float | None = None) -> tuple[str, bool]:
    """The doctor's text and whether everything is in order (all reachable, nothing missing)."""
    ok = True
    lines = [f"Turnout doctor - config {cfg.path or '(inline)'}", ""]
    all_installed: dict[str, dict[str, Any]] = {}
    backends = ollama_backends(cfg)
    if not backends:
        lines.append("No Ollama backends in this config (add one with `type: ollama`).")
    for b in backends:
        p = probe(b, timeout=5.0, full=True)
        lines.append(f"Ollama backend '{b.name}' at {p.url}")
        targets = _targets(cfg, b.name)
        if not p.reachable:
            ok = False
            lines.append(f"  NOT REACHABLE ({p.error}). Start it with `ollama serve` (or fix base_url).")
            for n, m in targets:
                lines.append(f"  model {n}: {m} - unknown (backend down)")
            lines.append("")
            continue
        lines.append(f"  version:   {p.version or 'unknown'}")
        used_by: dict[str, list[str]] = {}
        for n, m in targets:
            used_by.setdefault(full_name(m), []).append(n)
        lines.append(f"  installed: {len(p.installed)} model{'s' if len(p.installed) != 1 else ''}")
        for m in p.installed:
            name = m.get("model") or m.get("name") or "?"
            d = m.get("details") or {}
            users = used_by.get(full_name(name))
            lines.append(f"    {name:28s} {d.get('parameter_size', ''):>7s} {d.get('quantization_level', ''):8s} "
                         f"{_gb((m.get('size') or 0) / GB):>8s}   "
                         + (f"used by: {', '.join(users)}" if users else "(not in config)"))
            all_installed.setdefault(full_name(name), m)
        loaded = p.loaded or []
        lines.append(f"  loaded (ollama ps): {len(loaded) or 'none'}")
        for m in loaded:
            size, vram = m.get("size") or 0, m.get("size_vram") or 0
            where = "100% GPU" if size and vram >= size else ("CPU" if not vram else f"{vram * 100 // size}% GPU")
            lines.append(f"    {m.get('model') or m.get('name'):28s} {_gb(size / GB):>8s} {where}, "
                         f"until {_when(m.get('expires_at'))}")
        loaded_names = {full_name(m.get("model") or m.get("name") or "") for m in loaded}
        lines.append("  configured models:")
        if not targets:
            lines.append("    none use this backend")
        for n, m in targets:
            if full_name(m) in p.names:
                state = "installed" + (", loaded" if full_name(m) in loaded_names else "")
            else:
                ok = False
                state = f"MISSING - run `ollama pull {m}`"
            lines.append(f"    {n:20s} {m:28s} {state}")
        lines.append("")
    lines += fit_lines(hardware.detect(), list(all_installed.values()), headroom_gb)
    lines.append("")
    lines.append("All good." if ok else "Problems found (see above).")
    return "\n".join(lines), ok


def default_config() -> Config:
    """No config file: one Ollama backend where the `ollama` CLI would look ($OLLAMA_HOST or the default)."""
    host = os.environ.get("OLLAMA_HOST", "").strip() or DEFAULT_OLLAMA
    if not host.startswith(("http://", "https://")):
        host = "http://" + host
    if host.count(":") < 2:
        host += ":11434"
    from proxy.config import parse

    cfg = parse({"backends": {"ollama": {"type": "ollama", "base_url": host}}}, {})
    cfg.path = f"(none: checking the Ollama at {host})"
    return cfg


def main(cfg: Config, headroom_gb: float | None = None) -> int:
    """`turnout doctor` (text)."""
    text, ok = report(cfg, headroom_gb)
    print(text)
    return 0 if ok else 1
