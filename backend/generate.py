"""``python -m backend generate``: run one prompt through the engine locally, streaming the answer."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from backend.engine.llm_engine import EngineConfig, InvalidRequestError, LLMEngine
from backend.engine.sampling_params import SamplingParams, SamplingParamsError
from backend.loader import ChatTemplateError, ModelLoadError


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("generate", help="generate from one prompt locally")
    parser.add_argument(
        "--model", default="default", help="'default' (bundled SmolLM2-135M-Instruct) or a path"
    )
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    parser.add_argument("--system", help="system message (chat mode)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto")
    parser.add_argument("--sha256", help="expected SHA-256 of the model file (tamper check)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        params = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            stop=tuple(args.stop),
        )
        started = time.perf_counter()
        engine = LLMEngine.from_model(
            args.model,
            EngineConfig(dtype=args.dtype, kv_cache_memory_bytes=64 << 20),
            expected_sha256=args.sha256,
        )
        loaded = time.perf_counter()
        tokenizer = engine.tokenizer
        if args.raw:
            prompt_ids = tokenizer.encode(args.prompt)
        else:
            messages = [{"role": "system", "content": args.system}] if args.system else []
            messages.append({"role": "user", "content": args.prompt})
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            prompt_ids = tokenizer.encode(text, add_special_tokens=False)
        engine.add_request("cli", prompt_ids, params)
    except (ModelLoadError, ChatTemplateError, InvalidRequestError, SamplingParamsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    first_token: float | None = None
    reason = None
    generated = 0
    while engine.has_unfinished_requests():
        for output in engine.step():
            first_token = first_token or time.perf_counter()
            sys.stdout.write(output.text_delta)
            sys.stdout.flush()
            generated = output.num_output_tokens
            reason = output.finish_reason
    done = time.perf_counter()
    decode_s = done - (first_token or done)
    rate = (generated - 1) / decode_s if generated > 1 and decode_s > 0 else 0.0
    print(
        f"\n\n[{len(prompt_ids)} prompt tokens, {generated} generated, finish: {reason}; "
        f"load {loaded - started:.1f} s, first token {((first_token or done) - loaded) * 1000:.0f} ms, "
        f"{rate:.1f} tokens/s]",
        file=sys.stderr,
    )
    return 0
