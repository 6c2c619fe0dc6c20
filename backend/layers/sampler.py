"""Token selection for one engine step: penalties, temperature, top-k / top-p / min-p, seeded draws, logprobs.

Order of processing per row (penalties as vLLM applies them, then Hugging Face's warper order):

1. repetition penalty (HF): every token seen in prompt + output has a positive logit divided by the
   penalty and a negative one multiplied by it;
2. presence / frequency penalties (OpenAI), over output tokens: ``logit -= presence * (count > 0)
   + frequency * count``;
3. temperature: logits divided by it. A greedy row (temperature 0) takes the argmax here;
4. top-k (ties with the k-th logit are kept), then top-p on the top-k survivors, then min-p
   relative to the most likely survivor;
5. one draw from the row's generator (greedy rows draw nothing).

Logprobs are ``log_softmax`` of the model's raw logits, before penalties, temperature and truncation:
they describe what the model predicted, so they do not change with the sampling options (as in the
OpenAI API). The chosen token's logprob is always finite.

Sampling inverts the row's cumulative distribution at one uniform number drawn from the row's own
generator: one draw per row and step instead of one per vocabulary entry (an exponential race over 49k
entries costs more than everything else together). Every computation is row-wise, with sizes that depend
only on the row, so a seeded request gets the same tokens alone or in any batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain

import torch

from backend.engine.sampling_params import SamplingParams

# Top-k / top-p first look at this many candidates per row and widen only rows that need more. The sizes
# are fixed (never derived from the batch) so that a row's result does not depend on its neighbours.
_CANDIDATE_STAGES = (64, 256, 4096)
_TOP_P_FIRST_STAGE = 256


@dataclass(slots=True)
class SamplingState:
    """What the sampler needs to know about one row: its options, its random stream and its history."""

    params: SamplingParams
    generator: torch.Generator | None  # None: the global torch generator (not reproducible)
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    top_logprobs: tuple[tuple[int, float], ...]  # the k most likely (token id, logprob), best first


@dataclass(frozen=True, slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


def make_generator(seed: int | None, index: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """The random stream of choice ``index`` of a request: ``seed + index``, or fresh entropy if unseeded."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed((seed + index) % 2**64)
    return generator


class Sampler:
    """Picks one token per row of ``logits`` [rows, vocab]; never modifies ``logits``."""

    def __call__(self, logits: torch.Tensor, states: Sequence[SamplingState]) -> SamplerOutput:
        if logits.dim() != 2 or logits.shape[0] != len(states):
            raise ValueError(
                f"logits must be [rows, vocab] with one row per sampling state; got shape "
                f"{tuple(logits.shape)} for {len(states)} states"
            )
        params = [state.params for state in states]
        raw = logits
        if all(p.greedy and not _has_penalties(p) and p.logprobs is None for p in params):
            return SamplerOutput(logits.argmax(dim=-1).tolist(), [None] * len(params))

        logits = apply_penalties(logits.float(), states)
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        if sampled:
            temperatures = [1.0 if p.greedy else p.temperature for p in params]
            logits = logits / torch.tensor(temperatures, device=logits.device)[:, None]
        if len(sampled) == len(params):
            token_ids = _sample(logits, params, _draw_uniforms(states))
        else:
            token_ids = logits.argmax(dim=-1)
            if sampled:
                rows = torch.tensor(sampled, device=logits.device)
                picked = [states[i] for i in sampled]
                token_ids[rows] = _sample(logits[rows], [s.params for s in picked], _draw_uniforms(picked))
        ids: list[int] = token_ids.tolist()
        return SamplerOutput(ids, _logprobs(raw.float(), ids, params))


def _has_penalties(params: SamplingParams) -> bool:
    return (
        params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
    )


def apply_penalties(logits: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
    """Repetition, then presence and frequency penalties; returns ``logits`` itself when no row has any.

    Only the (row, token) entries that occur are touched, so the cost follows the number of tokens seen,
    not rows x vocabulary.
    """
    rep = [i for i, s in enumerate(states) if s.params.repetition_penalty != 1.0]
    occ = [i for i, s in enumerate(states) if s.params.presence_penalty or s.params.frequency_penalty]
    if not rep and not occ:
        return logits
    logits = logits.clone()
    flat = logits.view(-1)
    if rep:
        seen, _, entry = _occurrences(
            [chain(states[i].prompt_token_ids, states[i].output_token_ids) for i in rep], rep, logits
        )
        penalty = torch.tensor([states[i].params.repetition_penalty for i in rep], device=logits.device)[
            entry
        ]
        scores = flat[seen]
        flat[seen] = torch.where(scores < 0, scores * penalty, scores / penalty)
    if occ:
        seen, counts, entry = _occurrences([states[i].output_token_ids for i in occ], occ, logits)
        frequency = torch.tensor([states[i].params.frequency_penalty for i in occ], device=logits.device)[
            entry
        ]
        presence = torch.tensor([states[i].params.presence_penalty for i in occ], device=logits.device)[entry]
        flat[seen] = flat[seen] - frequency * counts - presence
    return logits


def _occurrences(
    sequences: Sequence[Iterable[int]], rows: Sequence[int], logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct (row, token) pairs of ``sequences`` (one per entry of ``rows``): their flat indices
    into ``logits``, their counts, and which entry of ``rows`` each belongs to."""
    vocab = logits.shape[1]
    device = logits.device
    per_row = [list(seq) for seq in sequences]
    tokens = torch.tensor(list(chain.from_iterable(per_row)), dtype=torch.long, device=device)
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"token ids must be in [0, {vocab}) to be penalized")
    lengths = torch.tensor([len(seq) for seq in per_row], device=device)
    entry = torch.repeat_interleave(torch.arange(len(per_row), device=device), lengths)
    pairs, counts = torch.unique(entry * vocab + tokens, return_counts=True)
    entry = torch.div(pairs, vocab, rounding_mode="floor")
    flat = torch.tensor(rows, dtype=torch.long, device=device)[entry] * vocab + pairs % vocab
    return flat, counts.to(logits.dtype), entry


def _draw_uniforms(states: Sequence[SamplingState]) -> torch.Tensor:
    """One uniform in [0, 1) per row, each from the row's own generator (float64, on CPU)."""
    draws = [
        torch.rand(1, generator=s.generator, device=s.generator.device, dtype=torch.float64).cpu()
        if s.generator is not None
        else torch.rand(1, dtype=torch.float64)
        for s in states
    ]
    return torch.cat(draws)


def _sample(logits: torch.Tensor, params: Sequence[SamplingParams], uniforms: torch.Tensor) -> torch.Tensor:
    tokens = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    uniforms = uniforms.to(logits.device)
    for rows, probs, ids in candidate_groups(logits, params):
        index = _invert_cdf(probs, uniforms[rows])
        tokens[rows] = index if ids is None else ids.gather(1, index[:, None]).squeeze(1)
    return tokens


def _invert_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The first index whose cumulative (unnormalized) probability exceeds ``u * total``."""
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    index = torch.searchsorted(cdf, uniforms.to(cdf.dtype)[:, None] * total, right=True)
    # Rounding can put the target at the total: fall back to the last index with non-zero probability.
    last = torch.searchsorted(cdf, total.contiguous(), right=False)
    return torch.minimum(index, last).squeeze(1)


def candidate_groups(
    logits: torch.Tensor, params: Sequence[SamplingParams]
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """The distributions the rows of temperature-scaled ``logits`` sample from, after truncation.

    Yields ``(rows, probs, ids)`` per group of rows: ``probs`` [len(rows), K] unnormalized, zero where
    truncated; ``ids`` [len(rows), K] their token ids, or None when K is the whole vocabulary in order.
    """
    vocab = logits.shape[1]
    device = logits.device
    full: list[int] = []
    stage_of: dict[int, list[int]] = {}
    for i, p in enumerate(params):
        top_k = p.top_k if 0 < p.top_k < vocab else 0
        if not top_k and p.top_p >= 1.0:
            full.append(i)
            continue
        first = next((s for s in _CANDIDATE_STAGES if s > top_k), vocab) if top_k else _TOP_P_FIRST_STAGE
        stage_of.setdefault(min(first, vocab), []).append(i)
    if full:
        rows = torch.tensor(full, device=device)
        probs = torch.softmax(logits[rows], dim=-1)
        yield rows, _apply_min_p(probs, [params[i] for i in full]), None
    pending: list[int] = []
    for stage in sorted({*stage_of, *(s for s in _CANDIDATE_STAGES if s < vocab), vocab}):
        pending += stage_of.get(stage, [])
        if not pending:
            continue
        rows = torch.tensor(pending, device=device)
        group = logits[rows]
        if stage >= vocab:
            values, ids = group.sort(dim=-1, descending=True)
        else:
            values, ids = group.topk(stage, dim=-1)
        probs, resolved = _truncate(values, group, [params[i] for i in pending])
        done = resolved.tolist()
        if all(done):
            yield rows, probs, ids
            pending = []
            continue
        keep = torch.tensor(done, device=device)
        if any(done):
            yield rows[keep], probs[keep], ids[keep]
        pending = [row for row, ok in zip(pending, done, strict=True) if not ok]


def _truncate(
    values: torch.Tensor, logits: torch.Tensor, params: Sequence[SamplingParams]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k, top-p and min-p over the descending candidates ``values`` [R, K] of ``logits`` [R, V].

    Returns the candidates' unnormalized probabilities and which rows the K candidates fully decide
    (a row is undecided when ties with its k-th logit, or its top-p nucleus, may reach past K).
    """
    device = values.device
    width, vocab = values.shape[1], logits.shape[1]
    whole = width >= vocab
    top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else 0 for p in params], device=device)
    top_p = torch.tensor([p.top_p if p.top_p < 1.0 else math.inf for p in params], device=device)
    has_k = top_k > 0
    kth = values.gather(1, (top_k - 1).clamp(0, width - 1)[:, None]).squeeze(1)
    kth = torch.where(has_k, kth, torch.full_like(kth, -math.inf))
    # HF keeps every token tied with the k-th logit: a tie at the last candidate may continue past K.
    resolved = torch.ones_like(has_k) if whole else ~(has_k & (values[:, -1] >= kth))
    values = values.masked_fill(values < kth[:, None], -math.inf)
    # Top-p renormalizes over the top-k survivors (HF order); without top-k, over the whole vocabulary.
    log_norm = torch.logsumexp(values, dim=-1)
    over_vocab = ~has_k & torch.isfinite(top_p)
    if not whole and bool(over_vocab.any()):
        log_norm = torch.where(over_vocab, torch.logsumexp(logits, dim=-1), log_norm)
    probs = torch.exp(values - log_norm[:, None])
    cumulative = probs.cumsum(dim=-1)
    # A token goes when the mass strictly above it already reaches top_p (HF: ascending cumsum <= 1 - p).
    probs = probs.masked_fill(cumulative - probs >= top_p[:, None], 0.0)
    if not whole:
        resolved &= ~over_vocab | (cumulative[:, -1] >= top_p)
    return _apply_min_p(probs, params), resolved


def _apply_min_p(probs: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    min_p = [p.min_p for p in params]
    if not any(min_p):
        return probs
    threshold = torch.tensor(min_p, device=probs.device, dtype=probs.dtype) * probs.amax(dim=-1)
    return probs.masked_fill(probs < threshold[:, None], 0.0)


def truncated_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """[rows, vocab] normalized distribution each row samples from: a dense view of ``candidate_groups``."""
    dense = torch.zeros_like(logits)
    for rows, probs, ids in candidate_groups(logits, params):
        probs = probs / probs.sum(dim=-1, keepdim=True)
        dense[rows] = probs if ids is None else torch.zeros_like(dense[rows]).scatter_(1, ids, probs)
    return dense


def _logprobs(
    logits: torch.Tensor, token_ids: Sequence[int], params: Sequence[SamplingParams]
) -> list[TokenLogprobs | None]:
    wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
    result: list[TokenLogprobs | None] = [None] * len(params)
    if not wanted:
        return result
    device = logits.device
    rows = logits if len(wanted) == len(params) else logits[torch.tensor(wanted, device=device)]
    # log_softmax(x)[i] = x[i] - logsumexp(x): one reduction per row instead of a [rows, vocab] result.
    log_norm = torch.logsumexp(rows, dim=-1, keepdim=True)
    chosen_ids = torch.tensor([token_ids[i] for i in wanted], device=device)
    chosen = (rows.gather(1, chosen_ids[:, None]) - log_norm).squeeze(1).tolist()
    k = max(params[i].logprobs or 0 for i in wanted)
    values_list: list[list[float]] = [[] for _ in wanted]
    ids_list: list[list[int]] = [[] for _ in wanted]
    if k:
        top_values, top_ids = rows.topk(k, dim=-1)
        values_list, ids_list = (top_values - log_norm).tolist(), top_ids.tolist()
    for j, i in enumerate(wanted):
        n = params[i].logprobs or 0
        top = tuple(zip(ids_list[j][:n], values_list[j][:n], strict=True))
        result[i] = TokenLogprobs(token_ids[i], chosen[j], top)
    return result
