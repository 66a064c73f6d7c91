"""`turnout train routes.jsonl -o router.npz`: learn labels from labelled prompts, report, save.

Reads lines of {"text", "label"} (optional "split": train|test, optional "lang"), trains the
classifier on the train rows (all rows without a split), prints the chosen penalty, each label's
default threshold and the threshold → share table for the label given by --label, and, when
the file holds test rows, the held-out accuracy overall and per language.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from proxy.semantic.classifier import Classifier, read_jsonl
from proxy.semantic.engine import shared


def held_out(clf: Classifier, path: Path, label: str) -> list[str]:
    rows = [json.loads(s) for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    rows = [r for r in rows if r.get("split") == "test"]
    if not rows:
        return []
    p = clf.probabilities(shared().embed([r["text"] for r in rows]))
    c = clf.labels.index(label)
    t = clf.thresholds[label]
    ok = [(p[i, c] >= t) == (r["label"] == label) for i, r in enumerate(rows)]
    groups: dict[str, list[bool]] = defaultdict(list)
    for r, good in zip(rows, ok):
        groups[r.get("lang", "?")].append(good)
        groups["all"].append(good)
        groups["non-English" if r.get("lang", "en") != "en" else "English"].append(good)
    return [f"  {g:12s} {np.mean(v):6.1%}  ({sum(v)}/{len(v)})" for g, v in sorted(groups.items())]


def train_command(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        texts, labels = read_jsonl(path, "train")
        clf = Classifier.train(shared(), texts, labels)
    except (OSError, ValueError) as e:
        print(f"turnout train: {e}")
        return 2
    label = args.label or ("cloud" if "cloud" in clf.labels else clf.labels[-1])
    if label not in clf.labels:
        print(f"turnout train: --label {label!r} is not one of {clf.labels}")
        return 2
    clf.save(args.output)
    counts = {lab: labels.count(lab) for lab in clf.labels}
    print(f"trained on {len(texts)} prompts {counts}; L2 penalty {clf.lam} (5-fold cross-validation)")
    print("default thresholds: " + ", ".join(f"{k} {v:.2f}" for k, v in clf.thresholds.items()))
    print(f"threshold → share sent to '{label}' (cross-validated on the training prompts):")
    for r in clf.share_table(label):
        print(f"  {r['threshold']:.2f}  share {r['share']:6.1%}  precision {r['precision']:6.1%}  "
              f"recall {r['recall']:6.1%}")
    report = held_out(clf, path, label)
    if report:
        print(f"held-out accuracy (label '{label}', threshold {clf.thresholds[label]:.2f}):")
        print("\n".join(report))
    print(f"wrote {args.output}")
    return 0
