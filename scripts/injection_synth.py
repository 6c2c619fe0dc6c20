"""Synthetic training rows for the injection classifier, generated from templates (no network).

Attacks in eleven languages (override, system-prompt extraction, role-play jailbreak, covert tool
use, markdown exfiltration, delimiter and encoded payloads), obfuscated now and then (zero-width
characters, look-alike letters, base64, hex, letter spacing, Unicode tags, full-width, leetspeak)
and placed in the containers real injections hide in: emails, documents, HTML comments, code
comments, tool output, earlier turns, tables and long texts with the attack at the end. Benign rows
use the same containers and texts that mention instructions, systems, role-play and encodings.

``split="train"`` and ``split="heldout"`` use disjoint halves of every template list, so a model
trained on one half can be checked on phrasings and containers it never saw.
"""

# Look-alike letters from other scripts are what this file is about.
# ruff: noqa: RUF001

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from scripts import injection_phrases as P

T = TypeVar("T")
LONG_CHARS = 2600


@dataclass(frozen=True)
class SynthRow:
    text: str
    label: int
    kind: str
    lang: str
    group: str  # the template the row was built from: rows of one group are near-duplicates


class _Picker:
    def __init__(self, rng: random.Random, split: str | None) -> None:
        self.rng = rng
        self.split = split

    def __call__(self, items: Sequence[T]) -> T:
        if self.split is None or len(items) < 2:
            return self.rng.choice(items)
        half = items[0::2] if self.split == "train" else items[1::2]
        return self.rng.choice(half)


BENIGN_COMMAND_SHARE = 20  # one short benign command per this many other benign rows


def generate(seed: int, n_attack: int, n_benign: int, split: str | None = None) -> list[SynthRow]:
    """``n_attack`` attacks and ``n_benign`` benign rows, the same for the same arguments."""
    rng = random.Random(seed)  # noqa: S311 - reproducible training data, not secrets
    pick = _Picker(rng, split)
    rows = [_attack(rng, pick) for _ in range(n_attack)] + [_benign(rng, pick) for _ in range(n_benign)]
    # Drawn from a generator of their own, so that adding them left every other row as it was.
    commands = random.Random(seed + 1)  # noqa: S311 - reproducible training data, not secrets
    command_pick = _Picker(commands, split)
    rows += [_benign_command(commands, command_pick) for _ in range(n_benign // BENIGN_COMMAND_SHARE)]
    rng.shuffle(rows)
    return rows


def _benign_command(rng: random.Random, pick: _Picker) -> SynthRow:
    """A short harmless "say / print / reply with" request: the shape of many attacks' last line."""
    verb = pick(P.BENIGN_COMMAND_VERBS)
    text = f"{verb} {pick(P.BENIGN_COMMAND_OBJECTS)}{rng.choice(['.', '', '!'])}"
    return SynthRow(text, 0, "benign/command", "en", f"command:{verb}")


# --------------------------------------------------------------------------------------- attacks
def _attack_core(rng: random.Random, pick: _Picker, lang: str) -> tuple[str, str, str]:
    """(text, family, template)."""
    family = rng.choices(
        ["override", "extract", "persona", "covert", "exfil", "delimiter"], weights=[5, 3, 3, 2, 1, 2]
    )[0]
    if family == "override":
        template = pick(P.OVERRIDE[lang])
        return template.format(goal=pick(P.GOALS[lang])), family, template
    if family in ("extract", "persona"):
        template = pick(P.EXTRACT[lang] if family == "extract" else P.PERSONA[lang])
        return template, family, template
    if family == "covert":
        template = pick(P.COVERT[lang])
        text = template.format(email=pick(P.EMAILS), url=pick(P.URLS), account="DE89 3704 0044")
        return text, family, template
    if family == "exfil":
        template = pick(P.EXFIL)
        return template.format(url=pick(P.URLS), host="attacker.example"), family, template
    template = pick(P.DELIMITER)
    inner = pick(P.OVERRIDE[lang]).format(goal=pick(P.GOALS[lang]))
    return template.format(core=inner), family, template


def _attack(rng: random.Random, pick: _Picker) -> SynthRow:
    lang = rng.choice(P.LANGS) if rng.random() < 0.6 else "en"
    core, family, template = _attack_core(rng, pick, lang)
    obfuscation = rng.choices(list(_OBFUSCATIONS), weights=[10, 1, 1, 1, 1, 1, 1, 1, 1])[0]
    core = _OBFUSCATIONS[obfuscation](rng, pick, core)
    container = pick(list(_CONTAINERS))
    text = _CONTAINERS[container](rng, pick, core, lang)
    return SynthRow(text, 1, f"{family}/{obfuscation}/{container}", lang, template)


def _zero_width(rng: random.Random, pick: _Picker, text: str) -> str:
    marks = ["\u200b", "\u200c", "\u2060", "\ufeff", "\u00ad"]
    return "".join(ch + (rng.choice(marks) if ch.isalpha() and rng.random() < 0.3 else "") for ch in text)


def _homoglyph(rng: random.Random, pick: _Picker, text: str) -> str:
    table = {"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "i": "і", "s": "ѕ", "x": "х", "y": "у"}
    return "".join(table[ch] if ch in table and rng.random() < 0.5 else ch for ch in text)


def _b64(rng: random.Random, pick: _Picker, text: str) -> str:
    payload = base64.b64encode(text.encode()).decode()
    return pick(P.ENCODED_INTRO).format(payload=payload)


def _hex(rng: random.Random, pick: _Picker, text: str) -> str:
    return f"Hex message for you: {text.encode().hex()}"


def _spaced(rng: random.Random, pick: _Picker, text: str) -> str:
    return "  ".join(" ".join(word) for word in text.split()[:12])


def _tags(rng: random.Random, pick: _Picker, text: str) -> str:
    hidden = "".join(chr(0xE0000 + ord(ch)) for ch in text if 0x20 <= ord(ch) < 0x7F)
    return pick(P.BENIGN_PLAIN["en"]) + hidden if hidden else text


def _fullwidth(rng: random.Random, pick: _Picker, text: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in text)


def _leet(rng: random.Random, pick: _Picker, text: str) -> str:
    table = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
    return "".join(table.get(ch, ch) if rng.random() < 0.6 else ch for ch in text)


_OBFUSCATIONS: dict[str, Callable[[random.Random, _Picker, str], str]] = {
    "none": lambda rng, pick, text: text,
    "zero_width": _zero_width,
    "homoglyph": _homoglyph,
    "base64": _b64,
    "hex": _hex,
    "spaced": _spaced,
    "tags": _tags,
    "fullwidth": _fullwidth,
    "leet": _leet,
}


# ------------------------------------------------------------------------------------ containers
def _paragraphs(rng: random.Random, count: int) -> str:
    return "\n\n".join(rng.choice(P.PARAGRAPHS) for _ in range(count))


def _plain(rng: random.Random, pick: _Picker, core: str, lang: str) -> str:
    if rng.random() < 0.4:
        return f"{pick(P.BENIGN_PLAIN[lang])} {core}"
    return core


def _email(rng: random.Random, pick: _Picker, core: str, lang: str) -> str:
    sender = pick(P.NAMES)
    return (
        f"From: {sender} <{sender.split()[0].lower()}@example.com>\n"
        f"Subject: {pick(['Invoice', 'Re: meeting'])}\n\n"
        f"Hi,\n\n{_paragraphs(rng, 1)}\n\n{core}\n\nBest regards,\n{sender}"
    )


def _document(rng: random.Random, pick: _Picker, core: str, lang: str) -> str:
    style = pick(["plain", "comment", "hidden", "footnote"])
    wrapped = {
        "plain": core,
        "comment": f"<!-- {core} -->",
        "hidden": f'<div style="display:none">{core}</div>',
        "footnote": f"[1] {core}",
    }[style]
    return f"{_paragraphs(rng, rng.randint(1, 3))}\n\n{wrapped}\n\n{_paragraphs(rng, rng.randint(0, 2))}"


def _code(rng: random.Random, pick: _Picker, core: str, lang: str) -> str:
    comment = core.replace("\n", " ")
    return pick(
        [
            f"```python\ndef total(items):\n    # {comment}\n    return sum(i.price for i in items)\n```",
            f"function parse(input) {{\n  /* {comment} */\n  return JSON.parse(input);\n}}",
            f"# config.yaml\nretries: 3\n# {comment}\ntimeout_s: 30",
        ]
    )


def _tool(rng: random.Random, pick: _Picker, core: str, lang: str) -> str:
    result = {
        "results": [
            {"title": "Company profile", "snippet": rng.choice(P.PARAGRAPHS)},
            {"title": "Reviews", "snippet": core},
        ]
    }
    return pick(
        [json.dumps(result, ensure_ascii=False), f"Tool output (web_fetch):\n{_paragraphs(rng, 1)}\n{core}"]
    )


def _transcript(rng: random.Random, pick: _Picker, core: str, lang: str) -> str:
    return (
        f"User: {pick(P.BENIGN_PLAIN['en'])}\nAssistant: Sure, here is what I found.\n"
        f"User: {core}\nAssistant:"
    )


def _table(rng: random.Random, pick: _Picker, core: str, lang: str) -> str:
    name = pick(P.NAMES)
    return f'name,role,notes\n{name},engineer,"{core}"\nBob Stone,designer,"On leave in May"'


def _long(rng: random.Random, pick: _Picker, core: str, lang: str) -> str:
    body = ""
    while len(body) < LONG_CHARS:
        body += rng.choice(P.PARAGRAPHS) + "\n\n"
    return body + core


_CONTAINERS: dict[str, Callable[[random.Random, _Picker, str, str], str]] = {
    "plain": _plain,
    "email": _email,
    "document": _document,
    "code": _code,
    "tool": _tool,
    "transcript": _transcript,
    "table": _table,
    "long": _long,
    "plain2": _plain,
}


# ---------------------------------------------------------------------------------------- benign
def _benign(rng: random.Random, pick: _Picker) -> SynthRow:
    lang = rng.choice(P.LANGS) if rng.random() < 0.5 else "en"
    kind = rng.choices(
        ["plain", "system", "container", "markup", "noise", "role", "task", "instructions"],
        weights=[6, 1, 4, 1, 2, 3, 3, 4],
    )[0]
    if kind == "instructions":
        template = pick(P.BENIGN_INSTRUCTIONS[lang])
        text = template.format(obj=pick(P.BENIGN_OBJECTS[lang]))
        if rng.random() < 0.3:
            container = pick(list(_CONTAINERS))
            text = _CONTAINERS[container](rng, pick, text, lang)
        return SynthRow(text, 0, "benign/instructions", lang, template)
    if kind == "role":
        lang = lang if lang in P.ROLE_REQUESTS else "en"
        template = pick(P.ROLE_REQUESTS[lang])
        fill = {key: pick(values) for key, values in P.ROLE_FILL.items()}
        text = template.format(role=pick(P.ROLES), task_cap=fill["task"].capitalize(), **fill)
        return SynthRow(text, 0, "benign/role", lang, template)
    if kind == "task":
        template = pick(P.TASKS)
        text = template.format(item=rng.choice(P.PARAGRAPHS))
        return SynthRow(text, 0, "benign/task", "en", template)
    if kind == "plain":
        text = pick(P.BENIGN_PLAIN[lang])
    elif kind == "system":
        text = pick(P.SYSTEM_PROMPTS)
    elif kind == "container":
        content = pick(P.BENIGN_PLAIN[lang]) if rng.random() < 0.5 else rng.choice(P.PARAGRAPHS)
        container = pick(list(_CONTAINERS))
        text = _CONTAINERS[container](rng, pick, content, lang)
        return SynthRow(text, 0, f"benign/container/{container}", lang, content)
    elif kind == "markup":
        text = pick(
            [
                "## Install\n\n![build](https://img.shields.io/badge/build-passing-green?style=flat)\n\n"
                "Run `pip install tool`.",
                "See the diagram: ![architecture](https://docs.example.com/img/arch.png)\n\n"
                "The gateway sits in front of the workers.",
                '<img src="https://cdn.example.com/logo.png?v=3" alt="logo"> Welcome to our newsletter!',
                "Search link: https://www.example.com/search?q=how%20to%20cook%20rice%20fast",
            ]
        )
    else:
        text = pick(
            [
                "Our family 👨\u200d👩\u200d👧 loved the trip! "
                "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
                "The particle size is 5 μm and the α-helix is stable at 37 °C.",
                "שלום\u200f, this is a mixed right-to-left note\u200e from Tel Aviv.",
                "commit 3f2a9c1e7b0d4a5f8e6c2b1a9d8e7f6a5b4c3d2e\nAuthor: Jonas Weber",
                "Here is the image as base64: "
                "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
                "co\u00adoper\u00adation and re\u00adsearch are key to pro\u00adgress.",
                "Привет! Как дела? Давай встретимся завтра в кафе.",
                "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            ]
        )
    return SynthRow(text, 0, f"benign/{kind}", lang, text)
