"""``LLMEngine``: requests in, per-step deltas out. ``step()`` is schedule → run → sample → postprocess."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from backend.engine.block_manager import BlockManager
from backend.engine.model_runner import ModelRunner, kv_bytes_per_block
from backend.engine.output import RequestOutput, RequestState, SeqOutputState
from backend.engine.sampling_params import SamplingParams
from backend.engine.scheduler import ScheduledSeq, Scheduler, SchedulerConfig
from backend.engine.sequence import Sequence
from backend.layers.ops import TorchOps
from backend.layers.precision import native_matmul
from backend.layers.sampler import Sampler, SamplingState, TokenLogprobs
from backend.loader import load_checkpoint, resolve_model_path
from backend.loader.tokenizer import TokenizerBundle
from backend.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)

DTypeName = Literal["auto", "bfloat16", "float32"]


class InvalidRequestError(ValueError):
    """A request the engine cannot serve; the message says which limit it breaks, ``code`` names it."""

    def __init__(self, message: str, *, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class EngineConfig:
    dtype: DTypeName = "auto"
    device: str = "auto"  # "auto" = cuda when torch sees a GPU, else cpu
    block_size: int = 16
    kv_cache_memory_bytes: int = 1 << 30
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024
    max_model_len: int | None = None  # default: the model's own context length
    enable_prefix_caching: bool = True
    # The fused CPU kernels (backend/layers/cpu_kernels.cpp) where they build and pass their probe;
    # False keeps the plain torch path, the reference.
    cpu_kernels: bool = True

    def __post_init__(self) -> None:
        if self.block_size not in (8, 16, 32, 64, 128):
            raise ValueError("block_size must be one of 8, 16, 32, 64, 128")
        if self.kv_cache_memory_bytes <= 0:
            raise ValueError("kv_cache_memory_bytes must be positive")
        self.scheduler_config()  # validates the scheduling limits now, before a slow model load

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(
            max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens
        )


@dataclass(frozen=True, slots=True)
class EngineStats:
    num_blocks_total: int
    num_blocks_used: int
    num_running: int
    num_waiting: int
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    peak_slots_used: int
    peak_slots_allocated: int

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0

    @property
    def kv_utilization(self) -> float:
        return self.peak_slots_used / self.peak_slots_allocated if self.peak_slots_allocated else 0.0


def resolve_dtype(name: DTypeName, device: torch.device) -> torch.dtype:
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    # auto: bfloat16 where the hardware computes it natively (AVX512-BF16/AMX via oneDNN), else float32.
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if native_matmul(torch.bfloat16, device.type) else torch.float32


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(slots=True)
class _Peak:
    used: int = 0
    allocated: int = 0


class LLMEngine:
    def __init__(self, model: LlamaForCausalLM, tokenizer: TokenizerBundle, config: EngineConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.max_model_len = min(
            config.max_model_len or model.config.max_position_embeddings, model.config.max_position_embeddings
        )
        num_blocks = config.kv_cache_memory_bytes // kv_bytes_per_block(model, config.block_size, model.dtype)
        if num_blocks < 2:
            raise ValueError("kv_cache_memory_bytes is too small for two KV blocks of this model")
        self.block_manager = BlockManager(
            num_blocks, config.block_size, enable_prefix_caching=config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            config.scheduler_config(),
            self.block_manager,
        )
        self.runner = ModelRunner(model, num_blocks=num_blocks, block_size=config.block_size)
        self.sampler = Sampler()
        self.eos_token_ids = frozenset(tokenizer.eos_token_ids) | frozenset(model.config.eos_token_ids)
        self._requests: dict[str, RequestState] = {}
        self._peak = _Peak()

    @classmethod
    def from_model(
        cls, model: str | Path, config: EngineConfig | None = None, *, expected_sha256: str | None = None
    ) -> LLMEngine:
        config = config or EngineConfig()
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        path = resolve_model_path(str(model))
        started = time.perf_counter()
        checkpoint = load_checkpoint(path, dtype=dtype, expected_sha256=expected_sha256)
        ops = None if config.cpu_kernels else TorchOps()
        llm = LlamaForCausalLM(checkpoint.config, checkpoint.weights, device=device, ops=ops)
        logger.info(
            "model loaded",
            extra={
                "model": path.name,
                "dtype": str(dtype),
                "device": str(device),
                "layer_ops": llm.ops.name,
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
        return cls(llm, checkpoint.tokenizer, config)

    # -- requests ------------------------------------------------------------------------------

    @property
    def kv_capacity_tokens(self) -> int:
        return self.block_manager.num_blocks * self.config.block_size

    @property
    def model_weight_bytes(self) -> int:
        return self.model.weight_bytes

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        cache_salt: str | None = None,
        arrival_time: float | None = None,
    ) -> None:
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        self.validate(prompt_token_ids, params)
        seq = Sequence(
            request_id,
            prompt_token_ids,
            params,
            arrival_time=time.monotonic() if arrival_time is None else arrival_time,
            cache_salt=cache_salt,
        )
        state = RequestState(request_id, params)
        state.add(seq, self._seq_state(seq, 0))
        self._requests[request_id] = state
        self.scheduler.add(seq)

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Reject what can never be served, with the limit in the message."""
        n = len(prompt_token_ids)
        if n == 0:
            raise InvalidRequestError("the prompt is empty", code="invalid_prompt")
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", code="invalid_prompt")
        if n + params.max_tokens > self.max_model_len:
            raise InvalidRequestError(
                f"prompt ({n} tokens) plus max_tokens ({params.max_tokens}) exceeds the context "
                f"length of {self.max_model_len} tokens",
                code="context_length_exceeded",
            )
        if (n + params.max_tokens) * params.n > self.kv_capacity_tokens:
            raise InvalidRequestError(
                f"the request needs up to {(n + params.max_tokens) * params.n} KV slots; "
                f"this worker has {self.kv_capacity_tokens}",
                code="request_too_large",
            )

    def _seq_state(self, seq: Sequence, index: int) -> SeqOutputState:
        params = seq.params
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=self.model.device)
            if params.seed is None:
                generator.seed()
            else:
                generator.manual_seed(params.seed + index)
        return SeqOutputState.create(self.tokenizer, seq, generator)

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free everything it holds. Returns False for an unknown id."""
        state = self._requests.pop(request_id, None)
        if state is None:
            return False
        for seq in state.seqs:
            if not seq.is_finished:
                seq.finish_reason = "abort"
                self.scheduler.finish(seq)
        return True

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def has_request(self, request_id: str) -> bool:
        """True while any choice of the request is still waiting or running."""
        return request_id in self._requests

    # -- the step ------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        scheduled = self.scheduler.schedule()
        if not scheduled.scheduled:
            return []
        result = self.runner.execute(scheduled)
        for item in scheduled.scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
            self.block_manager.commit(item.seq)
        self._track_peak()
        rows, states, row_seqs = self._sampling_rows(result.sampled)
        if not row_seqs:
            return []
        logits = result.logits
        if rows != list(range(logits.shape[0])):  # a row skipped (aborted) or repeated (n > 1 fork)
            logits = logits.index_select(0, torch.tensor(rows, device=logits.device))
        sampled = self.sampler(logits, states)
        return self._postprocess(row_seqs, sampled.token_ids, sampled.logprobs)

    def _sampling_rows(
        self, sampled: list[ScheduledSeq]
    ) -> tuple[list[int], list[SamplingState], list[Sequence]]:
        """One sampling row per sequence; a prompt of an ``n > 1`` request forks its siblings here."""
        rows: list[int] = []
        states: list[SamplingState] = []
        seqs: list[Sequence] = []
        for row, item in enumerate(sampled):
            seq = item.seq
            request = self._requests.get(seq.request_id)
            if request is None:
                continue
            family = [seq]
            if seq.params.n > 1 and seq.num_output_tokens == 0 and len(request.seqs) == 1:
                for index in range(1, seq.params.n):
                    child = seq.fork(index)
                    self.block_manager.fork(seq, child)
                    request.add(child, self._seq_state(child, index))
                    self.scheduler.add_running(child)
                    family.append(child)
            for member in family:
                out_state = request.state_of(member)
                rows.append(row)
                states.append(
                    SamplingState(
                        params=member.params,
                        generator=out_state.generator,
                        prompt_token_ids=member.prompt_token_ids,
                        output_token_ids=member.output_token_ids,
                    )
                )
                seqs.append(member)
        return rows, states, seqs

    def _postprocess(
        self, seqs: list[Sequence], token_ids: list[int], logprobs: list[TokenLogprobs | None]
    ) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        for seq, token, token_logprobs in zip(seqs, token_ids, logprobs, strict=True):
            request = self._requests[seq.request_id]
            seq.token_ids.append(token)
            out_state = request.state_of(seq)
            text, reason = out_state.advance(seq, token, self.eos_token_ids, self.max_model_len)
            if reason is not None:
                seq.finish_reason = reason
                self.scheduler.finish(seq)
            outputs.append(
                RequestOutput(
                    request_id=seq.request_id,
                    index=seq.index,
                    new_token_ids=[token],
                    text_delta=text,
                    finished=reason is not None,
                    finish_reason=reason,
                    num_prompt_tokens=seq.num_prompt_tokens,
                    num_cached_tokens=seq.num_cached_tokens,
                    num_output_tokens=seq.num_output_tokens,
                    logprobs=[token_logprobs] if token_logprobs is not None else [],
                    first_scheduled_ns=seq.first_scheduled_ns,
                )
            )
            if request.finished:
                del self._requests[seq.request_id]
        return outputs

    def _track_peak(self) -> None:
        allocated = self.block_manager.num_used_blocks * self.config.block_size
        if allocated >= self._peak.allocated:
            used = sum(s.num_computed_tokens for s in self.scheduler.running)
            self._peak = _Peak(min(used, allocated), allocated)

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_blocks_total=bm.num_blocks,
            num_blocks_used=bm.num_used_blocks,
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_preemptions=self.scheduler.num_preemptions,
            prefix_cache_queries=bm.stats.queried_tokens,
            prefix_cache_hits=bm.stats.hit_tokens,
            peak_slots_used=self._peak.used,
            peak_slots_allocated=self._peak.allocated,
        )
