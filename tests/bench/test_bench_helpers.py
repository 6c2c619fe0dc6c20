"""The benchmark's pure parts: percentiles, tables and the fixed-seed workloads."""

from __future__ import annotations

import pytest

from bench._common import format_table, percentile
from bench._workload import WorkloadShape, build_shared_prefix_workload, build_workload, corpus_text

STREAM = list(range(10_000))


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([3.0], 99, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),
        ([1.0, 11.0], 99, 10.9),
    ],
)
def test_percentile_interpolates_between_ranks(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)


def test_table_aligns_columns() -> None:
    table = format_table(["name", "tok/s"], [["ours", "120.5"], ["hf_static", "9.0"]])
    assert table.splitlines() == ["name       tok/s", "ours       120.5", "hf_static    9.0"]


def test_workload_is_reproducible_and_within_its_ranges() -> None:
    shape = WorkloadShape(num_requests=64, prompt_len=(16, 512), output_len=(16, 256), seed=0)
    first, again = build_workload(STREAM, shape), build_workload(STREAM, shape)
    assert first == again
    assert all(16 <= len(r.prompt_token_ids) <= 512 and 16 <= r.output_len <= 256 for r in first)
    assert len({r.request_id for r in first}) == 64
    # Windows of the stream start at distinct offsets, so no two prompts share their first token.
    assert len({r.prompt_token_ids[0] for r in first}) == 64


def test_shared_prefix_requests_share_exactly_the_prefix() -> None:
    requests = build_shared_prefix_workload(
        STREAM, num_requests=8, prefix_len=512, suffix_len=32, output_len=4
    )
    prefix = requests[0].prompt_token_ids[:512]
    assert all(r.prompt_token_ids[:512] == prefix and len(r.prompt_token_ids) == 544 for r in requests)
    assert len({tuple(r.prompt_token_ids[512:]) for r in requests}) == 8


def test_corpus_is_long_prose() -> None:
    text = corpus_text()
    assert len(text) > 100_000
    assert text == corpus_text()
