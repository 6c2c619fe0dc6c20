from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from backend.loader.chat_template import ChatTemplateError, extract_chat_template, render_chat_template
from backend.loader.tokenizer import TokenizerBundle, tokenizer_from_hf_dir
from tests.backend.tiny_models import make_tiny_hf_dir

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": 'Tell me a joke about <tags> & "quotes" — ünïcode'},
    ],
]
# Exercises what transformers' environment adds: trim/lstrip blocks, loop controls, namespace,
# tojson without HTML escaping, raise_exception, dict(), and the {% generation %} tag.
RICH_TEMPLATE = """\
{% set ns = namespace(count=0) %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message['role']) }}
    {% endif %}
    {% set ns.count = ns.count + 1 %}
    {% if message['role'] == 'assistant' %}
{% generation %}{{ bos_token }}A: {{ message['content'] | tojson }}{{ eos_token }}{% endgeneration %}
    {% else %}
{{ message['role'] }}: {{ message['content'] }}
    {% endif %}
    {% if loop.index > 5 %}{% break %}{% endif %}
{% endfor %}
{{ dict(total=ns.count) | tojson }}
{% if add_generation_prompt %}A:{% endif %}"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[TokenizerBundle, Any]:
    directory = make_tiny_hf_dir(tmp_path_factory.mktemp("chat") / "llama", "llama")
    return tokenizer_from_hf_dir(directory), AutoTokenizer.from_pretrained(str(directory))


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["single", "system", "multi-turn"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("template", ["model", "rich"])
def test_rendering_equals_transformers(
    tiny: tuple[TokenizerBundle, Any],
    conversation: list[dict[str, Any]],
    add_generation_prompt: bool,
    template: str,
) -> None:
    ours, reference = tiny
    source = ours.chat_template if template == "model" else RICH_TEMPLATE
    assert source is not None
    expected = reference.apply_chat_template(
        conversation, chat_template=source, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    rendered = render_chat_template(
        source,
        conversation,
        add_generation_prompt=add_generation_prompt,
        special_tokens=ours.special_tokens(),
    )
    assert rendered == expected
    if template == "model":
        assert ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt) == expected


@pytest.mark.parametrize(
    "template",
    [
        "{{ messages.__class__.__mro__ }}",
        "{{ ''.__class__.__base__.__subclasses__() }}",
        "{{ messages.append({'role': 'x'}) }}",
        "{% set ns = namespace() %}{% set ns._hidden = 1 %}",
        "{{ namespace(_secret=1) }}",
        "{{ raise_exception.__globals__ }}",
    ],
)
def test_unsafe_access_raises(template: str) -> None:
    with pytest.raises(ChatTemplateError, match=r"unsafe operation: .*(unsafe|underscore)"):
        render_chat_template(template, [{"role": "user", "content": "x"}])


def test_raise_exception_message_reaches_the_caller() -> None:
    template = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        render_chat_template(template, [])


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile: line 2"):
        render_chat_template("ok\n{% for m in messages %}", [])


def test_runtime_type_error_is_wrapped() -> None:
    with pytest.raises(ChatTemplateError, match="TypeError"):
        render_chat_template("{{ messages[0]['content'] + 1 }}", [{"role": "user", "content": "x"}])


def test_non_plain_inputs_are_refused() -> None:
    with pytest.raises(ChatTemplateError, match="not plain data"):
        render_chat_template("{{ messages }}", [{"role": "user", "content": object()}])


def test_strftime_now_and_tojson_keep_text_readable() -> None:
    rendered = render_chat_template(
        "{{ strftime_now('%Y') }} {{ messages[0]['content'] | tojson }}",
        [{"role": "user", "content": "<b>é</b>"}],
    )
    assert rendered == f'{datetime.now().year} "<b>é</b>"'


def test_missing_template_is_an_error(tiny: tuple[TokenizerBundle, Any]) -> None:
    ours, _ = tiny
    bare = TokenizerBundle(
        tokenizer=ours.tokenizer,
        bos_token_id=None,
        eos_token_ids=(),
        bos_token=None,
        eos_token=None,
        add_bos_token=False,
        chat_template=None,
        vocab_size=ours.vocab_size,
    )
    with pytest.raises(ChatTemplateError, match="no chat template"):
        bare.apply_chat_template([], add_generation_prompt=True)


def test_extract_picks_the_default_named_template() -> None:
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    assert extract_chat_template(named) == "D"
    assert extract_chat_template("S") == "S"
    assert extract_chat_template(None) is None
    with pytest.raises(ChatTemplateError):
        extract_chat_template(42)


def test_loaded_template_works_from_a_directory(tmp_path: Path) -> None:
    ours = tokenizer_from_hf_dir(make_tiny_hf_dir(tmp_path, "llama"))
    prompt = ours.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
