"""Which local models fit this machine, for which role: a catalogue of Ollama models and the choice.

A model's memory need is its download size (4-bit weights) plus 15% for the KV cache at Ollama's
default context and the runtime's buffers — the rule of thumb `turnout doctor` has always used
(about 2 GB for a 3B model, 5.5 GB for an 8B one). The budget is the memory models may use
(`Hardware.memory_mib`) minus a reserve for other work. By default on a GPU: models get the first
10 GB, and what lies beyond is kept, up to 6 GB, for other GPU work such as image generation (SDXL
needs about that) — so 8 GB keeps nothing, 12 GB keeps 2, 16 GB and more keep 6, and a bigger GPU
never gets a smaller budget. On a CPU-only machine a quarter of the memory (at least 2 GB) is kept
for the system.

The choice, for a single model, a planning + execution pair or a vision model: the largest size
class that fits wins (for a pair: the planner's class, then the executor's, which is always a
smaller model of 3B or less so follow-ups are quick; the two classes' sum decides first, so an 8B
planner with a 3B executor beats a 14B one beside a 135M toy). Within the winning classes, when some choice
leaves at least 1 GB free the best-ranked model wins; when all are tight the lightest wins, since a
tight fit leaves no room for a longer context. On a CPU the planner stops at 8B (larger ones answer
too slowly). The seed's machines come out as it asked: 16 GB → llama3.1:8b + llama3.2:3b with 6 GB
left for image generation; 8 GB → qwen2.5:7b + qwen2.5:3b; 4 GB → qwen2.5:3b + gemma2:2b.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

GB = 1024 ** 3  # what nvidia-smi users call a GB (MiB-based); Ollama's listed sizes are decimal (1e9)
OVERHEAD = 1.15  # KV cache at the default context + runtime buffers, over the weights
COMFORT = 1 * GB  # a choice leaving this much free is comfortable; tighter ones prefer the lightest
GPU_RESERVE = 6 * GB  # room for image generation: what a GPU has beyond RESERVE_FROM, up to this
RESERVE_FROM = 10 * GB
CPU_PLANNER_MAX_CLASS = 4  # 7-8B
EXECUTOR_MAX_CLASS = 3  # 3B
ROLES = ("planning", "execution", "vision")
CLASS_LABELS = ["<1B", "1-2B", "2B", "3B", "7-8B", "11-14B", "27-34B", "70B+"]


def size_class(params_b: float) -> int:
    """Index into CLASS_LABELS."""
    for i, upper in enumerate((1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 40.0)):
        if params_b < upper:
            return i
    return 7


@dataclass(frozen=True)
class Model:
    """A model that could run here: from the catalogue or installed (then `installed` and real size)."""

    name: str
    params_b: float
    size: int  # bytes of weights (download size)
    roles: tuple[str, ...]
    rank: int = 0  # within a size class, higher is better
    installed: bool = False

    @property
    def need(self) -> int:
        return int(self.size * OVERHEAD)

    @property
    def cls(self) -> int:
        return size_class(self.params_b)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.name, "parameters_b": self.params_b, "size_bytes": self.size,
                "need_bytes": self.need, "need_gb": gb(self.need), "size_class": CLASS_LABELS[self.cls],
                "roles": list(self.roles), "installed": self.installed}


def _cat(name: str, params: float, size_gb: float, roles: tuple[str, ...], rank: int = 0) -> Model:
    return Model(name, params, int(size_gb * 1e9), roles, rank)


GEN = ("planning", "execution")
# Ollama library sizes (ollama.com/library, default 4-bit quantisation, as listed there)
CATALOGUE: list[Model] = [
    _cat("llama3.3:70b", 70.6, 43, ("planning",), 2),
    _cat("qwen2.5:72b", 72.7, 47, ("planning",), 1),
    _cat("qwen2.5:32b", 32.8, 20, ("planning",), 1),
    _cat("qwen2.5:14b", 14.8, 9.0, ("planning",), 1),
    _cat("llama3.1:8b", 8.0, 4.9, ("planning",), 2),
    _cat("qwen2.5:7b", 7.6, 4.7, ("planning",), 1),
    _cat("llama3.2:3b", 3.2, 2.0, GEN, 2),
    _cat("qwen2.5:3b", 3.1, 1.9, GEN, 1),
    _cat("gemma2:2b", 2.6, 1.6, GEN, 1),
    _cat("qwen2.5:1.5b", 1.5, 0.986, GEN, 2),
    _cat("smollm2:1.7b", 1.7, 1.8, GEN, 1),
    _cat("llama3.2:1b", 1.2, 1.3, GEN, 1),
    _cat("qwen2.5:0.5b", 0.5, 0.398, GEN, 2),
    _cat("smollm2:360m", 0.36, 0.726, GEN, 1),
    _cat("smollm2:135m", 0.135, 0.271, GEN, 0),
    _cat("llama3.2-vision:11b", 10.7, 7.9, ("vision",), 2),
    _cat("llava:13b", 13.0, 8.0, ("vision",), 1),
    _cat("qwen2.5vl:7b", 8.3, 6.0, ("vision",), 2),
    _cat("llava:7b", 7.2, 4.7, ("vision",), 1),
    _cat("moondream:1.8b", 1.8, 1.7, ("vision",), 1),
]
BY_NAME = {m.name: m for m in CATALOGUE}


def gb(n: float) -> float:
    return round(n / GB, 1)


def full_name(name: str) -> str:
    """Ollama's canonical name: ``llama3.2`` is ``llama3.2:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def default_reserve(kind: str, memory: int) -> int:
    """Bytes kept free for other work (see the module docstring)."""
    if kind == "cpu":
        return max(2 * GB, memory // 4)
    return min(GPU_RESERVE, max(0, memory - RESERVE_FROM))


def params_of(details: dict[str, Any]) -> float | None:
    """``parameter_size`` as Ollama writes it ("8.0B", "134.52M") in billions."""
    m = re.match(r"\s*([\d.]+)\s*([BMK])", str(details.get("parameter_size") or ""), re.I)
    if not m:
        return None
    return float(m.group(1)) * {"B": 1.0, "M": 1e-3, "K": 1e-6}[m.group(2).upper()]


def from_installed(entry: dict[str, Any], capabilities: list[str] | None = None) -> Model | None:
    """An installed model (an /api/tags entry, and /api/show's capabilities where the server gives
    them) as a `Model`; None for an embedding model or one whose size is unknown."""
    name = full_name(str(entry.get("model") or entry.get("name") or ""))
    details = entry.get("details") or {}
    size = entry.get("size")
    known = BY_NAME.get(name) or BY_NAME.get(name.removesuffix(":latest"))
    params = params_of(details) or (known.params_b if known else None)
    if not isinstance(size, int) or size <= 0 or params is None:
        return None
    families = {str(f).lower() for f in (details.get("families") or [details.get("family")]) if f}
    caps = {c.lower() for c in capabilities or []}
    if (caps and "completion" not in caps) or "embed" in name or families & {"bert", "nomic-bert"}:
        return None  # embeddings only
    if known:
        roles = known.roles
    elif "vision" in caps or families & {"clip", "mllama"}:
        roles = ("vision",)
    else:
        roles = ("planning", "execution") if size_class(params) <= EXECUTOR_MAX_CLASS else ("planning",)
    return Model(name, params, size, roles, known.rank if known else 0, installed=True)


@dataclass
class Choice:
    """A recommendation: the model(s), what they need together and what is left of the budget."""

    models: list[Model]
    budget: int
    why: str

    @property
    def need(self) -> int:
        return sum(m.need for m in self.models)

    @property
    def free(self) -> int:
        return self.budget - self.need

    def to_json(self) -> dict[str, Any]:
        return {"models": [m.to_json() for m in self.models], "need_gb": gb(self.need),
                "free_gb": gb(self.free), "why": self.why}


def _pick(options: list[tuple[tuple[int, ...], list[Model]]], budget: int) -> list[Model] | None:
    """Among options (class key, models) that fit: the top class key; then best rank if some leave
    COMFORT free, else the lightest."""
    fitting = [(k, ms) for k, ms in options if sum(m.need for m in ms) <= budget]
    if not fitting:
        return None
    top = max(k for k, _ in fitting)
    best = [ms for k, ms in fitting if k == top]
    roomy = [ms for ms in best if budget - sum(m.need for m in ms) >= COMFORT]
    if roomy:
        return max(roomy, key=lambda ms: ([m.rank for m in ms], [m.installed for m in ms]))
    return min(best, key=lambda ms: sum(m.need for m in ms))


def _why(kind: str, ms: list[Model], budget: int) -> str:
    left = budget - sum(m.need for m in ms)
    tight = " (a tight fit: the lightest of its class)" if left < COMFORT else ""
    return (f"the largest {kind} that fits {gb(budget):g} GB; needs {gb(sum(m.need for m in ms)):g} GB, "
            f"leaves {gb(left):g} GB{tight}")


def choose_single(models: Iterable[Model], budget: int, role: str = "planning",
                  max_class: int | None = None, what: str = "") -> Choice | None:
    cands = [m for m in models if role in m.roles and (max_class is None or m.cls <= max_class)]
    ms = _pick([((m.cls,), [m]) for m in cands], budget)
    return Choice(ms, budget, _why(f"{what}{role} model", ms, budget)) if ms else None


def choose_pair(models: Iterable[Model], budget: int, max_class: int | None = None) -> Choice | None:
    """A planning model and a smaller execution model (3B or less) that fit side by side."""
    ms_all = list(models)
    planners = [m for m in ms_all if "planning" in m.roles and (max_class is None or m.cls <= max_class)]
    executors = [m for m in ms_all if "execution" in m.roles and m.cls <= EXECUTOR_MAX_CLASS]
    # the classes' sum first: an 8B planner with a 3B executor beats a 14B one with a 135M toy beside it
    options = [((p.cls + e.cls, p.cls, e.cls), [p, e]) for p in planners for e in executors if e.cls < p.cls]
    ms = _pick(options, budget)
    return Choice(ms, budget, _why("planner with a smaller executor beside it", ms, budget)) if ms else None


def recommend(models: Iterable[Model], budget: int, cpu: bool = False) -> dict[str, Choice | None]:
    """The single model, the planning + execution pair and the vision model for a budget."""
    ms = list(models)
    cap = CPU_PLANNER_MAX_CLASS if cpu else None
    return {"single": choose_single(ms, budget, "planning", cap), "pair": choose_pair(ms, budget, cap),
            "vision": choose_single(ms, budget, "vision", cap)}


def for_role(installed: Iterable[Model], budget: int, role: str, cpu: bool = False) -> tuple[Model | None, str]:
    """The best installed model for a role and why (`model: auto` targets). Planning and execution
    come from the best pair when one fits, so both stay loaded together; otherwise the best single."""
    ms = list(installed)
    cap = CPU_PLANNER_MAX_CLASS if cpu and role == "planning" else None
    if role in ("planning", "execution"):
        pair = choose_pair(ms, budget, cap)
        if pair:
            m = pair.models[0 if role == "planning" else 1]
            return m, (f"{role} half of the best installed pair {pair.models[0].name} + {pair.models[1].name}: "
                       f"{gb(pair.need):g} of {gb(budget):g} GB, {gb(pair.free):g} GB left")
    c = choose_single(ms, budget, role, cap if role == "planning" else (EXECUTOR_MAX_CLASS if role == "execution" else None),
                      "installed ")
    if role == "execution" and not c:
        c = choose_single(ms, budget, "planning", what="installed ")  # a lone model does both
    if not c:
        have = ", ".join(f"{m.name} ({gb(m.need):g} GB)" for m in ms) or "none"
        if not any(role in m.roles for m in ms):
            return None, f"no installed model does {role} (installed: {have})"
        return None, f"no installed {role} model fits {gb(budget):g} GB (installed: {have})"
    return c.models[0], c.why


def table(sizes_gb: Iterable[int] = (4, 8, 16)) -> str:
    """The README's table: what Turnout recommends for NVIDIA/AMD GPUs of these sizes
    (`python -m proxy.local.recommend 4 8 16`)."""
    rows = ["| GPU memory | kept for other work | planner + executor (memory, left) | single model | vision model |",
            "|---|---|---|---|---|"]
    for size in sizes_gb:
        memory = size * GB
        reserve = default_reserve("nvidia", memory)
        r = recommend(CATALOGUE, memory - reserve)

        def cell(c: Choice | None, with_free: bool = False) -> str:
            if c is None:
                return "nothing fits"
            names = " + ".join(f"`{m.name}`" for m in c.models)
            return f"{names} ({gb(c.need):g} GB, {gb(c.free):g} GB left)" if with_free else names

        rows.append(f"| {size} GB | {gb(reserve):g} GB | {cell(r['pair'], True)} | {cell(r['single'])} | "
                    f"{cell(r['vision'])} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    print(table([int(a) for a in sys.argv[1:]] or (4, 8, 16)))
