"""What a model target serves: chat or embeddings.

A target says it with ``kind: embedding`` in the config; otherwise it is inferred from the model's
name, since embedding models are named for it (text-embedding-3-small, gemini-embedding-001,
nomic-embed-text, mxbai-embed-large, bge-m3, all-minilm, snowflake-arctic-embed, e5-…, gte-…).
The router skips targets of the other kind, so a chat route never lands on an embedding model
and ``/v1/embeddings`` never on a chat model.
"""

from __future__ import annotations

import re
from typing import Any

KINDS = ("chat", "embedding")
_EMBEDDING_NAME = re.compile(r"embed|(^|[/:_-])(bge|e5|gte|all-minilm|minilm|paraphrase-)", re.IGNORECASE)


def infer(model: str) -> str:
    return "embedding" if _EMBEDDING_NAME.search(model) else "chat"


def kind_of(target: Any) -> str:
    """The target's declared kind, else the one its model name suggests."""
    declared = getattr(target, "kind", None)
    return declared if declared in KINDS else infer(target.model)
