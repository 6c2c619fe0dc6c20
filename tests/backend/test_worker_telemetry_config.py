"""The worker's observability settings and pure parts, without a model."""

from __future__ import annotations

import pytest

from backend.cli import build_parser, main, settings_from_args
from backend.metrics import TokenRate, describe_metrics
from backend.telemetry import caller_request_id
from gateway.config import ConfigError
from tests.backend.test_worker_telemetry import COUNTERS, GAUGES, HISTOGRAMS


def test_metrics_port_and_host_come_from_flags() -> None:
    args = build_parser().parse_args(
        ["serve", "--insecure-dev", "--metrics-port", "9100", "--metrics-host", "10.0.0.7"]
    )
    settings = settings_from_args(args)
    assert (settings.metrics_port, settings.metrics_host) == (9100, "10.0.0.7")


def test_metrics_port_defaults_to_off_on_loopback() -> None:
    settings = settings_from_args(build_parser().parse_args(["serve", "--insecure-dev"]))
    assert (settings.metrics_port, settings.metrics_host) == (None, "127.0.0.1")


def test_metrics_port_equal_to_the_api_port_is_refused() -> None:
    args = build_parser().parse_args(["serve", "--insecure-dev", "--port", "9000", "--metrics-port", "9000"])
    with pytest.raises(ConfigError, match="metrics_port must differ from port"):
        settings_from_args(args)


def test_unsupported_tracing_configuration_stops_startup(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    assert main(["serve", "--insecure-dev"]) == 2
    assert "OTEL_TRACES_EXPORTER='zipkin' is not supported" in capsys.readouterr().err


def test_describe_metrics_names_the_dashboard_contract() -> None:
    names = describe_metrics()
    assert names >= GAUGES | COUNTERS | HISTOGRAMS
    assert "process_resident_memory_bytes" in names
    assert "warden_worker_requests_total" not in names  # a counter's family drops the suffix
    assert not any(name.endswith("_created") for name in names)


def test_token_rate_covers_the_last_ten_seconds() -> None:
    now = [100.0]
    rate = TokenRate(window_s=10, clock=lambda: now[0])
    rate.add(50)
    now[0] = 105.5
    rate.add(45)
    assert rate.per_second() == pytest.approx(95 / 9.5)
    now[0] = 110.5  # the bucket of second 100 has left the window
    assert rate.per_second() == pytest.approx(45 / 9.5)
    now[0] = 200.0
    assert rate.per_second() == 0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("5e1f0a2b3c4d5e6f7a8b9c0d", "5e1f0a2b3c4d5e6f7a8b9c0d"),
        ("req_42-a", "req_42-a"),
        (None, None),
        ("", None),
        ("has space", None),
        ("x" * 65, None),
        ('{"prompt": "hi"}', None),
        ("line\nbreak", None),
        ("trailing\n", None),
    ],
)
def test_only_id_like_request_ids_are_recorded(header: str | None, expected: str | None) -> None:
    headers = {} if header is None else {"x-request-id": header}
    assert caller_request_id(headers) == expected
