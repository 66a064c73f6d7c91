"""Recent traffic in time buckets, for the dashboard (`GET /turnout/stats`).

Kept in memory by the metrics observer: per bucket (10 s by default, the last six hours) and per
target, requests, errors, tokens and cost; and since start, the local/cloud split and fallbacks
by (from, to, reason). Prometheus and Grafana are the place for long history; this is what a
person needs at a glance without them. With several workers each keeps its own and writes a copy
to the multiprocess directory every few seconds; `snapshot()` adds up every live worker's copy.
"""

from __future__ import annotations

import glob
import math
import os
import time
from collections import deque
from typing import Any

import orjson

from proxy.call import Call

MAX_POINTS = 180  # a snapshot merges buckets so that each series has at most this many points


class Stats:
    def __init__(self, targets: list[str], bucket_seconds: int = 10, keep: int = 2160,
                 share_dir: str | None = None) -> None:
        self.targets = targets
        self.bucket_seconds = bucket_seconds
        self.keep = keep
        # bucket: [start, {target: [requests, errors, tokens, cost]}, fallbacks]
        self.buckets: deque[list[Any]] = deque(maxlen=keep)
        self.locality = {"local": 0, "cloud": 0}
        self.fallbacks: dict[tuple[str, str, str], int] = {}
        self.since = time.time()
        self.share_dir = share_dir
        self.share_file = os.path.join(share_dir, f"stats_{os.getpid()}.json") if share_dir else None

    def record(self, call: Call, locality: str, tokens: int, fallbacks: list[tuple[str, str, str]]) -> None:
        now = time.time()
        start = now - now % self.bucket_seconds
        if not self.buckets or self.buckets[-1][0] != start:
            self.buckets.append([start, {}, 0])
        bucket = self.buckets[-1]
        row = bucket[1].get(call.target or "none")
        if row is None:
            row = bucket[1][call.target or "none"] = [0, 0, 0, 0.0]
        row[0] += 1
        if call.status >= 400:
            row[1] += 1
        row[2] += tokens
        row[3] += call.cost_usd or 0.0
        if locality in self.locality:
            self.locality[locality] += 1
        if fallbacks:
            bucket[2] += len(fallbacks)
            for f in fallbacks:
                self.fallbacks[f] = self.fallbacks.get(f, 0) + 1

    # --- sharing between workers -------------------------------------------------------------------

    def _raw(self) -> dict[str, Any]:
        return {"buckets": list(self.buckets), "locality": self.locality,
                "fallbacks": [[*k, n] for k, n in self.fallbacks.items()], "since": self.since}

    def share(self) -> None:
        """Write this worker's numbers where the other workers read them (atomically)."""
        if not self.share_file:
            return
        tmp = self.share_file + ".tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(self._raw()))
        os.replace(tmp, self.share_file)

    def _all(self) -> list[dict[str, Any]]:
        raws = [self._raw()]
        if self.share_dir:
            for path in glob.glob(os.path.join(self.share_dir, "stats_*.json")):
                if path == self.share_file:
                    continue
                pid = path.rsplit("_", 1)[1].split(".")[0]
                if not _alive(pid):
                    continue
                try:
                    with open(path, "rb") as f:
                        raws.append(orjson.loads(f.read()))
                except (OSError, orjson.JSONDecodeError):
                    continue
        return raws

    # --- the dashboard's view ----------------------------------------------------------------------

    def snapshot(self, minutes: float = 60) -> dict[str, Any]:
        now = time.time()
        buckets = max(1, min(self.keep, int(minutes * 60 // self.bucket_seconds)))
        bs = self.bucket_seconds * math.ceil(buckets / MAX_POINTS)  # each point: one or more buckets
        n = math.ceil(buckets * self.bucket_seconds / bs)
        end = now - now % bs
        first = end - (n - 1) * bs
        times = [first + i * bs for i in range(n)]
        names = list(self.targets)
        series = {k: {t: [0] * n for t in names} for k in ("requests", "errors", "tokens")}
        cost = {t: [0.0] * n for t in names}
        fallbacks_over_time = [0] * n
        locality = {"local": 0, "cloud": 0}
        pairs: dict[tuple[str, str, str], int] = {}
        since = now
        for raw in self._all():
            since = min(since, raw["since"])
            for k, v in raw["locality"].items():
                locality[k] = locality.get(k, 0) + v
            for frm, to, reason, count in raw["fallbacks"]:
                pairs[(frm, to, reason)] = pairs.get((frm, to, reason), 0) + count
            for start, rows, fb in raw["buckets"]:
                i = int((start - first) // bs)
                if not 0 <= i < n:
                    continue
                fallbacks_over_time[i] += fb
                for target, (req, err, tok, usd) in rows.items():
                    if target not in cost:
                        names.append(target)
                        for k in series:
                            series[k][target] = [0] * n
                        cost[target] = [0.0] * n
                    series["requests"][target][i] += req
                    series["errors"][target][i] += err
                    series["tokens"][target][i] += tok
                    cost[target][i] += usd
        return {
            "now": now, "since": since, "bucket_seconds": bs, "times": times, "targets": names,
            "requests": series["requests"], "errors": series["errors"], "tokens": series["tokens"],
            "cost_usd": cost, "fallbacks_over_time": fallbacks_over_time, "locality": locality,
            "fallbacks": [{"from": f, "to": t, "reason": r, "count": c}
                          for (f, t, r), c in sorted(pairs.items(), key=lambda x: -x[1])],
        }


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
