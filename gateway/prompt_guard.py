"""Step 4 of the pipeline: score every message of the prompt for injection, then act as the role says.

Every message counts, not only the last: client-supplied system and assistant turns, tool results
and the completions prompt. At or above the role's threshold the action is ``block`` (400
``prompt_rejected``, a deliberately generic message), ``sanitize`` (the offending messages are
normalized and their attack spans filtered before forwarding) or ``flag`` (forwarded as is). The
score and the rule ids go to the audit record either way. A prompt the scanner cannot read (token
ids) or a scanner failure fails closed unless the caller's roles all say ``guards.fail_open``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from gateway.errors import InvalidRequest
from gateway.guards.injection import GuardInputTooLarge, InjectionScanner, InjectionVerdict, MessageText
from gateway.guards.pii import GuardUnavailable
from gateway.openai_api import ChatCompletionRequest, OpenAIRequest
from gateway.output_guard import guards_fail_open
from gateway.request_context import RequestContext

logger = logging.getLogger(__name__)

# Longer prompts are scanned on a worker thread so that one large request cannot stall the loop.
INLINE_SCAN_CHARS = 8192


class PromptRejected(InvalidRequest):
    default_code = "prompt_rejected"
    default_message = "The request was rejected by the content policy."


async def screen_prompt(
    scanner: InjectionScanner, ctx: RequestContext, call: OpenAIRequest, raw: dict[str, Any]
) -> None:
    settings = ctx.decision.settings if ctx.decision is not None else None
    if settings is None:
        return
    policy = settings.guards.injection
    try:
        messages = messages_of(call)
        verdict = await _scan(scanner, messages)
    except GuardInputTooLarge:
        raise InvalidRequest("the prompt is too large to be screened", code="prompt_too_large") from None
    except (UnscreenablePrompt, GuardUnavailable, RuntimeError, ValueError) as exc:
        if guards_fail_open(ctx):
            logger.warning(
                "prompt forwarded unscreened (guards fail_open)", extra={"error": type(exc).__name__}
            )
            return
        if isinstance(exc, UnscreenablePrompt):
            raise InvalidRequest(str(exc), code="unscreenable_prompt", param="prompt") from None
        raise GuardUnavailable() from None
    ctx.guard_scores["injection"] = round(float(verdict.score), 4)
    ctx.guard_rules = verdict.rule_ids
    if verdict.score < policy.threshold:
        return
    ctx.guard_action = policy.action
    if policy.action == "block":
        raise PromptRejected()
    if policy.action == "sanitize":
        flagged = {
            m.index
            for m, score in zip(messages, verdict.message_scores, strict=True)
            if score >= policy.threshold
        }
        sanitize_in_place(scanner, raw, flagged)


class UnscreenablePrompt(ValueError):
    """A prompt given as token ids: the gateway has no tokenizer, so it cannot screen it."""


def messages_of(call: OpenAIRequest) -> list[MessageText]:
    """Every text the model will read, one entry per message (tool calls' arguments included)."""
    if isinstance(call, ChatCompletionRequest):
        texts = []
        for index, message in enumerate(call.messages):
            content = message.content
            text = content if isinstance(content, str) else "".join(p.text for p in content or [])
            if message.tool_calls:
                text += "\n" + json.dumps(message.tool_calls, ensure_ascii=False)
            texts.append(MessageText(index, message.role, text))
        return texts
    prompt = call.prompt
    if isinstance(prompt, str):
        return [MessageText(0, "user", prompt)]
    if prompt and not isinstance(prompt[0], str):
        raise UnscreenablePrompt("prompts given as token ids cannot be screened; send text")
    return [MessageText(i, "user", str(text)) for i, text in enumerate(prompt)]


async def _scan(scanner: InjectionScanner, messages: list[MessageText]) -> InjectionVerdict:
    if sum(len(m.text) for m in messages) <= INLINE_SCAN_CHARS:
        return scanner.scan(messages)
    return await asyncio.to_thread(scanner.scan, messages)


def sanitize_in_place(scanner: InjectionScanner, raw: dict[str, Any], indexes: set[int]) -> None:
    """Replace the flagged messages (or prompt) in the forwarded body by their sanitized text."""
    if isinstance(raw.get("messages"), list):
        for index in indexes:
            message = raw["messages"][index]
            content = message.get("content")
            if isinstance(content, str):
                message["content"] = scanner.sanitize(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        part["text"] = scanner.sanitize(part["text"])
    elif isinstance(raw.get("prompt"), str):
        raw["prompt"] = scanner.sanitize(raw["prompt"])
    elif isinstance(raw.get("prompt"), list):
        raw["prompt"] = [scanner.sanitize(p) if i in indexes else p for i, p in enumerate(raw["prompt"])]
