"""Local models that configure themselves: the machine survey, `doctor --json`, `doctor --write`,
and `model: auto` targets.

`survey(cfg)` puts together what `hardware` detects, what each Ollama backend has installed and
loaded (through `doctor.probe`, bounded timeouts) and what `recommend` chooses for the memory
budget. `Survey.to_json()` is `turnout doctor --json` and ``GET /turnout/hardware``;
`config_text(survey, env)` is the proxy.yaml `turnout doctor --write FILE` writes; `resolve_auto`
turns each ``model: auto`` target into the best installed model for its role at start, or marks it
unavailable with the reason (as a cloud backend without a key is), never raising.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from proxy import config as config_mod
from proxy.config import Config
from proxy.local import hardware, recommend
from proxy.local.doctor import DEFAULT_OLLAMA, Probe, full_name, ollama_backends, probe
from proxy.local.recommend import GB, Model, gb

log = logging.getLogger("turnout.local")

# cloud targets `--write` puts behind the local ones when their key is set: (env var, backend type,
# backend name, [(target, model, vision)])
CLOUDS = [
    ("GEMINI_API_KEY", "gemini", "gemini", [("gemini-flash", "gemini-2.5-flash", True)]),
    ("ANTHROPIC_API_KEY", "anthropic", "claude", [("claude-sonnet", "claude-sonnet-4-5", True)]),
    ("OPENAI_API_KEY", "openai", "openai", [("gpt-4o-mini", "gpt-4o-mini", True)]),
]


@dataclass
class Survey:
    hw: hardware.Hardware
    reserve: int  # bytes kept free for other work
    probes: list[Probe] = field(default_factory=list)
    installed: dict[str, list[Model]] = field(default_factory=dict)  # per backend

    @property
    def memory(self) -> int:
        return self.hw.memory_mib * hardware.MIB

    @property
    def budget(self) -> int:
        return max(0, self.memory - self.reserve)

    @property
    def cpu(self) -> bool:
        return self.hw.kind == "cpu"

    def candidates(self) -> list[Model]:
        """The catalogue, with installed models (real sizes) in place of their catalogue entries."""
        inst = {m.name: m for ms in self.installed.values() for m in ms}
        return list(inst.values()) + [m for m in recommend.CATALOGUE if m.name not in inst]

    def recommendations(self) -> dict[str, recommend.Choice | None]:
        return recommend.recommend(self.candidates(), self.budget, self.cpu)

    def picks(self, backend: str) -> dict[str, tuple[Model | None, str]]:
        """Per role, the installed model of `backend` that `model: auto` would choose, and why."""
        ms = self.installed.get(backend)
        if ms is None:
            p = next((p for p in self.probes if p.backend == backend), None)
            why = f"backend {backend} not reachable ({p.error if p else 'not probed'})"
            return {role: (None, why) for role in recommend.ROLES}
        return {role: recommend.for_role(ms, self.budget, role, self.cpu) for role in recommend.ROLES}

    def missing(self) -> list[str]:
        """Recommended models no backend has installed (`ollama pull` hints)."""
        have = {m.name for ms in self.installed.values() for m in ms}
        out: list[str] = []
        for c in self.recommendations().values():
            for m in c.models if c else []:
                if m.name not in have and m.name not in out:
                    out.append(m.name)
        return out

    def to_json(self) -> dict[str, Any]:
        backends = []
        for p in self.probes:
            entry: dict[str, Any] = {"name": p.backend, "type": "ollama", "url": p.url, "reachable": p.reachable,
                                     "error": p.error, "version": p.version}
            if p.reachable:
                models = {m.name: m for m in self.installed.get(p.backend, [])}
                entry["installed"] = [_installed_json(m, models, p) for m in p.installed]
                entry["loaded"] = [{"model": m.get("model") or m.get("name"), "size_bytes": m.get("size"),
                                    "size_vram_bytes": m.get("size_vram"), "expires_at": m.get("expires_at"),
                                    "context_length": m.get("context_length")} for m in p.loaded or []]
                entry["auto"] = {role: {"model": m.name if m else None, "why": why}
                                 for role, (m, why) in self.picks(p.backend).items()}
            backends.append(entry)
        recs = self.recommendations()
        return {"hardware": self.hw.to_json(),
                "memory": {"total_gb": gb(self.memory), "reserve_gb": gb(self.reserve),
                           "budget_gb": gb(self.budget), "basis": _basis(self.hw)},
                "backends": backends,
                "recommendations": {k: (c.to_json() if c else None) for k, c in recs.items()},
                "pull": [f"ollama pull {n}" for n in self.missing()]}


def _basis(hw: hardware.Hardware) -> str:
    if hw.kind == "apple":
        return "Apple silicon: the GPU's share of unified memory"
    if hw.kind == "cpu":
        return "no GPU found: system memory (models run on the CPU)"
    return f"the largest {hw.kind.upper()} GPU's total memory"


def _installed_json(entry: dict[str, Any], models: dict[str, Model], p: Probe) -> dict[str, Any]:
    name = full_name(str(entry.get("model") or entry.get("name") or ""))
    d = entry.get("details") or {}
    m = models.get(name)
    return {"model": name, "size_bytes": entry.get("size"), "parameter_size": d.get("parameter_size"),
            "quantization": d.get("quantization_level"), "family": d.get("family"),
            "capabilities": p.capabilities.get(name), "need_gb": gb(m.need) if m else None,
            "roles": list(m.roles) if m else []}


def survey(cfg: Config, reserve_gb: float | None = None, hw: hardware.Hardware | None = None,
           timeout: float = 3.0) -> Survey:
    """Detect the hardware and ask each Ollama backend; never raises, never waits unbounded."""
    hw = hw or hardware.detect()
    memory = hw.memory_mib * hardware.MIB
    reserve = int(reserve_gb * GB) if reserve_gb is not None else recommend.default_reserve(hw.kind, memory)
    s = Survey(hw, reserve)
    for b in ollama_backends(cfg):
        p = probe(b, timeout=timeout, full=True, show=True)
        s.probes.append(p)
        if p.reachable:
            found = [recommend.from_installed(m, p.capabilities.get(full_name(str(m.get("model") or m.get("name")))))
                     for m in p.installed]
            s.installed[b.name] = [m for m in found if m]
    return s


# --- model: auto -----------------------------------------------------------------------------------


def resolve_auto(cfg: Config, s: Survey | None = None) -> list[str]:
    """Give each ``model: auto`` target the best installed model for its role (`Target.auto` says
    why), or mark it unavailable with the reason; never raises. Targets already resolved are left
    alone, so the banner and the app can both call it; a reload parses the config afresh and
    chooses again. Returns one line per auto target (logged, and shown by check-config)."""
    autos = [t for t in cfg.models.values() if t.role and (t.model == "auto" or t.auto)]
    todo = [t for t in autos if t.auto is None]
    if todo:
        s = s or survey(cfg)
        for t in todo:
            m, why = s.picks(t.backend)[t.role]
            t.auto = why
            if m:
                t.model = m.name
                t.vision = t.vision or t.role == "vision"
            else:
                t.unavailable = why
            (log.info if m else log.warning)("model auto: %s", auto_line(t))
    return [auto_line(t) for t in autos]


def auto_line(t: Any) -> str:
    if t.unavailable:
        return f"{t.name}: auto ({t.role}) -> SKIPPED: {t.unavailable}"
    return f"{t.name}: auto ({t.role}) -> {t.model} ({t.auto})"


# --- doctor --write --------------------------------------------------------------------------------


def config_text(s: Survey, env: Mapping[str, str], ollama_url: str) -> str:
    """A proxy.yaml for this machine (see the module docstring)."""
    backend = s.probes[0].backend if s.probes else "ollama"
    picks = s.picks(backend)
    recs = s.recommendations()
    pair = recs["pair"]
    head = [f"# Written by `turnout doctor --write` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC for this machine:",
            f"#   {_machine_line(s)}",
            f"#   memory budget {gb(s.budget):g} GB ({gb(s.memory):g} GB, {gb(s.reserve):g} GB kept for other work; "
            "`turnout doctor --reserve GB` changes it)"]
    if pair:
        head.append(f"#   recommended pair: planner {pair.models[0].name} + executor {pair.models[1].name} "
                    f"({gb(pair.need):g} GB, {gb(pair.free):g} GB left)")
    missing = s.missing()
    if missing:
        head.append("# Recommended models that are not installed (pull them, then run --write again):")
        head += [f"#   ollama pull {n}" for n in missing]
    # the local targets: the installed picks, else the recommendation (to pull)
    local: dict[str, tuple[str, str]] = {}
    for role, target in (("planning", "local-planner"), ("execution", "local-executor"), ("vision", "local-vision")):
        m, why = picks[role]
        if m:
            local[target] = (m.name, f"{role}: {why}")
        elif role != "vision":
            c = pair or recs["single"]
            name = c.models[-1 if role == "execution" else 0].name if c else "smollm2:135m"
            local[target] = (name, f"{role}: NOT INSTALLED - run `ollama pull {name}`")
    if local["local-executor"][0] == local["local-planner"][0]:
        del local["local-executor"]  # one model does both
    executor = "local-executor" if "local-executor" in local else "local-planner"
    lines = head + ["", "server:", "  host: 127.0.0.1", "  port: 4000", "", "backends:",
                    f"  {backend}:", "    type: ollama", f"    base_url: {ollama_url}",
                    "    timeout: {connect: 2, first_token: 120, idle: 30, total: 600}   # a cold model loads slowly"]
    clouds: list[tuple[str, str, bool]] = []
    for var, btype, bname, targets in CLOUDS:
        if env.get(var):
            lines += [f"  {bname}:", f"    type: {btype}", f"    api_key: ${{{var}}}"]
            clouds += [(t, f"{bname}:{model}", vision) for t, model, vision in targets]
    lines += ["", "models:"]
    for target, (model, why) in local.items():
        vision = ", vision: true" if target == "local-vision" else ""
        lines.append(f"  {target}: {{backend: {backend}, model: \"{model}\"{vision}}}   # {why}")
    for t, spec, vision in clouds:
        bname, model = spec.split(":", 1)
        lines.append(f"  {t}: {{backend: {bname}, model: {model}{', vision: true' if vision else ''}}}")
    cloud = [t for t, _, _ in clouds]
    cloud_vision = [t for t, _, v in clouds if v]

    def chain(*names: str) -> str:
        return "[" + ", ".join(dict.fromkeys(n for n in names if n)) + "]"

    planner_chain = chain("local-planner", *cloud)
    lines += ["", "routes:",
              "  plan:",
              "    description: planning turn to the larger local model, follow-ups to the quick one",
              "    rules:",
              f"      - {{name: planning,  when: {{turn: first}},    then: {planner_chain}}}",
              f"      - {{name: execution, when: {{turn: followup}}, then: {chain(executor, 'local-planner', *cloud)}}}",
              "  auto:",
              "    description: images to the vision model, complex asks to the planner, the rest to the executor",
              "    rules:"]
    if "local-vision" in local or cloud_vision:
        lines.append(f"      - {{name: vision,  when: {{has_images: true}},       then: "
                     f"{chain('local-vision' if 'local-vision' in local else '', *cloud_vision)}}}")
    lines += [f"      - {{name: complex, when: {{complexity: {{gte: 0.5}}}}, then: {planner_chain}}}",
              f"      - {{name: simple,  then: {chain(executor, 'local-planner', *cloud)}}}", ""]
    return "\n".join(lines)


def _machine_line(s: Survey) -> str:
    if s.hw.gpus:
        g = max(s.hw.gpus, key=lambda g: g.total_mib)
        return f"{s.hw.kind} GPU {g.name}, {g.total_mib / 1024:.1f} GB" + (
            f" (and {len(s.hw.gpus) - 1} more)" if len(s.hw.gpus) > 1 else "")
    return f"no GPU; {gb(s.memory):g} GB of system memory (models run on the CPU)"


def main(cfg: Config, reserve_gb: float | None, as_json: bool, write: str | None, force: bool = False) -> int:
    """`turnout doctor --json` / `--write FILE`."""
    s = survey(cfg, reserve_gb)
    if as_json:
        print(json.dumps(s.to_json(), indent=2))
    if write:
        if os.path.exists(write) and not force:
            print(f"turnout doctor: {write} exists; pass --force to overwrite it", file=sys.stderr)
            return 2
        url = s.probes[0].url if s.probes else DEFAULT_OLLAMA
        text = config_text(s, os.environ, url)
        with open(write, "w") as f:
            f.write(text)
        config_mod.load(write)  # what we write must load; a ConfigError here is our bug, shown as such
        if not as_json:
            print(f"wrote {write}; check it with `turnout check-config {write}`")
            for line in text.splitlines():
                if line.startswith("#   ") or line.startswith("# Recommended"):
                    print(line[2:])
    return 0
