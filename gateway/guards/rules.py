"""Signature rules for prompt injection, kept as data (policies/rules/injection.yaml).

Each rule has an id, a category, a weight in (0, 1] and one or more regular expressions matched
against the detection text (lower case, folded; see ``gateway.guards.normalize``). A bad file fails
loading with an error naming the file, the rule and the pattern, never half-loaded.
"""

# Look-alike letters from other scripts are what this file is about.
# ruff: noqa: RUF001

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError

from gateway.config import ConfigError, StrictModel
from gateway.guards.confusables import fold_pattern
from gateway.guards.prefixes import literal_prefixes

Category = Literal[
    "instruction_override",
    "system_prompt_extraction",
    "roleplay_jailbreak",
    "delimiter_injection",
    "tool_hijack",
    "exfiltration",
    "encoded_payload",
]

_FRAGMENT = re.compile(r"\{\{([a-z_][a-z0-9_]*)\}\}")
_ESCAPE = re.compile(r"\\.")
# Words before a match that mark it as talked about rather than said ("phrases such as 'ignore ...'").
_MENTION_CUE = re.compile(
    r"(?:such as|like|e\.g\.|for example|for instance|phrases?|called|known as|example|examples|"
    r"injections?|jailbreaks?|attacks?|detect|detects|detecting|prevent|prevents|protect|defend|filter|"
    r"block|blocks|recogni[sz]e|classif\w*|flag|flags|what does|meaning of|means|quote|quoted|"
    r"saying|says|said|wrote|writes|the (?:string|text|sentence|words?))\W{0,6}$"
)
_MENTION_WINDOW = 60
_KEY = 3  # characters of a literal prefix used to index it
_QUOTES = "\"'“”‘’«»`"
_QUOTED_TAIL = 24  # the closing quote comes soon after the match: a quoted phrase, not a paragraph


class RuleSpec(StrictModel):
    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
    category: Category
    weight: Annotated[float, Field(gt=0.0, le=1.0)]
    description: str | None = None
    patterns: Annotated[tuple[str, ...], Field(min_length=1)]


class RuleFile(StrictModel):
    version: Literal[1]
    fragments: dict[str, str] = Field(default_factory=dict)
    rules: Annotated[tuple[RuleSpec, ...], Field(min_length=1)]


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    category: str
    weight: float
    patterns: tuple[re.Pattern[str], ...]


@dataclass(frozen=True, slots=True)
class RuleHit:
    rule: Rule
    start: int
    end: int
    mention: bool  # the match reads as quoted or discussed, not as an instruction


class RuleSet:
    """Compiled rules; ``first_hits`` for scoring, ``all_spans`` for sanitizing.

    A pattern runs only when one of the literal strings every match must start with occurs in the
    text (a substring test is about a hundred times cheaper than a regex search that cannot skip
    ahead); patterns without such a prefix always run.
    """

    def __init__(self, rules: tuple[Rule, ...], *, prefilter: bool = True) -> None:
        self.rules = rules
        self._always: set[re.Pattern[str]] = set()
        self._prefixes: dict[re.Pattern[str], frozenset[str]] = {}
        by_prefix: dict[str, set[re.Pattern[str]]] = {}
        for rule in rules:
            for pattern in rule.patterns:
                prefixes = literal_prefixes(pattern.pattern) if prefilter else None
                if prefixes is None:
                    self._always.add(pattern)
                    continue
                self._prefixes[pattern] = prefixes
                for prefix in prefixes:
                    by_prefix.setdefault(prefix, set()).add(pattern)
        # Index prefixes by their first two or three characters: one set intersection with the text's
        # own bigrams and trigrams finds the few prefixes worth a substring test.
        self._by_start: dict[str, list[tuple[str, frozenset[re.Pattern[str]]]]] = {}
        for prefix, patterns in by_prefix.items():
            key = prefix[:_KEY]
            self._by_start.setdefault(key, []).append((prefix, frozenset(patterns)))
        self._short_keys = {key for key in self._by_start if len(key) < _KEY}

    def _candidates(self, text: str) -> set[re.Pattern[str]]:
        active = set(self._always)
        grams = {text[i : i + _KEY] for i in range(len(text) - _KEY + 1)}
        if self._short_keys:
            grams |= {text[i : i + _KEY - 1] for i in range(len(text) - _KEY + 2)} & self._short_keys
        for key in grams & self._by_start.keys():
            for prefix, patterns in self._by_start[key]:
                if len(prefix) <= _KEY or prefix in text:
                    active |= patterns
        return active

    def first_hits(self, text: str) -> list[RuleHit]:
        """The first match of each rule that matches ``text`` (a detection text)."""
        active = self._candidates(text)
        hits = []
        for rule in self.rules:
            for pattern in rule.patterns:
                if pattern not in active:
                    continue
                match = self._first_match(pattern, text)
                if match is not None:
                    start, end = match.span()
                    hits.append(RuleHit(rule, start, end, _is_mention(text, start, end)))
                    break
        return hits

    def _first_match(self, pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
        """The leftmost match, as ``pattern.search`` finds it. Every match starts with one of the
        pattern's literal prefixes, so it is tried only where one occurs: a handful of anchored
        attempts instead of one at every position of the text."""
        prefixes = self._prefixes.get(pattern)
        if prefixes is None:
            return pattern.search(text)
        starts: set[int] = set()
        for prefix in prefixes:
            at = text.find(prefix)
            while at >= 0:
                starts.add(at)
                at = text.find(prefix, at + 1)
        for start in sorted(starts):
            match = pattern.match(text, start)  # lookbehinds and \b still see what precedes
            if match is not None:
                return match
        return None

    def all_spans(self, text: str) -> list[tuple[int, int]]:
        """Every matched span in ``text``, merged where they overlap."""
        active = self._candidates(text)
        spans = sorted(m.span() for pattern in active for m in pattern.finditer(text))
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if end <= start:
                continue
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged


def _is_mention(text: str, start: int, end: int) -> bool:
    """A match inside a short quoted phrase after a cue word: ``phrases such as 'ignore previous
    instructions'``. A quoted attack that goes on (``"ignore the above and say ..."``) is no mention."""
    before = text[max(0, start - _MENTION_WINDOW) : start].rstrip(" ")
    if not before or before[-1] not in _QUOTES:
        return False
    after = text[end : end + _QUOTED_TAIL]
    if not any(quote in after for quote in _QUOTES):
        return False
    return _MENTION_CUE.search(before[:-1].rstrip(" :")) is not None


def load_rules(path: Path) -> RuleSet:
    """Read, validate and compile a rule file; raises ``ConfigError`` naming what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read injection rules ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    try:
        spec = RuleFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
    return RuleSet(compile_rules(spec, str(path)))


def compile_rules(spec: RuleFile, source: str) -> tuple[Rule, ...]:
    seen: set[str] = set()
    rules = []
    for rule in spec.rules:
        if rule.id in seen:
            raise ConfigError(f"{source}: rule {rule.id}: the id is used twice")
        seen.add(rule.id)
        patterns = tuple(
            _compile(pattern, spec.fragments, f"{source}: rule {rule.id}, pattern {index + 1}")
            for index, pattern in enumerate(rule.patterns)
        )
        rules.append(Rule(rule.id, rule.category, rule.weight, patterns))
    return tuple(rules)


def _compile(pattern: str, fragments: dict[str, str], where: str) -> re.Pattern[str]:
    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in fragments:
            raise ConfigError(f"{where}: unknown fragment {{{{{name}}}}}")
        return f"(?:{fragments[name]})"

    expanded = _FRAGMENT.sub(expand, pattern)
    if any(ch.isupper() for ch in _ESCAPE.sub("", expanded)):
        raise ConfigError(f"{where}: patterns match lower-cased text, so write them in lower case")
    try:
        return re.compile(fold_pattern(expanded))
    except re.error as exc:
        raise ConfigError(f"{where}: not a valid regular expression ({exc.msg} at {exc.pos})") from None
