"""Recognizers for credentials an answer must never carry: private keys, cloud and SaaS tokens,
JWTs, and generic high-entropy API keys.

Provider tokens are matched on their documented prefixes and alphabets. The generic recognizer
takes a 32 to 200 character token of base64 or base64url characters that mixes upper case, lower
case and digits with high entropy, or a shorter or hex-only one right after a word such as
"api_key" or "secret". Hex digests (git commits, SHA-256 sums) and UUIDs need that cue, so code
answers keep them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

import regex

from gateway.guards.checks import Cues, shannon_entropy, wordlike_share
from gateway.guards.recognizers import FLAGS, SpanRecognizer

_B64_LINE = r"[A-Za-z0-9+/=]{1,128}"
_HEADER_LINE = r"[A-Za-z-]{1,24}:[^\r\n]{0,160}"
_KEY_LINES = 160  # an 8192-bit RSA key in PEM has about 100 lines


class PrivateKeyRecognizer(SpanRecognizer):
    """A PEM, OpenSSH or PGP private key block: header, body lines, footer (or as much as exists)."""

    ENTITY = "PRIVATE_KEY"
    PATTERN = regex.compile(
        r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----"
        rf"(?:\r?\n(?:{_B64_LINE}|{_HEADER_LINE})?(?![^\r\n])){{0,{_KEY_LINES}}}"
        r"(?:\r?\n-----END[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----)?",
        regex.VERSION1,
    )
    STARTS = re.compile(r"(?=-----BEGIN)")
    MAX_LEN = 75 + _KEY_LINES * (2 + 24 + 1 + 160) + 77  # header, lines (a header line is longest), footer
    RIGHT = 80  # the optional footer: a block is open until its footer could no longer follow

    def judge(self, text: str, match: regex.Match[str]) -> tuple[int, int, float] | None:
        return match.start(), match.end(), 1.0


class AwsAccessKeyRecognizer(SpanRecognizer):
    ENTITY = "AWS_ACCESS_KEY"
    PATTERN = regex.compile(
        r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z2-7]{16}(?![A-Za-z0-9])",
        regex.VERSION1,
    )
    STARTS = re.compile(r"(?=A[A-Z0-9]{3})")
    MAX_LEN = 20

    def judge(self, text: str, match: regex.Match[str]) -> tuple[int, int, float] | None:
        return match.start(), match.end(), 0.95


class JwtRecognizer(SpanRecognizer):
    """Signed or unsigned JWTs (header.payload.signature) whose header decodes to JSON."""

    ENTITY = "JWT"
    PATTERN = regex.compile(
        r"(?<![\w-])eyJ[\w-]{8,2048}\.eyJ[\w-]{8,8192}\.[\w-]{0,2048}(?![\w-])|"
        r"(?<![\w-])eyJ[\w-]{8,2048}\.[\w-]{8,8192}\.[\w-]{16,2048}(?![\w-])",
        regex.VERSION1,
    )
    STARTS = re.compile(r"(?=eyJ)")
    MAX_LEN = 3 + 2048 + 1 + 3 + 8192 + 1 + 2048

    def judge(self, text: str, match: regex.Match[str]) -> tuple[int, int, float] | None:
        header = match.group().split(".", 1)[0]
        try:
            decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
        except (binascii.Error, ValueError):
            return match.start(), match.end(), 0.6
        return match.start(), match.end(), 0.95 if isinstance(decoded, dict) else 0.6


class GitHubTokenRecognizer(SpanRecognizer):
    ENTITY = "GITHUB_TOKEN"
    PATTERN = regex.compile(
        r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})(?![\w])",
        regex.VERSION1,
    )
    STARTS = re.compile(r"(?=gh[pousr]_|github_pat_)")
    MAX_LEN = 255

    def judge(self, text: str, match: regex.Match[str]) -> tuple[int, int, float] | None:
        return match.start(), match.end(), 0.95


class SlackTokenRecognizer(SpanRecognizer):
    """Bot, user, app and refresh tokens (xox?-...), and incoming-webhook URLs."""

    ENTITY = "SLACK_TOKEN"
    PATTERN = regex.compile(
        r"(?<![\w-])xox(?:[abposr]|e(?:\.xox[bp])?)-[A-Za-z0-9-]{10,250}(?![\w-])|"
        r"https://hooks\.slack\.com/(?:services|workflows)/T[A-Z0-9]{6,12}/[AB][A-Z0-9]{6,12}/[A-Za-z0-9]{16,48}",
        regex.VERSION1,
    )
    STARTS = re.compile(r"(?=xox|https://hooks\.slack\.com/)")
    MAX_LEN = 270

    def judge(self, text: str, match: regex.Match[str]) -> tuple[int, int, float] | None:
        return match.start(), match.end(), 0.95


_PREFIXED = (
    r"sk-(?:proj-|ant-(?:api\d\d-)?)?[\w-]{20,200}|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,99}|AIza[\w-]{35}"
    r"|glpat-[\w-]{20}|npm_[A-Za-z0-9]{36}|hf_[A-Za-z0-9]{34,40}|SG\.[\w-]{22}\.[\w-]{43}|xapp-[\w-]{20,200}"
)
_KEY_NAMES = (
    r"[\w.-]{0,24}(?:password|passwd|pwd|passphrase|secret|api[_-]?key|apikey|access[_-]?key|auth[_-]?token|"
    r"token|private[_-]?key|credentials?)"
)


class ApiKeyRecognizer(SpanRecognizer):
    """Known SaaS key prefixes; the value of ``password = ...``, ``api_key: ...`` and the like; and
    random-looking tokens (mixed classes that change often, high entropy), or ones right after a
    word such as "token"."""

    ENTITY = "API_KEY"
    PATTERN = regex.compile(
        rf"(?<![\w+/.-])(?P<prefixed>{_PREFIXED})(?![\w+/=-])"
        rf"|(?<![\w-]){_KEY_NAMES}[\"']?[ \t]{{0,3}}(?::|=|:=|=>)[ \t]{{0,3}}[\"']?"
        r"(?P<value>[^\s\"'<>,;`]{6,128})"
        r"|(?<![\w+/.-])[A-Za-z0-9+/_-]{16,200}+=?=?(?![\w+/=-])",
        FLAGS,
    )
    STARTS = re.compile(
        rf"(?=sk-|[srp]k_|AIza|glpat-|npm_|hf_|SG\.|xapp-|{_KEY_NAMES})|(?<![A-Za-z0-9+/_.-])(?=[A-Za-z0-9+/_-]{{16}})",
        re.IGNORECASE,
    )
    MAX_LEN = len("sk-ant-api03-") + 200 + 2  # the longest alternative: a prefixed key
    RIGHT = 4
    LEFT = 32
    CUES = Cues.of(
        r"api[ _-]?keys?|apikey|keys?|secrets?|tokens?|passwords?|passwd|pwd|bearer|auth\w*|"
        r"credentials?|private|access[ _-]?key|client[ _-]?secret|x-api-key",
        r"sha\d*|md5|hash|digest|checksum|commit|uuid|guid|id",
        before=32,
    )

    def judge(self, text: str, match: regex.Match[str]) -> tuple[int, int, float] | None:
        if match.group("prefixed"):
            return match.start(), match.end(), 0.9
        if match.group("value"):
            value = match.group("value")
            if value.lower() in ("none", "null", "true", "false", "undefined") or "(" in value:
                return None  # code that reads a secret, not the secret
            return match.start("value"), match.end("value"), 0.85
        token = match.group().rstrip("=")
        cue = self.CUES.nearest(text, match.start(), match.end())
        if cue == "negative":
            return None
        upper = sum(char.isupper() for char in token)
        lower = sum(char.islower() for char in token)
        digits = sum(char.isdigit() for char in token)
        entropy = shannon_entropy(token)
        if cue == "positive":
            classes = (upper > 0) + (lower > 0) + (digits > 0)
            strong = classes >= 2 and (digits >= 2 or classes == 3) and entropy >= 3.0
            return (match.start(), match.end(), 0.85) if strong else None
        mixed = upper >= 2 and lower >= 2 and digits >= 2
        if (
            len(token) >= 32
            and mixed
            and entropy >= 4.2
            and wordlike_share(token) < 0.35
            and token.count("/") <= 2
        ):
            return match.start(), match.end(), 0.6
        return None
