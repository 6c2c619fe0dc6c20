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

import ahocorasick
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

    A pattern runs only where one of the literal strings every match must start with occurs in the
    text: one Aho-Corasick pass finds every occurrence of every prefix, and each pattern is tried
    anchored at its own occurrences instead of searched from every position. Patterns without such
    a prefix are searched in full.
    """

    def __init__(self, rules: tuple[Rule, ...], *, prefilter: bool = True) -> None:
        self.rules = rules
        self._always: set[re.Pattern[str]] = set()
        # Where each pattern is used, as (position in the file, rule index, pattern): patterns are tried
        # in file order, so a rule's hit is its first matching pattern's. Equal patterns are one object.
        self._uses: dict[re.Pattern[str], list[tuple[int, int, re.Pattern[str]]]] = {}
        by_prefix: dict[str, set[re.Pattern[str]]] = {}
        position = 0
        for rule_index, rule in enumerate(rules):
            for pattern in rule.patterns:
                self._uses.setdefault(pattern, []).append((position, rule_index, pattern))
                position += 1
                if len(self._uses[pattern]) > 1:
                    continue
                prefixes = literal_prefixes(pattern.pattern) if prefilter else None
                if prefixes is None:
                    self._always.add(pattern)
                    continue
                for prefix in prefixes:
                    by_prefix.setdefault(prefix, set()).add(pattern)
        self._automaton: ahocorasick.Automaton | None = None
        if by_prefix:
            automaton = ahocorasick.Automaton()
            for prefix, patterns in by_prefix.items():
                automaton.add_word(prefix, (len(prefix) - 1, tuple(patterns)))
            automaton.make_automaton()
            self._automaton = automaton

    def _starts(self, text: str) -> dict[re.Pattern[str], list[int]]:
        """Where each prefixed pattern could match: the start of every occurrence of its prefixes."""
        starts: dict[re.Pattern[str], list[int]] = {}
        if self._automaton is None:
            return starts
        for end, (back, patterns) in self._automaton.iter(text):
            for pattern in patterns:
                starts.setdefault(pattern, []).append(end - back)
        return starts

    def first_hits(self, text: str) -> list[RuleHit]:
        """The first match of each rule that matches ``text`` (a detection text)."""
        starts = self._starts(text)
        uses = sorted(use for pattern in (*self._always, *starts) for use in self._uses[pattern])
        hits: dict[int, RuleHit] = {}
        for _, rule_index, pattern in uses:
            if rule_index in hits:
                continue  # an earlier pattern of the rule matched: one hit per rule
            at = starts.get(pattern)
            match = pattern.search(text) if at is None else _first_match(pattern, text, at)
            if match is not None:
                start, end = match.span()
                hits[rule_index] = RuleHit(self.rules[rule_index], start, end, _is_mention(text, start, end))
        return [hits[index] for index in sorted(hits)]

    def all_spans(self, text: str) -> list[tuple[int, int]]:
        """Every matched span in ``text``, merged where they overlap."""
        active = self._always | self._starts(text).keys()
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


def _first_match(pattern: re.Pattern[str], text: str, starts: list[int]) -> re.Match[str] | None:
    """The leftmost match, as ``pattern.search`` finds it: every match starts at one of ``starts``."""
    for start in sorted(set(starts)):
        match = pattern.match(text, start)  # lookbehinds and \b still see what precedes
        if match is not None:
            return match
    return None


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
