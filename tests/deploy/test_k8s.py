"""The Kubernetes manifests (deploy/k8s), checked without a cluster.

Each overlay is rendered as kustomize would (tests/support/kustomize.py) and every object is
validated against the Kubernetes API schema. Then the pieces are checked against each other and
against the services' own code: the settings loader, both command lines, certificates made by
`certs init`, the policy loader, and a real mTLS server for the workers' readiness probe.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import ipaddress
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from prometheus_client import start_http_server
from pydantic import BaseModel

from backend.cli import build_parser as worker_parser
from backend.cli import settings_from_args
from backend.metrics import WorkerMetrics
from backend.settings import WorkerSettings
from gateway.audit.keys import AuditKeyPaths
from gateway.cli import build_parser as gateway_parser
from gateway.cli.token import PRIVATE_NAME, PUBLIC_NAME
from gateway.guards.rules import load_rules
from gateway.pki import PkiPaths, init_pki
from gateway.policy.store import PolicyStore
from gateway.serving import peer_identities
from gateway.settings import GatewaySettings, load_gateway_settings
from gateway.tls import TlsFiles, client_context, server_context
from gateway.tracing import sampler_from_env, span_exporter
from tests.support.engine_stats import loaded_engine
from tests.support.kustomize import Resource, build, config_map_hash, pod_specs
from tests.support.tls_handshake import handshake_in_memory

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "external-redis")
# The oldest release still supported upstream and the newest the schemas cover.
KUBERNETES_VERSIONS = ("1.31", "1.37")
NAMESPACE = "warden"
GATEWAY, WORKER, REDIS = "warden-gateway", "warden-worker", "warden-redis"
# Pods listen on every interface of their own network namespace: Services and probes reach them there.
EVERY_INTERFACE = "0.0.0.0"  # noqa: S104
if TYPE_CHECKING:
    from backend.async_engine import AsyncEngine

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


@functools.cache
def rendered(overlay: str) -> list[Resource]:
    return build(K8S / "overlays" / overlay)


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    (found,) = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def pod_labels(resources: list[Resource]) -> dict[str, dict[str, str]]:
    """Workload name -> the labels of its pods."""
    return {
        r["metadata"]["name"]: r["spec"]["template"]["metadata"]["labels"]
        for r in resources
        if any(pod_specs(r))
    }


def workload(resources: list[Resource], name: str) -> Resource:
    (found,) = [r for r in resources if r["metadata"]["name"] == name and any(pod_specs(r))]
    return found


def pod(resources: list[Resource], name: str) -> dict[str, Any]:
    (spec,) = pod_specs(workload(resources, name))
    return spec


def container(resources: list[Resource], name: str) -> dict[str, Any]:
    (only,) = pod(resources, name)["containers"]
    return dict(only)


def container_ports(resources: list[Resource], name: str) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container(resources, name)["ports"]}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels only, as the manifests use) or a Service's plain selector."""
    if "matchLabels" in selector or "matchExpressions" in selector:
        assert set(selector) == {"matchLabels"}, f"selector not understood here: {selector}"
        selector = selector["matchLabels"]
    return all(labels.get(key) == value for key, value in selector.items())


# -- Secrets and the pods' environment -------------------------------------------------------------


def sample_secret(secret: str, key: str) -> str:
    """A stand-in for a Secret's value, shaped like what deploy/k8s/README.md puts there."""
    if (secret, key) == ("warden-redis", "url"):
        return "rediss://warden-gateway:sample-password@redis.example.com:6380/0"
    return base64.b64encode(hashlib.sha256(f"{secret}/{key}".encode()).digest()).decode()


def pod_environment(resources: list[Resource], name: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it: Secrets, the downward API, $(VAR)."""
    env: dict[str, str] = {}
    for var in container(resources, name).get("env", []):
        source = var.get("valueFrom", {})
        if "secretKeyRef" in source:
            env[var["name"]] = sample_secret(source["secretKeyRef"]["name"], source["secretKeyRef"]["key"])
        elif "fieldRef" in source:
            fields = {"metadata.name": f"{name}-0", "metadata.namespace": NAMESPACE}
            env[var["name"]] = fields[source["fieldRef"]["fieldPath"]]
        else:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
    return env


def secret_refs(resources: list[Resource]) -> set[tuple[str, str]]:
    """Every (Secret, key) a pod reads, from its volumes and its environment."""
    refs: set[tuple[str, str]] = set()
    for resource in resources:
        for spec in pod_specs(resource):
            for volume in spec.get("volumes", []):
                if "secret" in volume:
                    secret = volume["secret"]
                    assert "items" in secret, f"{volume['name']}: list the keys the pod reads"
                    refs |= {(secret["secretName"], item["key"]) for item in secret["items"]}
            for var in (var for box in spec["containers"] for var in box.get("env", [])):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    refs.add((ref["name"], ref["key"]))
    return refs


def readme_lines() -> list[str]:
    return (K8S / "README.md").read_text(encoding="utf-8").replace("\\\n", " ").splitlines()


def readme_secrets() -> dict[str, dict[str, str]]:
    """The Secrets deploy/k8s/README.md creates: name -> key -> source file (or "literal")."""
    secrets: dict[str, dict[str, str]] = {}
    for line in (line for line in readme_lines() if "create secret generic" in line):
        words = shlex.split(line)
        keys = secrets.setdefault(words[words.index("generic") + 1], {})
        for option, _, value in (word.partition("=") for word in words):
            key, _, source = value.partition("=")
            if option in ("--from-file", "--from-literal"):
                keys[key] = source if option == "--from-file" else "literal"
    return secrets


# -- mounts and the paths the services read --------------------------------------------------------


def mounted(resources: list[Resource], name: str, path: PurePosixPath) -> tuple[dict[str, Any], str]:
    """The volume that holds ``path`` in the container, and the path inside that volume."""
    mounts = [m for m in container(resources, name)["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    assert mounts, f"{name}: {path} is on no mounted volume"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in pod(resources, name)["volumes"] if v["name"] == mount["name"]]
    inside = path.relative_to(mount["mountPath"]).as_posix()
    if "subPath" in mount:
        assert inside == ".", f"{path}: a subPath mount is a single file"
        inside = mount["subPath"]
    return volume, inside


def files_of(resources: list[Resource], volume: dict[str, Any]) -> set[str]:
    if "secret" in volume:
        return {item["path"] for item in volume["secret"]["items"]}
    assert "configMap" in volume, f"volume {volume['name']} holds no fixed files"
    return set(find(resources, "ConfigMap", volume["configMap"]["name"])["data"])


def setting_paths(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, PurePosixPath]]:
    """Every file or directory a settings object names, with its dotted key."""
    for field, value in model:
        values = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in values:
            key = f"{prefix}{field}" if index is None else f"{prefix}{field}[{index}]"
            if isinstance(item, Path):
                yield key, PurePosixPath(item)
            elif isinstance(item, BaseModel):
                yield from setting_paths(item, f"{key}.")


def gateway_settings(resources: list[Resource], tmp_path: Path) -> GatewaySettings:
    """gateway.yaml from its ConfigMap, loaded as `serve --config` loads it in the pod."""
    box = container(resources, GATEWAY)
    assert box["command"] == ["python", "-m", "gateway"]
    args = gateway_parser().parse_args(box["args"])
    assert (args.command, args.host, args.port) == ("serve", None, None)
    volume, inside = mounted(resources, GATEWAY, PurePosixPath(args.config))
    config = tmp_path / "gateway.yaml"
    config.write_text(
        find(resources, "ConfigMap", volume["configMap"]["name"])["data"][inside], encoding="utf-8"
    )
    return load_gateway_settings(config, environ=pod_environment(resources, GATEWAY))


def worker_settings(
    resources: list[Resource], monkeypatch: pytest.MonkeyPatch
) -> tuple[argparse.Namespace, WorkerSettings]:
    """The worker's arguments through its own command line, with the pod's WARDEN_WORKER_* environment."""
    box = container(resources, WORKER)
    assert box["command"] == ["python", "-m", "backend"]
    for key, value in pod_environment(resources, WORKER).items():
        if key.startswith("WARDEN_WORKER_"):
            monkeypatch.setenv(key, value)
    args = worker_parser().parse_args(box["args"])
    return args, settings_from_args(args)


# -- the objects as the API server reads them ------------------------------------------------------


def test_the_renderer_names_config_maps_as_kustomize_does() -> None:
    assert config_map_hash("", {"one": ""}) == "9g67k2htb6"  # a vector of kustomize's api/hasher tests


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_the_kubernetes_api(overlay: str, version: str) -> None:
    resources = rendered(overlay)
    assert not of_kind(resources, "Secret"), "Secrets are made from the CLIs' outputs, never committed"
    invalid = []
    for resource in resources:
        where = f"{resource['kind']}/{resource['metadata']['name']}"
        assert resource["metadata"]["labels"]["app.kubernetes.io/part-of"] == "warden", where
        assert resource["kind"] == "Namespace" or resource["metadata"]["namespace"] == NAMESPACE, where
        if resource["kind"] == "ServiceMonitor":
            check_service_monitor(resources, resource)
            continue
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            invalid.append(f"{where} at {'.'.join(map(str, exc.absolute_path))}: {exc.message}")
    assert invalid == []
    for name, labels in pod_labels(resources).items():
        assert labels["app.kubernetes.io/part-of"] == "warden", name


def check_service_monitor(resources: list[Resource], monitor: Resource) -> None:
    """A structural check of the Prometheus Operator's custom resource (no schema ships for it)."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    services = [
        s
        for s in of_kind(resources, "Service")
        if selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in services] == [monitor["metadata"]["name"]]
    ports = {port["name"]: port for port in services[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scheme", "scrapeTimeout"}
        assert endpoint["path"] == "/metrics" and re.fullmatch(r"\d+s", endpoint["interval"])
        assert ports[endpoint["port"]]["targetPort"] == "metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_to_this_release(overlay: str) -> None:
    images = [box["image"] for r in rendered(overlay) for spec in pod_specs(r) for box in spec["containers"]]
    for image in images:
        name, _, tag = image.partition(":")
        assert tag and tag != "latest", image
        assert tag == VERSION or not name.startswith("warden-"), image
    assert f"{'warden-worker-cuda' if overlay == 'gpu' else 'warden-worker'}:{VERSION}" in images


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_restricted_pod_security_standard(overlay: str) -> None:
    resources = rendered(overlay)
    labels = find(resources, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for name in pod_labels(resources):
        spec = pod(resources, name)
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not {"hostNetwork", "hostPID", "hostIPC"} & spec.keys(), name
        assert all("hostPath" not in volume for volume in spec["volumes"]), name
        for box in spec["containers"]:
            context = box["securityContext"]
            assert context == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, name
    for name in (GATEWAY, WORKER):
        assert pod(resources, name)["securityContext"]["runAsUser"] == 10001
        assert "/tmp" in {m["mountPath"] for m in container(resources, name)["volumeMounts"]}


# -- how the objects fit together ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_budgets_select_their_pods_on_real_ports(overlay: str) -> None:
    resources = rendered(overlay)
    labels = pod_labels(resources)
    for name, pod_label in labels.items():
        assert selects(workload(resources, name)["spec"]["selector"], pod_label), name
    for service in of_kind(resources, "Service"):
        (target,) = [
            name for name, pod_label in labels.items() if selects(service["spec"]["selector"], pod_label)
        ]
        assert target == service["metadata"]["name"]
        ports = container_ports(resources, target)
        for port in service["spec"]["ports"]:
            assert ports[port["targetPort"]] == port["port"], f"{target}: {port}"
    for budget in of_kind(resources, "PodDisruptionBudget"):
        chosen = [
            name for name, pod_label in labels.items() if selects(budget["spec"]["selector"], pod_label)
        ]
        assert chosen == [budget["metadata"]["name"]]
    worker = workload(resources, WORKER)
    assert worker["kind"] == "StatefulSet" and worker["spec"]["serviceName"] == WORKER
    assert find(resources, "Service", WORKER)["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_settings_load_in_the_pods_environment(overlay: str, tmp_path: Path) -> None:
    resources = rendered(overlay)
    settings = gateway_settings(resources, tmp_path)  # certificate and key files are not opened here
    ports = container_ports(resources, GATEWAY)
    assert (settings.host, settings.port) == (EVERY_INTERFACE, ports["http"])
    assert (settings.metrics.host, settings.metrics.port) == (EVERY_INTERFACE, ports["metrics"])
    assert settings.audit.enabled and settings.cache.configured
    assert settings.tls is None, "TLS ends in front of the Service; the probes speak plain HTTP"
    box = container(resources, GATEWAY)
    assert (
        box["livenessProbe"]["httpGet"]
        == box["startupProbe"]["httpGet"]
        == {"path": "/healthz", "port": "http"}
    )
    assert box["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    grace = pod(resources, GATEWAY)["terminationGracePeriodSeconds"]
    assert grace > settings.graceful_shutdown_s + box["lifecycle"]["preStop"]["sleep"]["seconds"]
    hpa = find(resources, "HorizontalPodAutoscaler", GATEWAY)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert box["resources"]["requests"]["cpu"], "CPU utilization is measured against the request"
    # At the fewest replicas, the limits each enforces during a Redis outage add up to the configured ones.
    assert settings.redis.outage_limit_fraction <= 1 / hpa["spec"]["minReplicas"]
    in_namespace = "redis://warden-redis:6379/0"
    expected = sample_secret("warden-redis", "url") if overlay == "external-redis" else in_namespace
    assert settings.redis.url.get_secret_value() == expected
    assert (settings.redis.password is None) == (overlay == "external-redis")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_path_the_gateway_reads_is_a_mounted_file(overlay: str, tmp_path: Path) -> None:
    resources = rendered(overlay)
    settings = gateway_settings(resources, tmp_path)
    read: set[tuple[str, str]] = set()
    for key, path in setting_paths(settings):
        volume, inside = mounted(resources, GATEWAY, path)
        if key == "policy_dir":
            assert inside == "." and "configMap" in volume, "the policies are a ConfigMap directory"
        elif key == "audit.directory":
            assert "persistentVolumeClaim" in volume and inside != ".", "the gateway makes its own directory"
        else:
            assert inside in files_of(resources, volume), f"{key}: {path} is not a file of {volume['name']}"
            read.add((volume["name"], inside))
    secret_volumes = [v for v in pod(resources, GATEWAY)["volumes"] if "secret" in v]
    assert {(v["name"], item["path"]) for v in secret_volumes for item in v["secret"]["items"]} <= read
    # Hot reload: the policy directory is mounted whole (a subPath mount is never updated) from a
    # ConfigMap without a content hash in its name, so an update changes it in place.
    mounts = {m["name"]: m for m in container(resources, GATEWAY)["volumeMounts"]}
    policies = [m for m in mounts.values() if m["mountPath"] == str(settings.policy_dir)]
    assert len(policies) == 1 and not {"subPath", "subPathExpr"} & policies[0].keys()
    policies_volume, _ = mounted(resources, GATEWAY, PurePosixPath(settings.policy_dir))
    assert policies_volume["configMap"]["name"] == "warden-policies"
    # One audit directory per pod on the shared claim, named by the pod (defined before it is used).
    assert mounts["audit"]["subPathExpr"] == "$(POD_NAME)"
    first = container(resources, GATEWAY)["env"][0]
    assert first == {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert settings.audit.directory is not None
    audit_volume, _ = mounted(resources, GATEWAY, PurePosixPath(settings.audit.directory))
    claim = find(resources, "PersistentVolumeClaim", audit_volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_arguments_parse_with_the_workers_command_line(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = rendered(overlay)
    args, settings = worker_settings(resources, monkeypatch)
    assert args.command == "serve"
    ports = container_ports(resources, WORKER)
    assert (settings.host, settings.port) == (EVERY_INTERFACE, ports["https"])
    assert (settings.metrics_host, settings.metrics_port) == (EVERY_INTERFACE, ports["metrics"])
    assert settings.tls.complete() and not settings.insecure_dev
    assert settings.tls.allowed_clients == ["warden-gateway"]
    read: set[tuple[str, str]] = set()
    for path in (settings.tls.cert, settings.tls.key, settings.tls.ca):
        volume, inside = mounted(resources, WORKER, PurePosixPath(str(path)))
        assert inside in files_of(resources, volume)
        read.add((volume["name"], inside))
    (pki,) = [v for v in pod(resources, WORKER)["volumes"] if v["name"] in {name for name, _ in read}]
    assert {(pki["name"], item) for item in files_of(resources, pki)} == read, "no file is mounted unread"
    assert settings.kv_cache_memory_mb == (8192 if overlay == "gpu" else 1024)
    env = pod_environment(resources, WORKER)
    assert env["OMP_NUM_THREADS"] == str(container(resources, WORKER)["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_lists_one_url_per_worker_pod(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = rendered(overlay)
    (pool,) = gateway_settings(resources, tmp_path).upstreams
    _, worker = worker_settings(resources, monkeypatch)
    assert worker.model_name in pool.models
    replicas = workload(resources, WORKER)["spec"]["replicas"]
    service = f"{WORKER}.{NAMESPACE}.svc.cluster.local"
    assert pool.workers == [f"https://{WORKER}-{n}.{service}:{worker.port}" for n in range(replicas)]


@pytest.mark.parametrize("name", [GATEWAY, WORKER])
def test_tracing_variables_are_accepted(name: str) -> None:
    env = pod_environment(rendered("cpu"), name)
    sampler_from_env(env)
    span_exporter("otlp", env)
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == f"k8s.namespace.name={NAMESPACE},k8s.pod.name={name}-0"
    assert urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"]).port == 4318


# -- network policies ------------------------------------------------------------------------------

OUTSIDE: dict[str, dict[str, Any]] = {
    "client": {"ip": "203.0.113.7"},
    "internet": {"ip": "198.51.100.20"},
    "external-redis": {"ip": "192.0.2.10"},
    "prometheus": {"namespace": "monitoring", "labels": {"app.kubernetes.io/name": "prometheus"}},
    "otel-collector": {"namespace": "monitoring", "labels": {"app.kubernetes.io/name": "otel-collector"}},
    "kube-dns": {"namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
}
ALLOWED = [
    ("client", GATEWAY, 8080, "TCP"),
    ("prometheus", GATEWAY, 9464, "TCP"),
    ("prometheus", WORKER, 9400, "TCP"),
    (GATEWAY, WORKER, 8000, "TCP"),
    (GATEWAY, "kube-dns", 53, "UDP"),
    (WORKER, "kube-dns", 53, "UDP"),
    (GATEWAY, "otel-collector", 4318, "TCP"),
    (WORKER, "otel-collector", 4318, "TCP"),
    (GATEWAY, "internet", 443, "TCP"),
]
DENIED = [
    ("client", WORKER, 8000, "TCP"),
    ("client", GATEWAY, 9464, "TCP"),
    ("prometheus", WORKER, 8000, "TCP"),
    (WORKER, WORKER, 8000, "TCP"),
    (WORKER, GATEWAY, 8080, "TCP"),
    (WORKER, "internet", 443, "TCP"),
    (GATEWAY, WORKER, 9400, "TCP"),
    (GATEWAY, "internet", 80, "TCP"),
    ("internet", WORKER, 9400, "TCP"),
]


def peer_matches(rule_peer: dict[str, Any], peer: dict[str, Any]) -> bool:
    if "ipBlock" in rule_peer:
        if "ip" not in peer:
            return False  # pods are told apart by their labels here
        block, address = rule_peer["ipBlock"], ipaddress.ip_address(peer["ip"])
        excluded = any(address in ipaddress.ip_network(cidr) for cidr in block.get("except", []))
        return address in ipaddress.ip_network(block["cidr"]) and not excluded
    if "namespace" not in peer:
        return False
    if "namespaceSelector" in rule_peer:
        if not selects(rule_peer["namespaceSelector"], {"kubernetes.io/metadata.name": peer["namespace"]}):
            return False
    elif peer["namespace"] != NAMESPACE:
        return False
    return selects(rule_peer.get("podSelector", {}), peer["labels"])


def admits(
    policies: list[Resource],
    direction: str,
    subject: dict[str, Any],
    other: dict[str, Any],
    port: int,
    protocol: str,
) -> bool:
    """Whether the policies selecting ``subject`` let it exchange with ``other`` (NetworkPolicy rules)."""
    if subject.get("namespace") != NAMESPACE:
        return True  # not ours to restrict
    peers_key = "from" if direction == "Ingress" else "to"
    selecting = [
        p["spec"]
        for p in policies
        if direction in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], subject["labels"])
    ]
    rules = [rule for spec in selecting for rule in spec.get(direction.lower(), [])]
    return not selecting or any(
        (
            not rule.get("ports")
            or any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in rule["ports"])
        )
        and (peers_key not in rule or any(peer_matches(peer, other) for peer in rule[peers_key]))
        for rule in rules
    )


def reachable(resources: list[Resource], source: str, target: str, port: int, protocol: str = "TCP") -> bool:
    peers: dict[str, dict[str, Any]] = {
        name: {"namespace": NAMESPACE, "labels": labels} for name, labels in pod_labels(resources).items()
    }
    peers |= OUTSIDE
    policies = of_kind(resources, "NetworkPolicy")
    sender, receiver = peers[source], peers[target]
    return admits(policies, "Egress", sender, receiver, port, protocol) and admits(
        policies, "Ingress", receiver, sender, port, protocol
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_only_the_gateway_reach_workers_and_redis(overlay: str) -> None:
    resources = rendered(overlay)
    allowed, denied = list(ALLOWED), list(DENIED)
    if overlay == "external-redis":
        allowed.append((GATEWAY, "external-redis", 6380, "TCP"))
        denied.append((WORKER, "external-redis", 6380, "TCP"))
    else:
        allowed.append((GATEWAY, REDIS, 6379, "TCP"))
        denied += [
            (WORKER, REDIS, 6379, "TCP"),
            ("client", REDIS, 6379, "TCP"),
            ("prometheus", REDIS, 6379, "TCP"),
        ]
        denied += [
            (REDIS, "internet", 443, "TCP"),
            (REDIS, GATEWAY, 8080, "TCP"),
            (GATEWAY, "external-redis", 6380, "TCP"),
        ]
    assert [case for case in allowed if not reachable(resources, *case)] == []
    assert [case for case in denied if reachable(resources, *case)] == []
    deny_all = find(resources, "NetworkPolicy", "warden-default-deny")["spec"]
    assert deny_all == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_name_real_pods_and_ports(overlay: str) -> None:
    resources = rendered(overlay)
    labels = pod_labels(resources)

    def chosen(selector: dict[str, Any]) -> list[str]:
        return [name for name, pod_label in labels.items() if selects(selector, pod_label)]

    for policy in of_kind(resources, "NetworkPolicy"):
        spec = policy["spec"]
        own = chosen(spec["podSelector"])
        assert own, f"{policy['metadata']['name']} selects no pod"
        own_ports = {port for name in own for port in container_ports(resources, name).values()}
        for rule in spec.get("ingress", []):
            assert {p["port"] for p in rule.get("ports", [])} <= own_ports, policy["metadata"]["name"]
        for rule in spec.get("egress", []):
            for peer in rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    targets = chosen(peer["podSelector"])
                    assert targets, f"{policy['metadata']['name']}: {peer} is no pod"
                    ports = {port for name in targets for port in container_ports(resources, name).values()}
                    assert {p["port"] for p in rule["ports"]} <= ports, policy["metadata"]["name"]


# -- mTLS: the worker certificate, the readiness probe ---------------------------------------------


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> set[str]:
    """One TLS handshake; the client identities the server saw."""
    server_end, _ = handshake_in_memory(server, client, hostname)
    return peer_identities(server_end.getpeercert())


def test_the_worker_certificate_names_every_worker_url(tmp_path: Path) -> None:
    (line,) = [line for line in readme_lines() if line.startswith("python -m gateway certs init")]
    args = gateway_parser().parse_args(shlex.split(line)[3:])
    paths, _ = init_pki(tmp_path / "pki", server_names=args.name)
    server = server_context(
        TlsFiles(ca=paths.ca_cert, cert=paths.worker_cert, key=paths.worker_key), require_client_cert=True
    )
    client = client_context(TlsFiles(ca=paths.ca_cert, cert=paths.gateway_cert, key=paths.gateway_key))
    (pool,) = gateway_settings(rendered("cpu"), tmp_path).upstreams
    allowed = set(worker_parser().parse_args(container(rendered("cpu"), WORKER)["args"]).allowed_clients)
    for host in [urlsplit(url).hostname or "" for url in pool.workers]:
        assert handshake(server, client, host) & allowed, host
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, client, f"{WORKER}-0.{WORKER}.elsewhere.svc.cluster.local")


def test_the_worker_readiness_probe_passes_once_the_model_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    resources = rendered("cpu")
    box = container(resources, WORKER)
    command = box["readinessProbe"]["exec"]["command"]
    assert box["startupProbe"]["exec"]["command"] == command
    python, isolated, flag, code, port = command
    assert (python, isolated, flag) == ("python", "-I", "-c")
    _, settings = worker_settings(resources, monkeypatch)
    assert int(port) == settings.metrics_port == container_ports(resources, WORKER)["metrics"]
    assert box["livenessProbe"]["tcpSocket"] == {"port": "https"}

    def probe(port: int) -> int:
        run = [sys.executable, "-I", "-c", code, str(port)]
        return subprocess.run(run, capture_output=True, timeout=30, check=False).returncode

    # The worker's own metrics registry, served as the worker serves it on its metrics port.
    engine: list[AsyncEngine] = []
    metrics = WorkerMetrics(lambda: engine[0] if engine else None)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        assert probe(server.server_port) == 1, "no engine gauges while the model loads: not ready"
        engine.append(loaded_engine())
        assert probe(server.server_port) == 0, "ready once the model is loaded"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert probe(server.server_port) == 1, "nothing listens: not ready"


# -- policies, rules and their hot reload ----------------------------------------------------------


def test_policy_copies_equal_the_repositorys_and_pass_policy_check() -> None:
    base = K8S / "base"
    originals = sorted((REPO / "policies").glob("*.yaml"))
    assert sorted(p.name for p in (base / "policies").iterdir()) == [p.name for p in originals]
    for original in originals:
        assert (base / "policies" / original.name).read_bytes() == original.read_bytes(), original.name
    assert (base / "rules" / "injection.yaml").read_bytes() == (
        REPO / "policies" / "rules" / "injection.yaml"
    ).read_bytes()
    load_rules(base / "rules" / "injection.yaml")
    check = [sys.executable, "-m", "gateway", "policy", "check", str(base / "policies")]
    result = subprocess.run(check, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    data = find(rendered("cpu"), "ConfigMap", "warden-policies")["data"]
    assert data == {p.name: p.read_text(encoding="utf-8") for p in originals}


def publish(volume: Path, version: str, files: dict[str, str], mtime: int) -> None:
    """Write a ConfigMap volume as the kubelet does: the files in a new timestamped directory, the
    `..data` symlink renamed over to it, a symlink per key through `..data`, the old directory removed."""
    previous = (volume / "..data").resolve() if (volume / "..data").exists() else None
    directory = volume / f"..{version}"
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
        os.utime(directory / name, (mtime, mtime))
    (volume / "..data_tmp").symlink_to(directory.name)
    (volume / "..data_tmp").replace(volume / "..data")
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")
    if previous is not None:
        shutil.rmtree(previous)


def test_a_config_map_update_reaches_the_policy_loader(tmp_path: Path) -> None:
    text = (K8S / "base" / "policies" / "default.yaml").read_text(encoding="utf-8")
    volume = tmp_path / "policies"
    volume.mkdir()
    publish(volume, "2026_01_01_00_00_00.1", {"default.yaml": text}, 1_767_225_600)
    store = PolicyStore(volume)
    assert store.current.files == ("default.yaml",) and not store.changed()
    edited = text.replace("max_tokens: 1024 ", "max_tokens: 2048 ", 1)  # the same size: the mtime tells
    assert edited != text and len(edited) == len(text)
    publish(volume, "2026_01_01_00_05_00.2", {"default.yaml": edited}, 1_767_225_900)
    first = store.current.version
    assert store.changed()
    assert store.reload() and store.current.version != first
    assert store.current.document.roles["member"].max_tokens == 2048


# -- overlays --------------------------------------------------------------------------------------


def test_the_gpu_overlay_runs_workers_on_gpus() -> None:
    gpu, cpu = rendered("gpu"), rendered("cpu")
    box = container(gpu, WORKER)
    assert box["image"] == f"warden-worker-cuda:{VERSION}"
    assert box["resources"]["limits"]["nvidia.com/gpu"] == box["resources"]["requests"]["nvidia.com/gpu"] == 1
    spec = pod(gpu, WORKER)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert (
        box["args"] == container(cpu, WORKER)["args"]
        and box["readinessProbe"] == container(cpu, WORKER)["readinessProbe"]
    )
    for overlay in ("cpu", "external-redis"):
        other = container(rendered(overlay), WORKER)
        assert other["image"] == f"warden-worker:{VERSION}" and "nvidia.com/gpu" not in str(
            other["resources"]
        )
        assert "nodeSelector" not in pod(rendered(overlay), WORKER)


def test_the_in_namespace_redis_keeps_nothing_and_wants_a_password() -> None:
    resources = rendered("cpu")
    box = container(resources, REDIS)
    args = box["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert box["env"] == [
        {
            "name": "REDIS_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "warden-redis-auth", "key": "password"}},
        }
    ]
    gateway_env = {var["name"]: var for var in container(resources, GATEWAY)["env"]}
    assert gateway_env["WARDEN_GATEWAY_REDIS__PASSWORD"]["valueFrom"] == box["env"][0]["valueFrom"]
    assert of_kind(resources, "PersistentVolumeClaim") == [
        find(resources, "PersistentVolumeClaim", "warden-audit")
    ]


def test_the_external_redis_overlay_has_no_redis_and_reads_the_url_from_a_secret() -> None:
    resources = rendered("external-redis")
    assert not [r for r in resources if r["metadata"]["name"].startswith(REDIS)]
    env = {var["name"]: var for var in container(resources, GATEWAY)["env"]}
    assert env["WARDEN_GATEWAY_REDIS__URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "warden-redis", "key": "url"}
    }
    assert "WARDEN_GATEWAY_REDIS__PASSWORD" not in env


# -- the README's Secrets --------------------------------------------------------------------------


def test_the_readme_makes_every_secret_the_pods_read_from_the_clis_files() -> None:
    created = readme_secrets()
    referenced = set().union(*(secret_refs(rendered(overlay)) for overlay in OVERLAYS))
    assert {(name, key) for name, keys in created.items() for key in keys} == referenced
    written = {p.name for p in PkiPaths(Path("pki")).all()} | {
        p.name for p in AuditKeyPaths(Path("keys")).all()
    }
    written |= {PUBLIC_NAME, PRIVATE_NAME}
    kept_off_the_cluster = {
        PkiPaths(Path("pki")).ca_key.name,
        AuditKeyPaths(Path("keys")).auditor_private.name,
        PRIVATE_NAME,
    }
    for keys in created.values():
        for key, source in keys.items():
            if source != "literal":
                assert PurePosixPath(source).name == key and key in written, (key, source)
            assert key not in kept_off_the_cluster, key
