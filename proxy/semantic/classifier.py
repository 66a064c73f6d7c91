"""A trained classifier on top of the embeddings: labelled prompts in, `router.npz` out.

Logistic regression in numpy (Newton's method, L2 penalty chosen by 5-fold cross-validation),
one-vs-rest over any set of labels ("local"/"cloud", or "code"/"story"/"support"...). Each
label's default threshold is the one that classified the cross-validated training prompts best;
the cross-validated probabilities are kept so `turnout train` can print, for every threshold,
the share of prompts that would go to that label: the threshold in a rule is the operator's
share-to-cloud knob. The training prompts and their vectors are kept too, so a decision can
name the closest examples.

`router.npz` holds: engine, labels, weights, bias, thresholds, lam, texts, vectors, y, cv.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from proxy.semantic.engine import Engine

BUILTIN = Path(__file__).parent / "data" / "router.npz"
LAMBDAS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
FOLDS = 5


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _fit(x: np.ndarray, y: np.ndarray, lam: float, steps: int = 25) -> np.ndarray:
    """Weights (bias last) of an L2-penalised logistic regression, by Newton's method."""
    x1 = np.hstack([x, np.ones((len(x), 1), x.dtype)])
    w = np.zeros(x1.shape[1])
    penalty = np.r_[np.full(x.shape[1], lam), 0.0]
    for _ in range(steps):
        p = _sigmoid(x1 @ w)
        grad = x1.T @ (p - y) + penalty * w
        hess = (x1.T * (p * (1 - p))) @ x1 + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w


def _cross_validated(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    fold = np.arange(len(y)) % FOLDS
    p = np.zeros(len(y))
    for k in range(FOLDS):
        w = _fit(x[fold != k], y[fold != k], lam)
        p[fold == k] = _sigmoid(x[fold == k] @ w[:-1] + w[-1])
    return p


def _best_threshold(p: np.ndarray, y: np.ndarray) -> float:
    grid = np.round(np.arange(0.05, 0.96, 0.01), 2)
    acc = [((p >= t) == (y == 1)).mean() for t in grid]
    best = max(acc)
    chosen = [t for t, a in zip(grid, acc) if a == best]
    return float(chosen[len(chosen) // 2])  # the middle of the best plateau


@dataclass
class Decision:
    label: str  # the label asked about
    probability: float
    threshold: float
    holds: bool
    top: str  # the most probable label
    closest: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probability": round(self.probability, 3), "threshold": self.threshold,
                "holds": self.holds, "top": self.top, "closest": self.closest}


class Classifier:
    def __init__(self, data: dict[str, np.ndarray]) -> None:
        self.engine_id = str(data["engine"])
        self.labels = [str(x) for x in data["labels"]]
        self.weights = data["weights"].astype(np.float32)  # labels × dim (one row when there are two labels)
        self.bias = data["bias"].astype(np.float32)
        self.thresholds = {lab: float(t) for lab, t in zip(self.labels, data["thresholds"])}
        self.texts = [str(x) for x in data["texts"]]
        self.vectors = data["vectors"].astype(np.float32)
        self.y = data["y"]
        self.cv = data["cv"]  # cross-validated probability of each label, per training prompt
        self.lam = float(data["lam"])
        self.data = data

    # --- training and files ------------------------------------------------------------------------

    @classmethod
    def train(cls, engine: Engine, texts: list[str], labels: list[str]) -> "Classifier":
        names = sorted(set(labels))
        if len(names) < 2:
            raise ValueError(f"need at least two labels, got {names}")
        x = engine.embed(texts).astype(np.float64)
        y = np.array([names.index(lab) for lab in labels])
        columns = [1] if len(names) == 2 else list(range(len(names)))  # two labels: one model for the second
        scores = {lam: np.mean([((_cross_validated(x, (y == c).astype(float), lam) >= 0.5) == (y == c)).mean()
                                for c in columns]) for lam in LAMBDAS}
        lam = max(LAMBDAS, key=lambda v: (scores[v], v))  # ties go to the stronger penalty
        ws = [_fit(x, (y == c).astype(float), lam) for c in columns]
        cv = np.stack([_cross_validated(x, (y == c).astype(float), lam) for c in columns], 1)
        if len(names) == 2:
            cv = np.hstack([1 - cv, cv])
        thresholds = [_best_threshold(cv[:, c], (y == c).astype(float)) for c in range(len(names))]
        return cls({"engine": np.array(engine.id), "labels": np.array(names),
                    "weights": np.stack([w[:-1] for w in ws]), "bias": np.array([w[-1] for w in ws]),
                    "thresholds": np.array(thresholds), "lam": np.array(lam), "texts": np.array(texts),
                    "vectors": x.astype(np.float16), "y": y, "cv": cv.astype(np.float32)})

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as fh:  # savez_compressed would append .npz to a name without it
            np.savez_compressed(fh, **self.data)

    @classmethod
    def load(cls, path: str | Path) -> "Classifier":
        with np.load(path, allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files})

    # --- use ---------------------------------------------------------------------------------------

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """rows × labels."""
        p = _sigmoid(vectors @ self.weights.T + self.bias)
        if len(self.labels) == 2:
            return np.hstack([1 - p, p])
        return p / np.maximum(p.sum(1, keepdims=True), 1e-9)

    def closest(self, vector: np.ndarray, k: int = 3) -> list[dict[str, Any]]:
        sims = self.vectors @ vector
        top = np.argsort(-sims)[:k]
        return [{"text": self.texts[i], "label": self.labels[int(self.y[i])], "similarity": round(float(sims[i]), 3)}
                for i in top]

    def decide(self, vector: np.ndarray, label: str, threshold: float | None = None) -> Decision:
        p = self.probabilities(vector[None, :])[0]
        t = self.thresholds[label] if threshold is None else threshold
        prob = float(p[self.labels.index(label)])
        return Decision(label, prob, t, prob >= t, self.labels[int(p.argmax())], self.closest(vector))

    def share_table(self, label: str, thresholds: Iterable[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
                    ) -> list[dict[str, float]]:
        """Per threshold, on the cross-validated training prompts: the share sent to `label`, and how
        many of those really were `label` (precision) and how many of `label` were caught (recall)."""
        c = self.labels.index(label)
        truth = self.y == c
        rows = []
        for t in thresholds:
            sent = self.cv[:, c] >= t
            rows.append({"threshold": t, "share": float(sent.mean()),
                         "precision": float((sent & truth).sum() / max(sent.sum(), 1)),
                         "recall": float((sent & truth).sum() / max(truth.sum(), 1))})
        return rows


def read_jsonl(path: str | Path, split: str | None = None) -> tuple[list[str], list[str]]:
    """(texts, labels) from lines of {"text": ..., "label": ...} (optionally only one `split`)."""
    texts, labels = [], []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(row.get("label"), str):
            raise ValueError(f"{path}:{n}: expected {{\"text\": \"...\", \"label\": \"...\"}}")
        if split is None or row.get("split", "train") == split:
            texts.append(row["text"])
            labels.append(row["label"])
    return texts, labels
