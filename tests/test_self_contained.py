"""Issue 12, item 7: the tests read nothing outside the repository (recorded provider material is
in tests/fixtures/recorded, with its sources)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import RECORDED

TESTS = Path(__file__).resolve().parent


def test_no_test_reads_a_path_outside_the_repository() -> None:
    outside = re.compile(r"/work/|shared/recorded|\.\./shared")
    offenders = [f"{p.relative_to(TESTS)}:{n}" for p in TESTS.rglob("*.py") if p.name != Path(__file__).name
                 for n, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    assert not offenders, offenders


def test_every_recorded_fixture_has_its_source() -> None:
    sources = {s["file"] for s in json.loads((RECORDED / "SOURCES.json").read_text())}
    files = {p.name for p in RECORDED.iterdir() if p.name != "SOURCES.json"}
    assert len(files) >= 10 and files <= sources, files - sources
