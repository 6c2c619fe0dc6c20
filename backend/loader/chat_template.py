"""Chat templates: found in the checkpoint, rendered in a Jinja sandbox the way transformers renders them.

A template is code that ships with the model, so it runs in ``ImmutableSandboxedEnvironment``, sees
only plain data (strings, numbers, lists, dicts), and fails with ``ChatTemplateError`` when it
reaches for an unsafe attribute or mutates its inputs. The environment mirrors transformers'
(``trim_blocks``, ``lstrip_blocks``, loop controls, ``raise_exception``, ``strftime_now``, a
``tojson`` that keeps non-ASCII text, a ``namespace`` that refuses underscore names), so a rendered
prompt is the one the model was tuned on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from backend.loader.errors import ChatTemplateError

__all__ = ["ChatTemplateError", "extract_chat_template", "render_chat_template"]


def extract_chat_template(value: object) -> str | None:
    """The template a ``chat_template`` setting holds: a string, or named templates ("default" wins)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {
            item.get("name"): item.get("template")
            for item in value
            if isinstance(item, dict) and isinstance(item.get("template"), str)
        }
        template = named.get("default")
        return template if isinstance(template, str) else None
    raise ChatTemplateError(f"chat_template should be a string or a list of named templates, found {value!r}")


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, str] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    **context: Any,
) -> str:
    """Render ``messages`` with ``template``; ``special_tokens`` are bos_token, eos_token, ... by name."""
    compiled = _compile(template)
    variables = {
        **_plain(dict(special_tokens or {})),
        **_plain(context),
        "messages": _plain(list(messages)),
        "tools": _plain(None if tools is None else list(tools)),
        "documents": None,
        "add_generation_prompt": bool(add_generation_prompt),
    }
    for message in variables["messages"]:
        if not isinstance(message, dict):
            raise ChatTemplateError(f"each message must be a mapping, found {message!r}")
    try:
        return compiled.render(**variables)
    except jinja2.exceptions.SecurityError as exc:
        raise ChatTemplateError(f"chat template attempted an unsafe operation: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
    except Exception as exc:  # the template is foreign code: any failure is the template's
        raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, except that reaching for an unsafe attribute fails loudly.

    The stock sandbox hands back an undefined value that renders as an empty string, which would
    let a probing template pass unnoticed; no legitimate template touches such attributes.
    """

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe"
        )


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = _StrictSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template does not compile: line {exc.lineno}: {exc.message}") from exc


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which is wrong inside a prompt.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """``dict(...)`` and ``dict.fromkeys(...)`` without exposing the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's ``namespace`` refusing underscore-prefixed names, so templates cannot reach dunders."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"namespace attribute {name!r} may not start with an underscore"
            )


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (marks assistant text for training); renders the body."""

    tags = {"generation"}  # noqa: RUF012  # jinja reads this class attribute

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _plain(value: Any) -> Any:
    """A copy made only of JSON-like types, so the sandbox never sees a caller's richer objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    raise ChatTemplateError(f"chat template input of type {type(value).__name__} is not plain data")
