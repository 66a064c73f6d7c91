"""Intents given by example utterances: "is this prompt like these?".

An intent is a name, a few example prompts (inline, or a file of one example per line) and a
threshold. A prompt's similarity to the intent is its highest cosine similarity to any example,
so one close example is enough and adding examples only widens the intent. The examples are
embedded once, when the config is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from proxy.semantic.engine import Engine


@dataclass
class Match:
    name: str
    similarity: float
    threshold: float
    closest: list[dict[str, Any]]

    @property
    def holds(self) -> bool:
        return self.similarity >= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {"intent": self.name, "similarity": round(self.similarity, 3), "threshold": self.threshold,
                "holds": self.holds, "closest": self.closest}


class Intent:
    def __init__(self, engine: Engine, name: str, examples: list[str], threshold: float) -> None:
        if not examples:
            raise ValueError(f"intent '{name}' has no examples")
        self.name = name
        self.examples = examples
        self.threshold = threshold
        self.vectors = engine.embed(examples)

    def match(self, vector: np.ndarray, k: int = 3) -> Match:
        sims = self.vectors @ vector
        top = np.argsort(-sims)[:k]
        return Match(self.name, float(sims[top[0]]), self.threshold,
                     [{"text": self.examples[i], "similarity": round(float(sims[i]), 3)} for i in top])


def read_examples(path: str | Path) -> list[str]:
    """One example per line; blank lines and lines starting with # are skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
