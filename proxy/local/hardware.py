"""What this machine has for local models: its GPUs and their memory, or its system memory.

`detect()` asks, in order, NVIDIA's `nvidia-smi`, AMD's `rocm-smi` and, on macOS, `sysctl` (Apple
silicon's unified memory); with none of them the machine is CPU-only and the system memory counts
(``/proc/meminfo``). Every tool runs with a bounded timeout in its own process group, killed whole
when it overstays; a tool that is missing, fails, hangs or prints something unexpected becomes a
one-line note in the result, never an exception or a hang. `Hardware.to_json()` is the shape
`turnout doctor --json` and ``GET /turnout/hardware`` show.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

MIB = 1024 ** 2
TOOL_TIMEOUT = 3.0  # seconds one GPU tool may take before it is killed


@dataclass
class GPU:
    vendor: str  # nvidia | amd | apple
    index: str
    name: str
    total_mib: int
    used_mib: int | None = None
    free_mib: int | None = None


@dataclass
class Hardware:
    """The detected accelerator (`kind`), its GPUs and the memory models may use."""

    kind: str  # nvidia | amd | apple | cpu
    gpus: list[GPU] = field(default_factory=list)
    system_total_mib: int | None = None
    system_available_mib: int | None = None
    notes: list[str] = field(default_factory=list)  # each tool that was missing, failed or unreadable

    @property
    def memory_mib(self) -> int:
        """The memory one model may be loaded into: the largest GPU's (Ollama keeps a model on one GPU
        when it fits), Apple's GPU share of unified memory, or the system memory on a CPU."""
        if self.kind == "apple":
            total = self.gpus[0].total_mib
            # macOS lets the GPU wire about 2/3 of unified memory up to 36 GB, 3/4 above
            return int(total * (2 / 3 if total <= 36 * 1024 else 3 / 4))
        if self.gpus:
            return max(g.total_mib for g in self.gpus)
        return self.system_total_mib or 0

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "gpus": [asdict(g) for g in self.gpus], "memory_mib": self.memory_mib,
                "system_memory": {"total_mib": self.system_total_mib, "available_mib": self.system_available_mib},
                "notes": list(self.notes)}


class ToolError(Exception):
    """A tool that could not be asked: the message says why, for the operator."""


def run_tool(args: list[str], timeout: float = TOOL_TIMEOUT) -> str:
    """A tool's stdout, or `ToolError` when it is missing, fails or takes longer than `timeout`.

    The tool runs in a new session so that, on timeout, it and anything it started are killed
    together (a shell script's `sleep` would otherwise keep the pipe open)."""
    exe = shutil.which(args[0])
    if not exe:
        raise ToolError(f"{args[0]} is not on PATH")
    try:
        proc = subprocess.Popen([exe, *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        raise ToolError(f"{args[0]} could not be started ({e.strerror})") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        try:
            proc.communicate(timeout=1.0)  # reap it; never wait on a pipe something else still holds
        except subprocess.TimeoutExpired:
            pass
        raise ToolError(f"{args[0]} did not answer within {timeout:g} s (killed)") from None
    if proc.returncode != 0:
        said = (err or out).decode("utf-8", "replace").strip().splitlines()
        raise ToolError(f"{args[0]} exited with status {proc.returncode}" + (f": {said[0][:160]}" if said else ""))
    return out.decode("utf-8", "replace")


def _unexpected(tool: str, text: str) -> ToolError:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return ToolError(f"{tool} printed something unexpected: {first[:120]!r}" if first else f"{tool} printed nothing")


def _mib(v: str) -> int | None:
    try:
        return int(float(v))
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def nvidia(timeout: float = TOOL_TIMEOUT) -> list[GPU]:
    """NVIDIA GPUs, from ``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` (MiB)."""
    out = run_tool(["nvidia-smi", "--query-gpu=index,name,memory.total,memory.used,memory.free",
                    "--format=csv,noheader,nounits"], timeout)
    found = []
    for line in out.splitlines():
        if not line.strip():
            continue
        parts = [x.strip() for x in line.split(",")]
        total = _mib(parts[2]) if len(parts) == 5 else None
        if total is None or total <= 0:
            raise _unexpected("nvidia-smi", line)
        found.append(GPU("nvidia", parts[0], parts[1], total, _mib(parts[3]), _mib(parts[4])))
    if not found:
        raise ToolError("nvidia-smi reports no GPU")
    return found


def amd(timeout: float = TOOL_TIMEOUT) -> list[GPU]:
    """AMD GPUs, from ``rocm-smi --showmeminfo vram --showproductname --json``: an object per card,
    ``{"card0": {"VRAM Total Memory (B)": "17163091968", "VRAM Total Used Memory (B)": "...",
    "Card series": "..."}}`` (bytes, as strings; the name key's case varies between versions)."""
    out = run_tool(["rocm-smi", "--showmeminfo", "vram", "--showproductname", "--json"], timeout)
    start = out.find("{")  # some versions print a warning line before the JSON
    try:
        data = json.loads(out[start:]) if start >= 0 else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise _unexpected("rocm-smi", out)
    found = []
    for card, info in data.items():
        if not card.startswith("card") or not isinstance(info, dict):
            continue  # "system": driver version and the like
        fields = {str(k).lower(): v for k, v in info.items()}
        try:
            total = int(fields["vram total memory (b)"]) // MIB
            used = int(fields.get("vram total used memory (b)", 0)) // MIB
        except (KeyError, TypeError, ValueError):
            raise _unexpected("rocm-smi", json.dumps(info)) from None
        name = str(fields.get("card series") or fields.get("device name") or fields.get("card model") or "AMD GPU")
        found.append(GPU("amd", card.removeprefix("card"), name, total, used, total - used))
    if not found:
        raise ToolError("rocm-smi reports no GPU")
    return found


def apple(timeout: float = TOOL_TIMEOUT) -> list[GPU]:
    """Apple silicon: one GPU sharing the unified memory (``sysctl hw.memsize``); an Intel Mac has none."""
    brand = run_tool(["sysctl", "-n", "machdep.cpu.brand_string"], timeout).strip()
    if not brand.startswith("Apple"):
        raise ToolError(f"not Apple silicon ({brand[:60] or 'unknown CPU'}): no GPU Ollama uses")
    size = run_tool(["sysctl", "-n", "hw.memsize"], timeout).strip()
    if not size.isdigit():
        raise _unexpected("sysctl hw.memsize", size)
    return [GPU("apple", "0", f"{brand} (unified memory)", int(size) // MIB)]


def system_memory(path: str = "/proc/meminfo") -> tuple[int | None, int | None]:
    """(total, available) system memory in MiB from /proc/meminfo; (None, None) where it does not exist."""
    total = avail = None
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable") and rest.split():
                    mib = int(rest.split()[0]) // 1024
                    total, avail = (mib, avail) if key == "MemTotal" else (total, mib)
    except (OSError, ValueError):
        return None, None
    return total, avail


def detect(timeout: float = TOOL_TIMEOUT, system: str | None = None) -> Hardware:
    """The machine's GPUs (NVIDIA, then AMD, then Apple silicon on macOS) or CPU-only; never raises."""
    system = system or platform.system()
    notes: list[str] = []
    total, avail = system_memory() if system != "Darwin" else (None, None)  # macOS: sysctl hw.memsize
    probes = [("nvidia", nvidia), ("amd", amd)] + ([("apple", apple)] if system == "Darwin" else [])
    for kind, probe in probes:
        try:
            found = probe(timeout)
        except ToolError as e:
            notes.append(str(e))
            continue
        if kind == "apple" and total is None:
            total = found[0].total_mib
        return Hardware(kind, found, total, avail, notes)
    if total is None and system == "Darwin":
        try:
            size = run_tool(["sysctl", "-n", "hw.memsize"], timeout).strip()
            total = int(size) // MIB if size.isdigit() else None
        except ToolError as e:
            notes.append(str(e))
    return Hardware("cpu", [], total, avail, notes)
