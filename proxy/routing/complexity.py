"""An explainable complexity score for a request, with no model call.

The score (0 = trivial, 1 = hard) starts from a base and moves with features of the last user
message: reasoning words, nuance and contrast, creative or character work, code, constraints,
several steps, length; simple refinements ("Make it brighter"), list patterns ("Generate scenes:
castle, forest"), relationship statements ("Spark's friend is Whiskers") and short commands pull it
down. Every feature that moved the score is reported with its weight and the words that fired it,
so a routing decision can always be explained. Keyword lists (several languages) and weights can be
replaced or extended in proxy.yaml under ``routing.complexity``.

Only the head and tail of a long message are scanned for keywords (length is measured on the
whole), so scoring stays well under a millisecond on long prompts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

KEYWORDS: dict[str, list[str]] = {
    "reasoning": [
        "why", "explain", "analyze", "analyse", "compare", "prove", "derive", "evaluate", "trade-off",
        "tradeoff", "pros and cons", "step by step", "reason about", "justify", "implications", "strategy",
        "architecture", "optimize", "optimise", "debug", "diagnose", "plan", "critique", "assess",
        # de, es, fr, it, pt, zh, ja
        "warum", "erkläre", "erklären", "vergleiche", "analysiere", "begründe", "por qué", "explica",
        "explicar", "compara", "analiza", "pourquoi", "explique", "expliquer", "comparer", "analyser",
        "perché", "spiega", "confronta", "analizza", "explique", "porquê", "为什么", "解释", "分析", "比较",
        "なぜ", "説明", "比較", "理由",
    ],
    "nuance": [
        "feel", "feels", "tone", "mood", "subtle", "nuanced", "nuance", "balance", "atmosphere", "emotional",
        "emotion", "vibe", "bittersweet", "ambiguous", "magical", "whimsical", "playful", "melancholic",
        "sense of", "tension",
    ],
    "contrast": [
        "but", "yet", "though", "although", "however", "while keeping", "without losing", "instead of",
        "on the other hand", "aber", "jedoch", "pero", "sin embargo", "mais", "cependant", "però", "但是", "しかし",
    ],
    "creative": [
        "story", "character", "mentor", "villain", "hero", "heroine", "persona", "personality", "backstory",
        "narrative", "plot", "poem", "haiku", "lyrics", "world-building", "worldbuilding", "lore", "dialogue",
        "screenplay", "essay", "creature",
    ],
    "code": [
        "def", "function", "class", "import", "```", "traceback", "exception", "refactor", "implement",
        "algorithm", "regex", "sql", "query", "compile", "bug", "unit test", "api", "python", "javascript",
        "typescript", "rust", "java", "golang", "c++", "async",
    ],
    "constraint": [
        "must", "should", "at least", "at most", "no more than", "exactly", "avoid", "ensure", "make sure",
        "don't", "do not", "never", "always", "within", "limit", "muss", "debe", "doit",
    ],
    "multistep": ["first", "then", "after that", "afterwards", "finally", "step", "next,", "and then"],
    "refine": [
        "make it", "make them", "make the", "make this", "brighter", "darker", "bigger", "smaller", "louder",
        "quieter", "warmer", "cooler", "shorter", "longer", "sharper", "softer", "increase", "decrease",
        "change the", "set the", "turn it", "hazlo", "mach es", "rends-le",
    ],
    "command": [
        "train", "generate", "list", "show", "rename", "delete", "remove", "add", "resize", "crop", "run",
        "render", "save", "load", "export", "import", "translate", "fix", "undo", "redo", "open", "close",
        "start", "stop", "upscale", "tag", "label",
    ],
}

WEIGHTS: dict[str, float] = {
    "base": 0.25,
    "reasoning": 0.3, "reasoning_more": 0.1, "reasoning_cap": 0.45,
    "nuance": 0.2, "nuance_more": 0.1, "nuance_cap": 0.3,
    "contrast": 0.25,
    "opposing": 0.2,  # "more X ... less Y": a contradictory ask
    "creative": 0.3,
    "code": 0.35,
    "constraint": 0.08, "constraint_cap": 0.3,
    "multistep": 0.12, "multistep_cap": 0.3,
    "questions": 0.1,  # several questions in one message
    "length_medium": 0.1, "length_long": 0.2, "length_document": 0.35,
    "long_conversation": 0.1,
    "refine": -0.3, "list_pattern": -0.3, "relationship": -0.3, "command": -0.2,
}

_RELATION = ("friend", "sister", "brother", "mother", "father", "mom", "dad", "pet", "owner", "partner",
             "rival", "teacher", "mentor", "student", "cousin", "son", "daughter", "wife", "husband",
             "boss", "neighbor", "neighbour", "enemy", "companion", "sidekick", "best friend")
_REL = "|".join(re.escape(r) for r in _RELATION)
RELATIONSHIP = re.compile(
    rf"^\s*[\w\-]+(?:\s[\w\-]+)?(?:'s|’s)\s+(?:{_REL})\s+(?:is|are|was)\s+[\w\-]+(?:\s[\w\-]+){{0,2}}\s*[.!]?\s*$"
    rf"|^\s*[\w\-]+(?:\s[\w\-]+)?\s+(?:is|are)\s+[\w\-]+(?:'s|’s)\s+(?:{_REL})\s*[.!]?\s*$",
    re.IGNORECASE)
LIST_PATTERN = re.compile(r"^\s*[^:\n]{1,40}:\s*[^,\n]{1,40}(?:,\s*[^,\n]{1,40})+\s*[.!]?\s*$")
OPPOSING = re.compile(r"\bmore\b.*\bless\b|\bless\b.*\bmore\b", re.IGNORECASE | re.DOTALL)
_WORD = re.compile(r"\w+")
SCAN_HEAD, SCAN_TAIL = 3000, 1000


@dataclass(frozen=True)
class Score:
    value: float
    reasons: tuple[str, ...]  # "reasoning +0.40 (explain, step by step)", …

    def as_dict(self) -> dict[str, Any]:
        return {"score": self.value, "reasons": list(self.reasons)}


class _Matcher:
    """Finds keyword hits per group: single words by one dict lookup per word of the text,
    phrases and CJK terms by substring search, so the cost grows with the text, not the lists."""

    def __init__(self, keywords: dict[str, list[str]]) -> None:
        self.words: dict[str, list[str]] = {}
        self.phrases: list[tuple[str, str]] = []
        for group, items in keywords.items():
            for w in dict.fromkeys(x.lower() for x in items):
                if _WORD.fullmatch(w) and w.isascii():
                    self.words.setdefault(w, []).append(group)
                else:
                    self.phrases.append((group, w))

    def hits(self, low: str, tokens: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        get = self.words.get
        for t in tokens:
            groups = get(t)
            if groups:
                for g in groups:
                    out.setdefault(g, []).append(t)
        for g, p in self.phrases:
            n = low.count(p)
            if n:
                out.setdefault(g, []).extend([p] * n)
        return out


class ComplexityScorer:
    """Scores text; built once from the defaults merged with proxy.yaml's ``routing.complexity``."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        settings = settings or {}
        keywords = {k: list(v) for k, v in KEYWORDS.items()}
        for k, v in (settings.get("keywords") or {}).items():
            keywords[k] = list(v)  # a configured list replaces the default one
        self.weights = {**WEIGHTS, **(settings.get("weights") or {})}
        if "base" in settings:
            self.weights["base"] = float(settings["base"])
        self.matcher = _Matcher(keywords)
        self.commands = frozenset(w.lower() for w in keywords.get("command", ()))

    def score(self, text: str, conversation_chars: int = 0) -> Score:
        w = self.weights
        value = w["base"]
        reasons: list[str] = []

        def move(name: str, amount: float, hits: list[str] | None = None) -> None:
            nonlocal value
            if amount:
                value += amount
                shown = f" ({', '.join(dict.fromkeys(hits))[:80]})" if hits else ""
                reasons.append(f"{name} {amount:+.2f}{shown}")

        scan = text if len(text) <= SCAN_HEAD + SCAN_TAIL else text[:SCAN_HEAD] + "\n" + text[-SCAN_TAIL:]
        low = scan.lower()
        tokens = _WORD.findall(low)
        hits = self.matcher.hits(low, tokens)
        words = len(tokens) if scan is text else len(text) // 6
        if any(ord(c) > 0x2E80 for c in scan[:200]):  # CJK: no spaces between words, count characters
            words = max(words, len(text) // 2)
        short = words <= 12

        for name in ("reasoning", "nuance"):
            n = len(hits.get(name, ()))
            if n:
                move(name, min(w[name] + w[f"{name}_more"] * (n - 1), w[f"{name}_cap"]), hits[name])
        if hits.get("contrast"):
            move("contrast", w["contrast"], hits["contrast"])
        if OPPOSING.search(low):
            move("opposing asks", w["opposing"], ["more … less"])
        if hits.get("creative"):
            move("creative or character work", w["creative"], hits["creative"])
        if hits.get("code") or "```" in scan:
            move("code", w["code"], hits.get("code") or ["```"])
        if hits.get("constraint"):
            move("constraints", min(w["constraint"] * len(hits["constraint"]), w["constraint_cap"]), hits["constraint"])
        if hits.get("multistep"):
            move("several steps", min(w["multistep"] * len(hits["multistep"]), w["multistep_cap"]), hits["multistep"])
        if scan.count("?") + scan.count("？") >= 2:
            move("several questions", w["questions"])
        if words > 600:
            move("long document", w["length_document"], [f"{words} words"])
        elif words > 150:
            move("long message", w["length_long"], [f"{words} words"])
        elif words > 40:
            move("medium message", w["length_medium"], [f"{words} words"])
        if conversation_chars > 20000:
            move("long conversation", w["long_conversation"])

        first = low.lstrip()
        if short and (any(first.startswith(r) for r in ("make ", "hazlo", "mach es", "rends-le")) or
                      (hits.get("refine") and words <= 6)):
            move("simple refinement", w["refine"], hits.get("refine") or [first.split(" ", 1)[0]])
        if LIST_PATTERN.match(scan):
            move("list pattern", w["list_pattern"])
        if RELATIONSHIP.match(scan):
            move("relationship statement", w["relationship"])
        if words <= 6 and tokens and tokens[0] in self.commands:
            move("short command", w["command"], [tokens[0]])
        return Score(round(min(1.0, max(0.0, value)), 3), tuple(reasons))
