"""The gateway-overhead benchmark's parts: the response parser, the load generator against the real
mock and floor processes, and the rows it writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from bench._loadgen import ProtocolError, ResponseParser, build_request, run_load
from bench.gateway_overhead import (
    ROW_FIELDS,
    Mode,
    Row,
    Target,
    build_rows,
    chat_url,
    checks,
    local_targets,
    measure,
    row_json,
)
from tests.support.ports import free_port

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"
TRAILER = b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n2\r\nno\r\n0\r\nX-T: 1\r\n\r\n"
EMPTY = b"HTTP/1.1 204 No Content\r\n\r\n"
INTERIM = b"HTTP/1.1 100 Continue\r\n\r\n" + OK


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (OK, [200]),
        (CHUNKED, [200]),
        (TRAILER, [401]),
        (EMPTY, [204]),
        (INTERIM, [200]),
        (OK + CHUNKED + EMPTY + TRAILER, [200, 200, 204, 401]),
    ],
)
@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_parser_completes_each_response_whatever_the_split(
    stream: bytes, expected: list[int], piece: int
) -> None:
    parser = ResponseParser()
    statuses: list[int] = []
    for start in range(0, len(stream), piece):
        statuses += parser.feed(stream[start : start + piece])
    assert statuses == expected


def test_parser_waits_for_the_whole_body() -> None:
    parser = ResponseParser()
    assert parser.feed(OK[:-1]) == []
    assert parser.feed(OK[-1:]) == [200]


def test_parser_refuses_a_body_without_framing() -> None:
    with pytest.raises(ProtocolError):
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello")


def test_request_bytes_are_a_complete_keep_alive_post() -> None:
    endpoint, request = build_request(
        "http://127.0.0.1:9/v1/chat/completions", b"{}", {"Authorization": "Bearer t"}
    )
    assert (endpoint.host, endpoint.port, endpoint.tls, endpoint.path) == (
        "127.0.0.1",
        9,
        False,
        "/v1/chat/completions",
    )
    assert request == (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nAuthorization: Bearer t\r\n\r\n{}"
    )
    with pytest.raises(ValueError, match="line breaks"):
        build_request("http://127.0.0.1:9/", b"{}", {"X": "a\r\nInjected: 1"})


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://h:1", "http://h:1/v1/chat/completions"),
        ("http://h:1/", "http://h:1/v1/chat/completions"),
        ("http://h:1/v1", "http://h:1/v1/chat/completions"),
        ("https://h/proxy/v1/", "https://h/proxy/v1/chat/completions"),
    ],
)
def test_target_url_is_a_base_url(base: str, url: str) -> None:
    assert chat_url(base) == url


def _row(target: str, concurrency: int, rps: float, added_p50: float, errors: int = 0) -> Row:
    return Row(target, concurrency, rps, 1.0, 2.0, added_p50, 1.0, 0.5, 100, errors)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([_row("gateway", 1, 900, 0.8), _row("gateway", 16, 1200, 3.0)], [True, True]),
        ([_row("gateway", 1, 900, 1.2), _row("gateway", 16, 999, 3.0)], [False, False]),
        ([_row("gateway", 1, 900, 0.5, errors=1), _row("gateway", 16, 5000, 1.0, errors=3)], [False, False]),
        ([_row("floor", 1, 900, 0.5)], []),
    ],
)
def test_checks_hold_the_issue_targets(rows: list[Row], expected: list[bool]) -> None:
    assert [ok for _, ok in checks(rows)] == expected


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Target]]:
    root = tmp_path_factory.mktemp("gateway-overhead")
    with local_targets(
        root, with_gateway=False, pki_dir=None, mock_port=free_port(), mock_tls_port=free_port()
    ) as started:
        yield started


def test_loader_against_the_mock_and_floor_gives_sane_rows(targets: list[Target], tmp_path: Path) -> None:
    cells = uvloop.run(measure(targets, (1, 4), Mode(window_s=0.4, warmup_s=0.1, repeats=1)))
    rows = build_rows(cells)
    assert [(r.target, r.concurrency) for r in rows] == [
        ("direct", 1),
        ("floor", 1),
        ("direct", 4),
        ("floor", 4),
    ]
    for row in rows:
        assert row.errors == 0
        assert row.requests > 20
        assert row.rps == pytest.approx(row.requests / cells[(row.target, row.concurrency)].result.duration_s)
        assert 0 < row.p50_ms <= row.p99_ms < 1000
        assert row.cpu_ms_per_req is not None and row.cpu_ms_per_req > 0
    direct = {r.concurrency: r for r in rows if r.target == "direct"}
    floor = {r.concurrency: r for r in rows if r.target == "floor"}
    for concurrency in (1, 4):
        assert direct[concurrency].added_p50_ms == 0.0
        # The floor forwards to the same mock over mTLS, so it can only add latency.
        assert floor[concurrency].added_p50_ms > 0
        assert floor[concurrency].added_p50_ms == pytest.approx(
            floor[concurrency].p50_ms - direct[concurrency].p50_ms
        )

    path = tmp_path / "rows.json"
    path.write_text(json.dumps([row_json(r) for r in rows]))
    loaded = json.loads(path.read_text())
    assert all(tuple(item) == ROW_FIELDS for item in loaded)
    for item in loaded:
        assert isinstance(item["target"], str) and isinstance(item["concurrency"], int)
        assert all(
            isinstance(item[k], float) for k in ("rps", "added_p50_ms", "added_p99_ms", "cpu_ms_per_req")
        )
        assert isinstance(item["requests"], int) and isinstance(item["errors"], int)


def test_non_200_responses_count_as_errors(targets: list[Target]) -> None:
    direct = targets[0]
    endpoint, request = build_request(f"{direct.url}/v1/no-such-route", b"{}")
    result = uvloop.run(run_load(endpoint, request, concurrency=2, duration_s=0.2, warmup_s=0.05))
    assert result.requests > 0
    assert result.errors >= result.requests


def test_nan_latency_becomes_null_in_json() -> None:
    row = Row("target", 1, 0.0, float("nan"), float("nan"), float("nan"), float("nan"), None, 0, 5)
    assert row_json(row)["p50_ms"] is None
    assert row_json(row)["cpu_ms_per_req"] is None
