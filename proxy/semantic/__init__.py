"""Routing by meaning, on a model that ships with the package (`pip install 'turnout[semantic]'`).

Owns the local embedding engine (engine.py: static token embeddings distilled from
all-MiniLM-L6-v2, run in-process on CPU, nothing downloaded), intents given by example
utterances (intents.py), the trained classifier behind `turnout train` and the shipped
`auto-semantic` route (classifier.py, data/router.npz), and the labelled prompts it was trained
on (data/routes.jsonl). Routing asks for these only when a rule has a semantic condition
(proxy/routing/semantic.py); docs/semantic.md has the measurements behind the choices.

Needs numpy and tokenizers; importing this package without them raises ImportError, which the
config loader turns into a message naming the extra.
"""

from proxy.semantic.classifier import BUILTIN, Classifier, Decision, read_jsonl
from proxy.semantic.engine import Engine, shared
from proxy.semantic.intents import Intent, Match, read_examples

__all__ = ["BUILTIN", "Classifier", "Decision", "Engine", "Intent", "Match", "read_examples", "read_jsonl", "shared"]
