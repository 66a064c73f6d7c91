"""Issue 8: the dashboard page (static files from the package, no CDN), drawn with real data in
headless Chromium; the deploy/ files (docker-compose, Grafana provisioning) hold together."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tomllib
import zlib
from html.parser import HTMLParser
from pathlib import Path

import httpx
import yaml

from tests.test_metrics import DEPLOY, ROOT, need

DASHBOARD = ROOT / "proxy" / "observability" / "dashboard"
KEY = "sk-dashboard-key-7"
CFG = {
    "backends": {"local": {"type": "mock", "probe": {"interval": 0}},
                 "cloud": {"type": "mock", "probe": {"interval": 0}},
                 "flaky": {"type": "mock", "fail": {"status": 503}, "probe": {"interval": 0}}},
    "models": {"local-small": {"backend": "local"},
               "cloud-smart": {"backend": "cloud", "price": {"input": 300, "output": 1500}},
               "flaky-cloud": {"backend": "flaky", "price": {"input": 1, "output": 1}}},
    "routes": {"smart": ["flaky-cloud", "cloud-smart"], "fast": ["local-small"]},
    "routing": {"circuit": {"failures": 100}},
    "keys": [{"key": KEY, "name": "ops"}],
}
PALETTE = {"local-small": (0x25, 0x63, 0xEB), "cloud-smart": (0x16, 0xA3, 0x4A)}
LOCAL, CLOUD, FALLBACK = (0x0D, 0x94, 0x88), (0x63, 0x66, 0xF1), (0xEA, 0x58, 0x0C)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) pixels of an 8-bit, non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and color in (2, 6) and interlace == 0
            bpp = 4 if color == 6 else 3
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r) if bpp == 3 else bytes(x for i, x in enumerate(r) if i % 4 != 3) for r in rows]


def count_color(rows: list[bytes], rgb: tuple[int, int, int], tolerance: int = 6) -> int:
    n = 0
    for row in rows:
        for i in range(0, len(row), 3):
            if abs(row[i] - rgb[0]) <= tolerance and abs(row[i + 1] - rgb[1]) <= tolerance \
                    and abs(row[i + 2] - rgb[2]) <= tolerance:
                n += 1
    return n


class Dom(HTMLParser):
    """The attributes of the elements with an id, and the text under each."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, dict[str, str | None]] = {}
        self.body: dict[str, str | None] = {}
        self.stack: list[str] = []
        self.text: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        if tag == "body":
            self.body = d
        if "id" in d:
            self.attrs[d["id"]] = d
        self.stack.append(d.get("id") or "")

    def handle_endtag(self, tag):
        if self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for i in self.stack:
            if i:
                self.text[i] = self.text.get(i, "") + data


def chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or need("chromium")
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}", "--window-size=1280,1000",
                           "--virtual-time-budget=4000", *args], capture_output=True, timeout=90)


def test_static_files_are_served_and_need_nothing_from_outside(turnout):
    base = turnout({"backends": {"m": {"type": "mock"}}, "models": {"t": {"backend": "m"}}})
    r = httpx.get(base + "/turnout/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        a = httpx.get(f"{base}/turnout/dashboard/{name}")
        assert a.status_code == 200 and a.headers["content-type"].startswith(kind)
    assert httpx.get(base + "/turnout/dashboard/../app.py").status_code == 404
    assert httpx.get(base + "/turnout/dashboard/secret.txt").status_code == 404
    for f in DASHBOARD.iterdir():  # no CDN, no external font or script
        assert not re.search(r"https?://", f.read_text()), f.name
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "dashboard/*" in package_data["proxy.observability"]


def test_dashboard_draws_real_data_in_headless_chromium(serve, tmp_path):
    need("chromium")
    from proxy.server.assembly import build_app
    from proxy.config import parse

    app = build_app(parse(CFG, {}))
    metrics = app.state.turnout.metrics
    metrics.register_gauge_source("turnout_quota_remaining", "left", ("backend", "period"),
                                  lambda: [(("flaky", "day"), 1300)])
    metrics.register_gauge_source("turnout_quota_limit", "limit", ("backend", "period"),
                                  lambda: [(("flaky", "day"), 1500)])
    metrics.register_gauge_source("turnout_budget_spent_usd", "spent", ("scope", "name", "period"),
                                  lambda: [(("key", "ops", "day"), 4.2)])
    metrics.register_gauge_source("turnout_budget_limit_usd", "limit", ("scope", "name", "period"),
                                  lambda: [(("key", "ops", "day"), 5)])
    base = serve(app)
    with httpx.Client(headers={"authorization": f"Bearer {KEY}"}, timeout=30) as c:
        for i in range(24):
            model = "fast" if i % 3 else "smart"
            r = c.post(base + "/v1/chat/completions", json={"model": model, "messages": [
                {"role": "user", "content": f"question {i} " + "with some words " * (i % 5)}]})
            assert r.status_code == 200
    url = f"{base}/turnout/dashboard#key={KEY}"  # the fragment never reaches the server
    out = chromium(["--dump-dom", url], tmp_path)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    dom = Dom()
    dom.feed(out.stdout.decode())
    assert int(dom.body["data-rendered"] or 0) >= 1, "the page never drew (did /turnout/stats fail?)"
    assert dom.body["data-requests"] == "24"
    for chart in ("c-requests", "c-cost", "c-share", "c-fallbacks"):
        assert int(dom.attrs[chart].get("data-points") or 0) > 0, chart
    assert dom.attrs["auth"].get("hidden") is not None  # the key from the fragment was accepted
    assert dom.text["system"] == "degraded"
    assert "flaky" in dom.text["health"] and "local" in dom.text["health"]
    assert "flaky-cloud" in dom.text["t-fallbacks"] and "server" in dom.text["t-fallbacks"]
    assert "1300 left of 1500" in dom.text["limits"] and "$0.80 left of $5.00" in dom.text["limits"]
    assert "16 req" in dom.text["l-share"] and "8 req" in dom.text["l-share"]

    shot = tmp_path / "dashboard.png"
    out = chromium([f"--screenshot={shot}", url], tmp_path)
    assert out.returncode == 0 and shot.exists(), out.stderr.decode()[-2000:]
    if os.environ.get("TURNOUT_SCREENSHOT"):
        shutil.copy(shot, os.environ["TURNOUT_SCREENSHOT"])
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 1000)
    # the bars of each target, both halves of the local/cloud ring, the fallback bars: drawn, in colour
    for name, rgb in (("local-small bars", PALETTE["local-small"]), ("cloud-smart bars", PALETTE["cloud-smart"]),
                      ("local share", LOCAL), ("cloud share", CLOUD), ("fallback bars", FALLBACK)):
        assert count_color(rows, rgb) > 150, f"{name}: too few pixels of its colour in the screenshot"


def test_deploy_files_hold_together():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"turnout-1", "turnout-2", "redis", "postgres", "prometheus", "grafana"}
    assert (ROOT / services["turnout-1"]["build"]["context"].replace("..", ".")).exists()
    assert (DEPLOY / Path(services["turnout-1"]["build"]["dockerfile"]).name).exists()
    assert "127.0.0.1:4000:4000" in services["turnout-1"]["ports"]  # more in tests/test_deploy.py
    for svc in ("prometheus", "grafana"):
        for v in services[svc]["volumes"]:
            src = v.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src[2:]).exists(), v
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["turnout-1:4000", "turnout-2:4000"]
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    board = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert board["uid"] == "turnout" and board["schemaVersion"] >= 36
    ids, titles = set(), set()
    for p in board["panels"]:
        assert p["datasource"]["uid"] == uid and p["targets"] and p["id"] not in ids
        ids.add(p["id"])
        titles.add(p["title"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        for t in p["targets"]:
            assert "turnout_" in t["expr"]
    # the same views as the built-in dashboard
    for want in ("Requests/s by target", "Cost per hour by target (USD)", "Local vs cloud (requests in range)",
                 "Fallbacks/s (from → to, reason)", "Backend health", "Quota remaining", "Budget spent vs limit (USD)"):
        assert want in titles
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/turnout.yml").read_text())
    mounted = [v for v in services["grafana"]["volumes"] if v.startswith("./grafana-dashboard.json")][0]
    assert mounted.split(":")[1].startswith(provider["providers"][0]["options"]["path"])
