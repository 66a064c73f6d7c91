"""Local-model discovery and `turnout doctor`.

`discovery_lines(cfg)` is what the start-up banner and `turnout check-config` print for the Ollama
backends: whether each answers, and which configured models are installed or missing (with the
`ollama pull` to run). It never hangs: a backend that does not answer within a second or two is
reported as not reachable.

`report(cfg)` is `turnout doctor`: per Ollama backend its version (``/api/version``), installed
models (``/api/tags``), loaded models (``/api/ps``) and the configured targets' state; then the
GPUs (``nvidia-smi``, where it exists) and which local models fit, by the rule of thumb the
project started from: about 2 GB of GPU memory for a 3B model and 5 GB for an 8B one, with room
left for other GPU work.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from proxy.config import BackendConfig, Config

DEFAULT_OLLAMA = "http://localhost:11434"
GB = 1024 ** 3
# (label, parameters in billions, GPU memory in GB, example models) — the guide's sizes, 4-bit quantised
SIZE_CLASSES = [
    ("1B", 1, 1.0, "llama3.2:1b, gemma3:1b"),
    ("3B", 3, 2.0, "llama3.2:3b, qwen2.5:3b"),
    ("7-8B", 8, 5.0, "llama3.1:8b, qwen2.5:7b, qwen2.5vl:7b"),
    ("12-14B", 14, 10.0, "gemma3:12b, qwen2.5:14b"),
    ("27-32B", 32, 20.0, "gemma3:27b, qwen2.5:32b"),
    ("70B", 70, 42.0, "llama3.3:70b"),
]


def full_name(name: str) -> str:
    """Ollama's canonical name: ``llama3.2`` is ``llama3.2:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


@dataclass
class Probe:
    backend: str
    url: str
    reachable: bool = False
    error: str | None = None
    version: str | None = None
    installed: list[dict[str, Any]] = field(default_factory=list)
    loaded: list[dict[str, Any]] | None = None

    @property
    def names(self) -> set[str]:
        return {full_name(m.get("model") or m.get("name") or "") for m in self.installed}


def ollama_backends(cfg: Config) -> list[BackendConfig]:
    return [b for b in cfg.backends.values() if b.type == "ollama"]


def probe(b: BackendConfig, *, timeout: float = 2.0, full: bool = False) -> Probe:
    """Ask one Ollama backend what it has; `full` also asks its version and loaded models."""
    url = (b.base_url or DEFAULT_OLLAMA).rstrip("/")
    p = Probe(b.name, url)
    headers = dict(b.headers)
    if b.api_key:
        headers["authorization"] = f"Bearer {b.api_key}"
    t = httpx.Timeout(timeout, connect=min(timeout, b.timeout.connect))
    try:
        with httpx.Client(base_url=url, timeout=t, headers=headers, trust_env=False) as c:
            r = c.get("/api/tags")
            if r.status_code != 200:
                p.error = f"/api/tags answered HTTP {r.status_code}"
                return p
            p.installed = list(r.json().get("models") or [])
            p.reachable = True
            if full:
                r = c.get("/api/version")
                if r.status_code == 200:
                    p.version = r.json().get("version")
                r = c.get("/api/ps")
                if r.status_code == 200:
                    p.loaded = list(r.json().get("models") or [])
    except httpx.HTTPError as e:
        p.error = type(e).__name__
    except ValueError:
        p.error = "it answered something that is not Ollama's JSON"
    return p


def _targets(cfg: Config, backend: str) -> list[tuple[str, str]]:
    return [(name, t.model) for name, t in cfg.models.items() if t.backend == backend]


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


# --- GPU ------------------------------------------------------------------------------------------


@dataclass
class GPU:
    index: str
    name: str
    total_mib: int
    used_mib: int
    free_mib: int


def gpus(timeout: float = 5.0) -> list[GPU] | None:
    """The NVIDIA GPUs `nvidia-smi` reports, or None when it is not installed or fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.total,memory.used,memory.free",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    found = []
    for line in out.stdout.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) != 5:
            continue
        try:
            found.append(GPU(parts[0], parts[1], int(float(parts[2])), int(float(parts[3])), int(float(parts[4]))))
        except ValueError:
            continue
    return found


def _mem_available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        return None
    return None


def _params_b(m: dict[str, Any]) -> float | None:
    ps = str((m.get("details") or {}).get("parameter_size") or "")
    match = re.match(r"([\d.]+)\s*([BM])", ps, re.I)
    if not match:
        return None
    n = float(match.group(1))
    return n / 1000 if match.group(2).upper() == "M" else n


def need_gb(m: dict[str, Any]) -> float:
    """GPU memory a model needs, roughly: its weights plus ~15% for the KV cache and runtime, and
    never less than the guide's figure for its parameter count (2 GB for 3B, 5 GB for 8B)."""
    size = (m.get("size") or 0) / GB
    params = _params_b(m)
    guide = params * 0.65 if params else 0.0
    return round(max(size * 1.15, guide, 0.5), 1)


def _gb(n: float) -> str:
    return f"{n:.1f} GB"


def _when(s: Any) -> str:
    try:
        return datetime.fromisoformat(str(s).replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return str(s)


def fit_lines(gpu_list: list[GPU] | None, installed: list[dict[str, Any]], headroom_gb: float | None = None) -> list[str]:
    lines: list[str] = []
    if gpu_list is None or not gpu_list:
        ram = _mem_available_gb()
        lines.append("GPU: none found (nvidia-smi is not on PATH or reports no GPU); Ollama will run models on "
                     "the CPU.")
        budget = (ram or 0) - 2.0
        lines.append(f"  RAM available: {_gb(ram) if ram is not None else 'unknown'}. On a CPU prefer 1B-3B models "
                     "(about 2 GB each); 7-8B models work but answer slowly.")
        if ram is not None:
            fits = [c for c in SIZE_CLASSES if c[2] <= budget]
            if fits:
                lines.append(f"  Fits in RAM (2 GB kept free): up to {fits[-1][0]} (e.g. {fits[-1][3]}).")
        return lines
    lines.append("GPU (nvidia-smi):")
    for g in gpu_list:
        lines.append(f"  GPU {g.index}: {g.name}, {g.total_mib} MiB total, {g.used_mib} MiB used, {g.free_mib} MiB free")
    best = max(gpu_list, key=lambda g: g.free_mib)
    total_gb = best.total_mib / 1024
    headroom = headroom_gb if headroom_gb is not None else max(1.0, round(total_gb * 0.1, 1))
    usable = max(0.0, best.free_mib / 1024 - headroom)
    lines.append(f"Fit (guide: ~2 GB for a 3B model, ~5 GB for 8B; {_gb(headroom)} left free for other GPU work): "
                 f"{_gb(usable)} usable on GPU {best.index}")
    for m in installed:
        n = need_gb(m)
        verdict = "fits" if n <= usable else "does NOT fit (Ollama would split it onto the CPU, slowly)"
        lines.append(f"  {m.get('model') or m.get('name'):28s} needs ~{_gb(n):8s} {verdict}")
    fits = [c for c in SIZE_CLASSES if c[2] <= usable]
    if fits:
        label, _, gb, examples = fits[-1]
        lines.append(f"  Suggestion: models up to {label} (~{gb:g} GB) fit, e.g. {examples}.")
        pair = SIZE_CLASSES[1][2] + SIZE_CLASSES[2][2]
        if pair <= usable:
            lines.append(f"  A 3B model (quick edits) and an 8B one (harder local work) fit side by side "
                         f"(~{pair:g} GB).")
        else:
            lines.append("  Keep one model loaded at a time (a short keep_alive on the others).")
    else:
        lines.append("  Suggestion: not even a 1B model fits beside the current GPU work; run on the CPU or free "
                     "GPU memory.")
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
    lines += fit_lines(gpus(), list(all_installed.values()), headroom_gb)
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


def main(cfg: Config | str | None, headroom_gb: float | None = None) -> int:
    """`turnout doctor`: a Config, a config path, or None for $TURNOUT_CONFIG / ./proxy.yaml (and,
    when neither exists, the local Ollama alone)."""
    if not isinstance(cfg, Config):
        from proxy.cli import _default_config, load_or_exit

        path = cfg or _default_config()
        cfg = default_config() if cfg is None and not os.path.exists(path) else load_or_exit(path)
    text, ok = report(cfg, headroom_gb)
    print(text)
    return 0 if ok else 1
