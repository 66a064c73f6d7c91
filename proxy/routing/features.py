"""Describe a request for routing: what it contains and who sent it.

Each feature is computed on first use only, so a request whose route needs no heuristics (a
target named directly, a plain chain) pays nothing for them.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Mapping

from proxy.usage import tokens
from proxy.routing.complexity import ComplexityScorer, Score
from proxy.config import Key
from translators.common import content_text, has_images, max_tokens_of

Json = dict[str, Any]


class Features:
    kind = "chat"  # what is asked: "chat", or "embedding" (set by the embeddings endpoint)

    def __init__(self, body: Json, headers: Mapping[str, str], key: Key | None, scorer: ComplexityScorer,
                 open_proxy: bool = False) -> None:
        self.body = body
        self.headers = headers
        self.key = key
        self.scorer = scorer
        self.open_proxy = open_proxy  # no keys configured: tier may come from a header
        self.metadata: Json = body.get("metadata") or {}
        self.embedding: Any = None  # the last user message's vector, set only for routes that route by meaning
        self.semantic: Json = {}  # what each semantic condition found (proxy/routing/semantic.py)

    @cached_property
    def messages(self) -> list[Json]:
        return self.body.get("messages") or []

    @cached_property
    def has_images(self) -> bool:
        return has_images(self.messages)

    @cached_property
    def has_tools(self) -> bool:
        return bool(self.body.get("tools")) and self.body.get("tool_choice") != "none"

    @cached_property
    def turn(self) -> str:
        """first: no assistant turn yet (the planning call); followup: the conversation goes on."""
        return "followup" if any(m.get("role") == "assistant" for m in self.messages) else "first"

    @cached_property
    def last_user_text(self) -> str:
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return content_text(m.get("content"))
        return ""

    @cached_property
    def complexity(self) -> Score:
        chars = sum(len(content_text(m.get("content"))) for m in self.messages)
        return self.scorer.score(self.last_user_text, chars)

    @cached_property
    def prompt_tokens(self) -> int:
        return tokens.count_messages(self.messages, self.body.get("tools"))

    @cached_property
    def prompt_tokens_estimated(self) -> bool:
        """`prompt_tokens` came from samples of a long text (or chars / 4 with no tokenizer)."""
        return tokens.is_estimate(self.messages)

    @cached_property
    def prompt_tokens_at_most(self) -> int:
        """A bound prompt_tokens never exceeds, for free: a prompt that clearly fits a context window
        needs no tokenizer run (and tiktoken's tables need not be loaded at all)."""
        return tokens.count_messages(self.messages, self.body.get("tools"), count=tokens.utf8_length)

    @cached_property
    def max_tokens(self) -> int | None:
        return max_tokens_of(self.body)

    @cached_property
    def logprobs(self) -> bool:
        return self.body.get("logprobs") is True

    @cached_property
    def json_schema(self) -> bool:
        return (self.body.get("response_format") or {}).get("type") == "json_schema"

    def _pick(self, header: str, field: str) -> str | None:
        v = self.headers.get(header) or self.metadata.get(field)
        return str(v) if v else None

    @cached_property
    def task(self) -> str | None:
        return self._pick("x-turnout-task", "task")

    @cached_property
    def requirement(self) -> str | None:
        return self._pick("x-turnout-requirement", "requirement")

    @cached_property
    def tier(self) -> str | None:
        """The key's tier; a client may name its own tier only when the proxy is open (no keys)."""
        if self.key is not None:
            return self.key.tier
        return self.headers.get("x-turnout-tier") if self.open_proxy else None

    def as_dict(self) -> Json:
        return {
            "has_images": self.has_images, "has_tools": self.has_tools, "turn": self.turn,
            "prompt_tokens": self.prompt_tokens, "prompt_tokens_estimated": self.prompt_tokens_estimated,
            "max_tokens": self.max_tokens,
            "complexity": self.complexity.as_dict(), "task": self.task, "tier": self.tier,
            "requirement": self.requirement, **({"semantic": self.semantic} if self.semantic else {}),
        }
