"""Semantic rule conditions (`intent`, `classifier`), evaluated with the local embedding engine.

Only routes with a semantic condition touch the engine: they are found when the router is built,
their engine, intents (examples embedded once) and classifiers are loaded then, and for a request
the last user message is embedded once, off the event loop (`prepare`), before the rules are
tried. A request to any other route never imports numpy. What each condition found (nearest
intent or the classifier's probability, the closest examples and their similarity) is kept on
the request's features for `turnout route` and `/turnout/route`.

The engine is an extra (`pip install 'turnout[semantic]'`): without it a config with semantic
conditions still loads, and a request to such a route gets a 503 naming the extra.
"""

from __future__ import annotations

import importlib
from typing import Any

from proxy.config import ClassifierCondition, Conditions, Config
from proxy.errors import ProxyError
from proxy.routing.features import Features


def _import_engine() -> tuple[Any, str]:
    """`proxy.semantic` (numpy, tokenizers: ~55 MB of RSS and a second of start-up) and why not, imported
    only when a config has semantic routes: a gateway without them never loads it."""
    try:
        return importlib.import_module("proxy.semantic"), ""
    except ImportError as e:  # the extra is not installed
        return None, str(e)


class SemanticUnavailable(ProxyError):
    status = 503
    type = "service_unavailable"
    code = "semantic_extra_missing"


class Semantic:
    def __init__(self, cfg: Config) -> None:
        self.routes = {name for name, r in cfg.routes.items() if any(rule.when.semantic for rule in r.rules)}
        self.intents: dict[int, Any] = {}  # by id() of the condition: the config lives as long as the router
        self.classifiers: dict[str, Any] = {}
        self.engine: Any = None
        self.sem, self.missing = _import_engine() if self.routes else (None, "")
        sem = self.sem
        if self.routes and sem is not None:
            self.engine = sem.shared()
            for name in sorted(self.routes):
                for i, rule in enumerate(cfg.routes[name].rules):
                    self._load(rule.when, f"routes.{name}.rules[{i}].when")

    def _load(self, c: Conditions, where: str) -> None:
        sem = self.sem
        if c.intent is not None and id(c.intent) not in self.intents:
            self.intents[id(c.intent)] = sem.Intent(self.engine, c.intent.name, list(c.intent.examples),
                                                c.intent.threshold)
        if c.classifier is not None and c.classifier.model not in self.classifiers:
            clf = sem.Classifier.load(sem.BUILTIN if c.classifier.model == "builtin" else c.classifier.model)
            if clf.engine_id != self.engine.id:
                raise ValueError(f"{where}.classifier: {c.classifier.model} was trained on engine "
                                 f"{clf.engine_id}, this one is {self.engine.id}: train it again")
            self.classifiers[c.classifier.model] = clf
        if c.classifier is not None and c.classifier.label not in self.classifiers[c.classifier.model].labels:
            raise ValueError(f"{where}.classifier.label: {c.classifier.label!r} is not one of "
                             f"{self.classifiers[c.classifier.model].labels}")

    def _require(self, route: str) -> None:
        if self.sem is None:
            raise SemanticUnavailable(f"Route '{route}' routes by meaning and needs the semantic extra: "
                                      f"pip install 'turnout[semantic]' ({self.missing}).", param="model")

    async def prepare(self, route: str | None, f: Features) -> None:
        """Embed the prompt in the engine's thread if this route will need it."""
        if route in self.routes:
            self._require(route)
            if f.embedding is None:
                f.embedding = (await self.engine.aembed([f.last_user_text]))[0]

    def holds(self, route: str, c: Conditions, f: Features) -> bool:
        """The rule's semantic conditions hold (each result is recorded on `f.semantic`)."""
        self._require(route)
        if f.embedding is None:  # not prepared (the CLI's dry run): embed here
            f.embedding = self.engine.embed_one(f.last_user_text)
        if c.intent is not None:
            m = self.intents[id(c.intent)].match(f.embedding)
            f.semantic[f"intent:{c.intent.name}"] = m.as_dict()
            if not m.holds:
                return False
        if c.classifier is not None:
            spec: ClassifierCondition = c.classifier
            d = self.classifiers[spec.model].decide(f.embedding, spec.label, spec.threshold)
            f.semantic[f"classifier:{spec.model}:{spec.label}"] = d.as_dict()
            if not d.holds:
                return False
        return True
