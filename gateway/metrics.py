"""Prometheus text exposition of the gateway's state (extended by the observability work)."""

from __future__ import annotations

from gateway.pipeline import Services
from gateway.upstream.breaker import CircuitState

_CIRCUIT_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(services: Services) -> str:
    policies = services.policies
    lines = [
        "# HELP warden_gateway_policy_reloads_total Policy loads by result (failed keeps the last good).",
        "# TYPE warden_gateway_policy_reloads_total counter",
        f'warden_gateway_policy_reloads_total{{result="ok"}} {policies.reloads_ok}',
        f'warden_gateway_policy_reloads_total{{result="failed"}} {policies.reloads_failed}',
        "# HELP warden_gateway_policy_info The policy version in force (value always 1).",
        "# TYPE warden_gateway_policy_info gauge",
        f'warden_gateway_policy_info{{version="{_label(policies.current.version)}"}} 1',
        "# HELP warden_gateway_policy_last_reload_failed 1 while the latest policy update is refused.",
        "# TYPE warden_gateway_policy_last_reload_failed gauge",
        f"warden_gateway_policy_last_reload_failed {int(policies.last_error is not None)}",
    ]
    per_worker = [
        ("warden_gateway_upstream_worker_healthy", "1 if the worker's last health check passed."),
        ("warden_gateway_upstream_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open."),
        ("warden_gateway_upstream_outstanding_requests", "Requests in flight to the worker."),
    ]
    samples: dict[str, list[str]] = {name: [] for name, _ in per_worker}
    for pool in services.router.pools:
        for worker in pool.workers:
            labels = f'upstream="{_label(pool.settings.name)}",worker="{_label(worker.url)}"'
            samples[per_worker[0][0]].append(f"{per_worker[0][0]}{{{labels}}} {int(worker.healthy)}")
            state = _CIRCUIT_VALUE[worker.breaker.state]
            samples[per_worker[1][0]].append(f"{per_worker[1][0]}{{{labels}}} {state}")
            samples[per_worker[2][0]].append(f"{per_worker[2][0]}{{{labels}}} {worker.outstanding}")
    for name, help_text in per_worker:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples[name]]
    lines += _redis_lines(services)
    lines += _audit_lines(services)
    return "\n".join(lines) + "\n"


def _audit_lines(services: Services) -> list[str]:
    writer = services.finish.audit
    if writer is None:
        return []
    stats = writer.stats
    return [
        "# HELP warden_gateway_audit_records_total Audit records written durably.",
        "# TYPE warden_gateway_audit_records_total counter",
        f"warden_gateway_audit_records_total {stats.records_written}",
        "# HELP warden_gateway_audit_commits_total Group commits (one fsync each).",
        "# TYPE warden_gateway_audit_commits_total counter",
        f"warden_gateway_audit_commits_total {stats.commits}",
        "# HELP warden_gateway_audit_refused_total Requests whose record could not be written.",
        "# TYPE warden_gateway_audit_refused_total counter",
        f"warden_gateway_audit_refused_total {stats.refused_records}",
        "# HELP warden_gateway_audit_up 1 while audit records can be written.",
        "# TYPE warden_gateway_audit_up gauge",
        f"warden_gateway_audit_up {int(stats.available)}",
    ]


def _redis_lines(services: Services) -> list[str]:
    cache, limiter, redis = services.cache.stats, services.limiter.stats, services.cache.redis
    return [
        "# HELP warden_gateway_redis_up 1 while Redis answers; 0 while the gateway runs degraded.",
        "# TYPE warden_gateway_redis_up gauge",
        f"warden_gateway_redis_up {int(redis.available)}",
        "# HELP warden_gateway_redis_outages_total Transitions from up to down.",
        "# TYPE warden_gateway_redis_outages_total counter",
        f"warden_gateway_redis_outages_total {redis.outages}",
        "# HELP warden_gateway_cache_requests_total Cache lookups by outcome.",
        "# TYPE warden_gateway_cache_requests_total counter",
        f'warden_gateway_cache_requests_total{{result="hit"}} {cache.hits}',
        f'warden_gateway_cache_requests_total{{result="miss"}} {cache.misses}',
        f'warden_gateway_cache_requests_total{{result="bypass"}} {cache.bypasses}',
        "# HELP warden_gateway_cache_coalesced_total Hits served by waiting for an identical request.",
        "# TYPE warden_gateway_cache_coalesced_total counter",
        f"warden_gateway_cache_coalesced_total {cache.coalesced}",
        "# HELP warden_gateway_budget_decisions_total Admission decisions of the rate limits and budgets.",
        "# TYPE warden_gateway_budget_decisions_total counter",
        f'warden_gateway_budget_decisions_total{{result="admitted"}} {limiter.admitted}',
        f'warden_gateway_budget_decisions_total{{result="refused"}} {limiter.refused}',
        f'warden_gateway_budget_decisions_total{{result="local"}} {limiter.local}',
    ]
