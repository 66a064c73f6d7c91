"""Config start-up: msgspec (what proxy/config/schema.py uses) against pydantic for the same schema.

Each run is a fresh interpreter that imports the library, defines every config section, and
converts the shipped proxy.yaml (already interpolated and expanded, so both do the same work) into
the typed Config, unknown fields forbidden (pydantic in its lax mode: its strict mode refuses a YAML
list for a frozenset). The pydantic models are generated from the
msgspec Structs (same fields, types, bounds and defaults), so the schemas are the same. Not part of
the test suite.

    python benchmarks/config_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import msgspec
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "proxy" / "config" / "schema.py"
sys.path.insert(0, str(ROOT))

MSGSPEC_RUN = """
import json, sys, time, importlib.util
t0 = time.perf_counter()
import msgspec
spec = importlib.util.spec_from_file_location("schema", {schema!r})
schema = importlib.util.module_from_spec(spec); sys.modules["schema"] = schema; spec.loader.exec_module(schema)
data = json.load(open({data!r}))
msgspec.convert(data, schema.Config)
print(time.perf_counter() - t0)
"""

PYDANTIC_RUN = """
import json, sys, time, importlib.util
t0 = time.perf_counter()
import pydantic
spec = importlib.util.spec_from_file_location("models", {models!r})
models = importlib.util.module_from_spec(spec); sys.modules["models"] = models; spec.loader.exec_module(models)
data = json.load(open({data!r}))
models.Config.model_validate(data)
print(time.perf_counter() - t0)
"""


def shipped_data() -> dict:
    """proxy.yaml as the loader hands it to conversion: interpolated, expanded, names filled in."""
    from proxy.config import checks, loading
    from proxy.config.schema import BackendConfig

    data = checks.expand(loading.interpolate(yaml.safe_load((ROOT / "proxy.yaml").read_text()), {}, "", {}))
    known = {f.encode_name for f in msgspec.structs.fields(BackendConfig)}
    for name, b in data["backends"].items():
        opts = {k: v for k, v in b.items() if k not in known}
        data["backends"][name] = {**{k: v for k, v in b.items() if k in known}, "name": name, "options": opts}
    for section in ("models", "routes"):
        for name, v in data.get(section, {}).items():
            v["name"] = name
    return data


def _src(tp: typing.Any) -> str:
    """A type annotation as pydantic source (msgspec Meta bounds → pydantic Field)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        meta = {k: getattr(args[1], k) for k in ("ge", "le", "gt", "lt", "min_length")
                if getattr(args[1], k, None) is not None}
        return f"Annotated[{_src(args[0])}, Field({', '.join(f'{k}={v!r}' for k, v in meta.items())})]"
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin in (typing.Union, __import__('types').UnionType):
        return " | ".join(_src(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_src(a) for a in args)}]"
    if tp is type(None):
        return "None"
    return "Any" if tp is typing.Any else tp.__name__


def pydantic_source() -> str:
    spec = importlib.util.spec_from_file_location("schema", SCHEMA)
    schema = importlib.util.module_from_spec(spec)
    sys.modules["schema"] = schema
    spec.loader.exec_module(schema)
    lines = ["from typing import Annotated, Any, Literal",
             "from pydantic import BaseModel, ConfigDict, Field", ""]
    for name, cls in vars(schema).items():  # definition order: dependencies first
        if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)) or cls.__module__ != "schema":
            continue
        lines.append(f"class {name}(BaseModel):")
        lines.append("    model_config = ConfigDict(extra='forbid')")
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in msgspec.structs.fields(cls):
            ann = _src(hints[f.name])
            if f.default is not msgspec.NODEFAULT:
                lines.append(f"    {f.encode_name}: {ann} = {f.default!r}")
            elif f.default_factory is not msgspec.NODEFAULT:
                lines.append(f"    {f.encode_name}: {ann} = Field(default_factory={f.default_factory.__name__})")
            else:
                lines.append(f"    {f.encode_name}: {ann}")
        lines.append("    pass\n")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="turnout-config-bench-"))
    (tmp / "data.json").write_text(json.dumps(shipped_data()))
    (tmp / "models.py").write_text(pydantic_source())
    runs = {"msgspec": MSGSPEC_RUN.format(schema=str(SCHEMA), data=str(tmp / "data.json")),
            "pydantic": PYDANTIC_RUN.format(models=str(tmp / "models.py"), data=str(tmp / "data.json"))}
    for name, code in runs.items():
        times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      timeout=60).stdout) for _ in range(args.runs)]
        print(f"{name:9s} import + schema + parse of proxy.yaml: median {statistics.median(times) * 1000:.1f} ms "
              f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}, {args.runs} fresh interpreters)")


if __name__ == "__main__":
    main()
