"""The sampler against reference computations: HF logits processors, direct formulas, and statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import pytest
import torch
from transformers import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from backend.engine.sampling_params import SamplingParams
from backend.layers.sampler import (
    Sampler,
    SamplingState,
    apply_penalties,
    make_generator,
    truncated_probs,
)

sampler = Sampler()


def random_logits(rows: int, vocab: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def state(
    params: SamplingParams,
    seed: int | None = None,
    prompt: Sequence[int] = (),
    output: Sequence[int] = (),
) -> SamplingState:
    generator = None if params.greedy else make_generator(seed)
    return SamplingState(params, generator, list(prompt), list(output))


def hf_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Reference: Hugging Face's warpers, in the order generate() applies them, on one row."""
    scores = logits[None].clone()
    ids = cast(torch.LongTensor, torch.zeros((1, 1), dtype=torch.long))  # unused by these warpers
    if params.top_k:
        scores = TopKLogitsWarper(params.top_k)(ids, scores)
    if params.top_p < 1.0:
        scores = TopPLogitsWarper(params.top_p)(ids, scores)
    if params.min_p:
        scores = MinPLogitsWarper(params.min_p)(ids, scores)
    return torch.softmax(scores, dim=-1)[0]


# --- greedy -------------------------------------------------------------------------------------------


def test_greedy_is_argmax() -> None:
    logits = random_logits(6, 500, seed=1)
    out = sampler(logits, [state(SamplingParams(temperature=0.0)) for _ in range(6)])
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    assert out.logprobs == [None] * 6


def test_greedy_rows_in_a_sampling_batch_stay_argmax() -> None:
    logits = random_logits(4, 300, seed=2)
    states = [
        state(SamplingParams(temperature=0.0)),
        state(SamplingParams(temperature=1.5), seed=5),
        state(SamplingParams(temperature=0.0, logprobs=2)),
        state(SamplingParams(top_k=3), seed=6),
    ]
    out = sampler(logits, states)
    argmax = logits.argmax(dim=-1).tolist()
    assert out.token_ids[0] == argmax[0] and out.token_ids[2] == argmax[2]


def test_greedy_uses_penalized_logits() -> None:
    logits = torch.tensor([[4.0, 3.9, -1.0, 0.5]])
    params = SamplingParams(temperature=0.0, repetition_penalty=1.5)
    assert sampler(logits, [state(params, prompt=[0])]).token_ids == [1]


def test_sampler_leaves_logits_untouched() -> None:
    logits = random_logits(3, 100, seed=3)
    before = logits.clone()
    params = SamplingParams(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.5, top_p=0.9)
    sampler(logits, [state(params, seed=i, prompt=[1, 2], output=[2, 3, 3]) for i in range(3)])
    assert torch.equal(logits, before)


def test_rejects_logits_that_do_not_match_the_states() -> None:
    with pytest.raises(ValueError, match="one row per sampling state"):
        sampler(torch.zeros(2, 10), [state(SamplingParams(temperature=0.0))])


# --- penalties ------------------------------------------------------------------------------------------


def test_repetition_penalty_matches_transformers() -> None:
    logits = random_logits(3, 64, seed=4)
    histories = [([1, 5, 5, 9], [9, 12, 40]), ([0, 63], []), ([7, 7, 7], [8, 8])]
    penalties = [1.3, 0.7, 1.0]
    states = [
        state(SamplingParams(temperature=0.0, repetition_penalty=p), prompt=prompt, output=output)
        for p, (prompt, output) in zip(penalties, histories, strict=True)
    ]
    ours = apply_penalties(logits, states)
    for row, (p, (prompt, output)) in enumerate(zip(penalties, histories, strict=True)):
        ids = torch.tensor([prompt + output])
        reference = RepetitionPenaltyLogitsProcessor(p)(ids, logits[row : row + 1].clone())[0]
        assert torch.equal(ours[row], reference)
    assert not torch.equal(ours[0], logits[0])


def test_presence_and_frequency_penalties_match_direct_formula() -> None:
    logits = random_logits(2, 32, seed=5)
    rows = [
        (SamplingParams(presence_penalty=0.8, frequency_penalty=0.3), [1, 2], [3, 3, 3, 4, 1]),
        (SamplingParams(presence_penalty=-0.5, frequency_penalty=1.2), [6, 6], [6, 7, 7]),
    ]
    ours = apply_penalties(logits, [state(p, 0, prompt, output) for p, prompt, output in rows])
    for row, (params, _, output) in enumerate(rows):
        expected = logits[row].clone()
        for token in set(output):  # only output tokens count, prompt tokens do not
            expected[token] -= params.presence_penalty + params.frequency_penalty * output.count(token)
        torch.testing.assert_close(ours[row], expected, rtol=0, atol=1e-6)


def test_repetition_then_occurrence_penalties_compose_in_order() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.0]])
    params = SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    ours = apply_penalties(logits, [state(params, 0, prompt=[0], output=[1, 1])])
    # token 0: 2 / 2 = 1; token 1: -2 * 2 - 0.5 - 0.25 * 2 = -5; the rest unchanged
    assert ours.tolist() == [[1.0, -5.0, 1.0, 0.0]]


def test_penalized_token_ids_must_be_in_the_vocabulary() -> None:
    params = SamplingParams(temperature=0.0, repetition_penalty=1.2)
    with pytest.raises(ValueError, match="token ids must be in"):
        sampler(torch.zeros(1, 10), [state(params, prompt=[3, 10])])


# --- truncation ---------------------------------------------------------------------------------------

TRUNCATIONS = [
    SamplingParams(top_k=1),
    SamplingParams(top_k=5),
    SamplingParams(top_k=300),
    SamplingParams(top_p=0.5),
    SamplingParams(top_p=0.95),
    SamplingParams(min_p=0.1),
    SamplingParams(top_k=40, top_p=0.8),
    SamplingParams(top_k=300, top_p=0.9, min_p=0.02),
    SamplingParams(top_p=0.7, min_p=0.3),
    SamplingParams(top_k=0, top_p=1.0),
]


@pytest.mark.parametrize(
    ("vocab", "scale"),
    [(8, 2.0), (1000, 3.0), (20000, 0.5), (20000, 3.0), (20000, 8.0)],
    ids=["tiny", "small", "flat", "llm-like", "peaked"],
)
def test_truncation_matches_transformers_warpers(vocab: int, scale: float) -> None:
    logits = random_logits(len(TRUNCATIONS), vocab, seed=vocab + int(scale), scale=scale)
    ours = truncated_probs(logits, TRUNCATIONS)
    for row, params in enumerate(TRUNCATIONS):
        reference = hf_probs(logits[row], params)
        assert torch.equal(ours[row] > 0, reference > 0), params
        torch.testing.assert_close(ours[row], reference, rtol=1e-4, atol=1e-6)


def test_top_k_keeps_ties_with_the_kth_logit_like_transformers() -> None:
    # Integer logits on a large vocabulary: many ties at every boundary, in and beyond the candidates.
    logits = torch.randint(-3, 4, (4, 5000), generator=torch.Generator().manual_seed(7)).float()
    params = [
        SamplingParams(top_k=10),
        SamplingParams(top_k=200),
        SamplingParams(top_k=3000),
        SamplingParams(top_k=70, top_p=0.5),
    ]
    ours = truncated_probs(logits, params)
    for row, p in enumerate(params):
        reference = hf_probs(logits[row], p)
        if p.top_p == 1.0:
            assert torch.equal(ours[row] > 0, reference > 0)
        # Which of several tied tokens top-p keeps depends on sort order; how many it keeps does not.
        assert int((ours[row] > 0).sum()) == int((reference > 0).sum())


STATISTICAL = [
    SamplingParams(top_k=5),
    SamplingParams(top_p=0.7),
    SamplingParams(min_p=0.2),
    SamplingParams(temperature=0.7, top_k=6, top_p=0.85, min_p=0.05),
    SamplingParams(temperature=1.8),
]


@pytest.mark.parametrize(
    "params", STATISTICAL, ids=lambda p: f"k{p.top_k}-p{p.top_p}-m{p.min_p}-t{p.temperature}"
)
def test_sampled_frequencies_follow_the_truncated_distribution(params: SamplingParams) -> None:
    draws = 4000
    base = torch.tensor([2.0, 1.6, 1.2, 0.9, 0.5, 0.0, -0.7, -1.5])
    out = sampler(base.repeat(draws, 1), [state(params, seed=1000 + i) for i in range(draws)])
    expected = hf_probs(base / params.temperature, params)
    counts = torch.bincount(torch.tensor(out.token_ids), minlength=8).double()
    allowed = expected > 0
    assert counts[~allowed].sum() == 0  # never outside the allowed set
    mean = expected[allowed].double() * draws
    chi2 = float(((counts[allowed] - mean) ** 2 / mean).sum())
    dof = int(allowed.sum()) - 1
    # Far above the 99.99th percentile of chi-square for these degrees of freedom (at most 7).
    assert chi2 < 6 * dof + 15, (chi2, dof)
    assert (counts[allowed] > 0).all()


# --- seeds --------------------------------------------------------------------------------------------


def run_steps(batch: list[SamplingState], target: int, steps: int, seed: int) -> list[int]:
    """Sample ``steps`` times; the target row sees the same logits wherever it sits in the batch."""
    tokens = []
    for step in range(steps):
        logits = random_logits(len(batch), 2000, seed=seed + 7919 * step + 104729 * len(batch))
        logits[target] = random_logits(1, 2000, seed=seed + step)[0]
        out = sampler(logits, batch)
        tokens.append(out.token_ids[target])
        batch[target].output_token_ids = [*batch[target].output_token_ids, out.token_ids[target]]
    return tokens


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(top_k=20, top_p=0.9),
        SamplingParams(top_p=0.8, repetition_penalty=1.2),
    ],
    ids=["plain", "top-k-top-p", "top-p-penalty"],
)
def test_seeded_row_is_reproducible_and_independent_of_its_batch(params: SamplingParams) -> None:
    alone = run_steps([state(params, seed=42)], 0, steps=12, seed=0)
    assert alone == run_steps([state(params, seed=42)], 0, steps=12, seed=0)
    neighbours = [
        state(SamplingParams(temperature=0.0)),
        state(SamplingParams(top_p=0.5, min_p=0.1), seed=3),
        state(SamplingParams(top_k=2000), seed=None),
        state(SamplingParams(temperature=0.3, logprobs=4, presence_penalty=1.0), seed=9),
    ]
    for position in (0, 2, 4):
        batch = [*neighbours[:position], state(params, seed=42), *neighbours[position:]]
        assert run_steps(batch, position, steps=12, seed=0) == alone
    assert run_steps([state(params, seed=43)], 0, steps=12, seed=0) != alone


def test_seed_and_index_pick_the_stream() -> None:
    a, b, c = make_generator(7), make_generator(7), make_generator(7, index=1)
    assert torch.rand(3, generator=a).tolist() == torch.rand(3, generator=b).tolist()
    assert torch.rand(3, generator=make_generator(8)).tolist() == torch.rand(3, generator=c).tolist()


def test_unseeded_rows_sample_from_the_allowed_set() -> None:
    logits = torch.tensor([[5.0, 4.0, -9.0, -9.0]]).repeat(50, 1)
    params = SamplingParams(top_k=2)
    out = sampler(logits, [SamplingState(params, None, [], []) for _ in range(50)])
    assert set(out.token_ids) == {0, 1}


# --- logprobs -----------------------------------------------------------------------------------------


def test_logprobs_are_log_softmax_of_the_raw_logits() -> None:
    logits = random_logits(3, 200, seed=11)
    rows = [
        SamplingParams(temperature=0.5, top_k=5, logprobs=3, repetition_penalty=1.5),
        SamplingParams(temperature=0.0, logprobs=5, frequency_penalty=0.5),
        SamplingParams(temperature=1.2, logprobs=0),
    ]
    states = [state(p, seed=1, prompt=[3, 4], output=[4, 5]) for p in rows]
    out = sampler(logits, states)
    for row, params in enumerate(rows):
        # Penalties and temperature shape the draw, never the reported logprobs.
        reference = torch.log_softmax(logits[row], dim=-1)
        entry = out.logprobs[row]
        assert entry is not None
        assert entry.token_id == out.token_ids[row]
        assert entry.logprob == pytest.approx(float(reference[entry.token_id]), abs=1e-5)
        values, ids = reference.topk(params.logprobs or 0)
        assert [t for t, _ in entry.top_logprobs] == ids.tolist()
        assert [v for _, v in entry.top_logprobs] == pytest.approx(values.tolist(), abs=1e-5)
    assert out.logprobs[2] is not None and out.logprobs[2].top_logprobs == ()


def test_rows_without_logprobs_get_none() -> None:
    logits = random_logits(2, 50, seed=12)
    out = sampler(logits, [state(SamplingParams(logprobs=1), seed=1), state(SamplingParams(), seed=2)])
    assert out.logprobs[0] is not None and out.logprobs[1] is None
