"""The Grafana dashboard is well formed and queries only metrics that the two services export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.metrics import describe_metrics as worker_families
from gateway.metrics import describe_metrics as gateway_families

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "warden-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Family names as prometheus_client's parser reports them (counters without `_total`, histograms by
# their base name) and their types, from the metric reference in docs/observability.md.
CONTRACT: dict[str, str] = {
    "warden_gateway_requests": "counter",
    "warden_gateway_request_duration_seconds": "histogram",
    "warden_gateway_step_duration_seconds": "histogram",
    "warden_gateway_tokens": "counter",
    "warden_gateway_cache_requests": "counter",
    "warden_gateway_cache_coalesced": "counter",
    "warden_gateway_guard_detections": "counter",
    "warden_gateway_pii_entities": "counter",
    "warden_gateway_budget_decisions": "counter",
    "warden_gateway_upstream_errors": "counter",
    "warden_gateway_upstream_worker_healthy": "gauge",
    "warden_gateway_upstream_circuit_state": "gauge",
    "warden_gateway_upstream_outstanding_requests": "gauge",
    "warden_gateway_policy_reloads": "counter",
    "warden_gateway_policy_info": "gauge",
    "warden_gateway_policy_last_reload_failed": "gauge",
    "warden_gateway_redis_up": "gauge",
    "warden_gateway_redis_outages": "counter",
    "warden_gateway_audit_records": "counter",
    "warden_gateway_audit_commits": "counter",
    "warden_gateway_audit_refused": "counter",
    "warden_gateway_audit_up": "gauge",
    "warden_gateway_audit_write_duration_seconds": "histogram",
    "warden_worker_kv_blocks_total": "gauge",
    "warden_worker_kv_blocks_used": "gauge",
    "warden_worker_kv_blocks_free": "gauge",
    "warden_worker_requests_running": "gauge",
    "warden_worker_requests_waiting": "gauge",
    "warden_worker_prefix_cache_hit_ratio": "gauge",
    "warden_worker_generation_tokens_per_second": "gauge",
    "warden_worker_engine_info": "gauge",
    "warden_worker_preemptions": "counter",
    "warden_worker_engine_steps": "counter",
    "warden_worker_prefix_cache_queries_tokens": "counter",
    "warden_worker_prefix_cache_hits_tokens": "counter",
    "warden_worker_prompt_tokens": "counter",
    "warden_worker_generation_tokens": "counter",
    "warden_worker_requests": "counter",
    "warden_worker_time_to_first_token_seconds": "histogram",
    "warden_worker_inter_token_latency_seconds": "histogram",
    "warden_worker_request_queue_seconds": "histogram",
    "warden_worker_request_duration_seconds": "histogram",
    "process_resident_memory_bytes": "gauge",
    "process_cpu_seconds": "counter",
}

# What an operator opens the dashboard for: each of these must be on at least one panel.
HEADLINE = (
    "warden_gateway_requests",
    "warden_gateway_request_duration_seconds",
    "warden_gateway_step_duration_seconds",
    "warden_gateway_tokens",
    "warden_gateway_cache_requests",
    "warden_gateway_guard_detections",
    "warden_gateway_pii_entities",
    "warden_gateway_budget_decisions",
    "warden_gateway_upstream_errors",
    "warden_gateway_upstream_circuit_state",
    "warden_gateway_audit_records",
    "warden_gateway_audit_up",
    "warden_gateway_audit_refused",
    "warden_gateway_audit_write_duration_seconds",
    "warden_gateway_redis_up",
    "warden_worker_kv_blocks_used",
    "warden_worker_kv_blocks_total",
    "warden_worker_requests_running",
    "warden_worker_requests_waiting",
    "warden_worker_time_to_first_token_seconds",
    "warden_worker_inter_token_latency_seconds",
    "warden_worker_generation_tokens_per_second",
    "warden_worker_preemptions",
    "warden_worker_prefix_cache_hit_ratio",
    "process_resident_memory_bytes",
    "process_cpu_seconds",
)

_SAMPLE_NAME = re.compile(r"(?<![\w:])(warden_[a-z0-9_]+|process_[a-z_]+)(?=[\s{\[),]|$)")
_SUFFIX_TYPES = (
    ("_total", "counter"),
    ("_bucket", "histogram"),
    ("_sum", "histogram"),
    ("_count", "histogram"),
)
_RATED = re.compile(r"\b(?:rate|irate|increase)\(\s*([a-zA-Z_:][\w:]*)")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def load_dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as file:
        dashboard: dict[str, Any] = json.load(file)
    return dashboard


def graph_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries, including those inside collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def exprs(panel: dict[str, Any]) -> Iterator[str]:
    for target in panel["targets"]:
        yield target["expr"]


def family_of(sample: str, types: dict[str, str]) -> str | None:
    """The family a sample name belongs to, if its suffix fits the family's type."""
    if types.get(sample) == "gauge":
        return sample
    for suffix, kind in _SUFFIX_TYPES:
        base = sample.removesuffix(suffix)
        if base != sample and types.get(base) == kind:
            return base
    return None


def families_in(expr: str) -> set[str]:
    """Family names of the sample names in ``expr``, stripped as the Prometheus parser names them."""
    families = set()
    for sample in _SAMPLE_NAME.findall(expr):
        family = family_of(sample, CONTRACT)
        assert family is not None, f"{sample!r} in {expr!r} is not a sample of any metric in the contract"
        families.add(family)
    return families


def all_exprs(dashboard: dict[str, Any]) -> list[str]:
    queries = [expr for panel in graph_panels(dashboard) for expr in exprs(panel)]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def queried_families(dashboard: dict[str, Any]) -> set[str]:
    return {family for expr in all_exprs(dashboard) for family in families_in(expr)}


def test_dashboard_identity() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "warden-overview"
    assert dashboard["title"] == "Warden — gateway and workers"
    assert dashboard["refresh"] == "30s"
    assert dashboard["time"] == {"from": "now-1h", "to": "now"}
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None  # importable into any Grafana without clashing with an existing id


def test_datasource_is_a_prometheus_variable() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("model", "upstream"):
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["definition"].startswith("label_values(")


def test_panel_ids_are_unique() -> None:
    dashboard = load_dashboard()
    ids = [panel["id"] for panel in dashboard["panels"]]
    ids += [inner["id"] for panel in dashboard["panels"] for inner in panel.get("panels", [])]
    assert len(ids) == len(set(ids))


def test_every_panel_queries_through_the_datasource_variable() -> None:
    for panel in graph_panels(load_dashboard()):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_panels_fit_the_grid_without_overlapping() -> None:
    dashboard = load_dashboard()
    boxes: list[tuple[str, int, int, int, int]] = []
    for panel in [
        *dashboard["panels"],
        *(inner for row in dashboard["panels"] for inner in row.get("panels", [])),
    ]:
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("x", "y", "w", "h")), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0, panel["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        boxes.append((panel["title"], grid["x"], grid["y"], grid["w"], grid["h"]))
    for i, (title, x, y, w, h) in enumerate(boxes):
        for other, ox, oy, ow, oh in boxes[i + 1 :]:
            overlap = x < ox + ow and ox < x + w and y < oy + oh and oy < y + h
            assert not overlap, f"{title!r} overlaps {other!r}"


def test_queries_use_only_defined_variables() -> None:
    dashboard = load_dashboard()
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    builtin = {"__rate_interval", "__interval", "__range", "__all"}
    for expr in all_exprs(dashboard):
        for braced, bare in _VARIABLE.findall(expr):
            assert (braced or bare) in defined | builtin, expr


def test_queries_name_only_metrics_of_the_contract() -> None:
    for expr in all_exprs(load_dashboard()):
        assert families_in(expr), f"no Warden metric in {expr!r}"


def test_rate_is_taken_of_counters_and_buckets_only() -> None:
    for expr in all_exprs(load_dashboard()):
        for sample in _RATED.findall(expr):
            family = family_of(sample, CONTRACT)
            assert family is not None and CONTRACT[family] != "gauge", f"rate of a gauge in {expr!r}"


def test_quantiles_aggregate_buckets_by_le() -> None:
    quantile = re.compile(
        r"histogram_quantile\(\s*0?\.\d+\s*,\s*sum by \(le(?:, [a-z_]+)*\) \(rate\(\w+_bucket"
    )
    found = 0
    for expr in all_exprs(load_dashboard()):
        if "histogram_quantile" in expr:
            found += 1
            assert quantile.search(expr), expr
    assert found


@pytest.mark.parametrize("family", HEADLINE)
def test_headline_metric_has_a_panel(family: str) -> None:
    assert family in queried_families(load_dashboard())


def test_every_queried_metric_is_exported() -> None:
    """Fails when a service renames or drops a metric the dashboard (and the guide) rely on."""
    exported = gateway_families() | worker_families()
    assert queried_families(load_dashboard()) - exported == set()
