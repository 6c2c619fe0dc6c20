"""The one-host compose deployment (deploy/compose) agrees with the code it runs.

No Docker daemon is reachable here, so nothing is built or started. The compose file is read as
Compose reads it (variables interpolated), every command goes through the services' own argument
parsers and every setting through their settings models, and the init service's script runs for
real in a temporary directory that stands in for its volumes. The files the gateway and the worker
are told to use are then checked to be the ones it made, and to work together: an mTLS handshake,
the audit keys, a development token minted as deploy/README.md says.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from backend.settings import ENV_PREFIX as WORKER_PREFIX
from backend.settings import WorkerSettings
from gateway.audit.keys import (
    load_auditor_private_key,
    load_auditor_public_key,
    load_signing_key,
    load_verify_key,
)
from gateway.auth.authenticator import Authenticator
from gateway.auth.settings import AuthSettings
from gateway.cli import build_parser as gateway_parser
from gateway.policy.rbac import RequestFacts, decide
from gateway.policy.store import load_policy_dir
from gateway.serving import peer_identities
from gateway.settings import ENV_PREFIX as GATEWAY_PREFIX
from gateway.settings import GatewaySettings, load_gateway_settings
from gateway.tls import TlsFiles, client_context, server_context
from gateway.tracing import sampler_from_env, span_exporter, tracing_from_env
from tests.support.tls_handshake import handshake_in_memory

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
OBSERVABILITY_ENV = COMPOSE_DIR / "observability.env"
DEPLOY_README = REPO / "deploy" / "README.md"
USER = "10001:10001"
PASSPHRASE = "a passphrase the auditors keep"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Services without a health check Docker can run, and why (also said in compose.yaml).
NO_HEALTH_CHECK = {"otel-collector": "its image has no shell or HTTP client; Prometheus scrapes it"}
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|PASSPHRASE|TOKEN|CREDENTIAL", re.IGNORECASE)
SECRET_FLAG = re.compile(r"^--(requirepass|password|passphrase|secret|api-key|token)(=|$)")

Service = dict[str, Any]

# -- reading the compose file as Compose does ------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_]\w*)(?::-(?P<default>[^}]*))?\}|\$(?P<plain>[A-Za-z_]\w*)|\$"
)


def _interpolate_text(text: str, variables: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("plain")
        if name is None:
            raise AssertionError(f"compose.yaml: invalid interpolation in {text!r} (write $$ for a $)")
        value = variables.get(name, "")
        default = match.group("default")
        return default if default is not None and not value else value

    return _INTERPOLATION.sub(replace, text)


def interpolate(node: Any, variables: Mapping[str, str]) -> Any:
    """``$$``, ``${NAME}``, ``${NAME:-default}`` and ``$NAME`` in every string value; other forms fail."""
    if isinstance(node, str):
        return _interpolate_text(node, variables)
    if isinstance(node, list):
        return [interpolate(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, variables) for key, value in node.items()}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not NAME=VALUE"
        values[name.strip()] = value.strip()
    return values


@functools.cache
def load_compose(observability: bool = False) -> dict[str, Any]:
    """The compose file as it runs by default, or with ``--env-file observability.env``."""
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    variables = read_env_file(OBSERVABILITY_ENV) if observability else {}
    result = interpolate(document, variables)
    assert isinstance(result, dict)
    return result


def services(observability: bool = False) -> dict[str, Service]:
    found: dict[str, Service] = load_compose(observability)["services"]
    return found


def service(name: str, observability: bool = False) -> Service:
    return services(observability)[name]


def environment(svc: Service) -> dict[str, str]:
    raw = svc.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(name): str(value) for name, value in raw.items()}


def networks_of(name: str) -> set[str]:
    return set(service(name).get("networks", []))


def dockerfile_of(svc: Service) -> Path:
    build = svc["build"]
    return (COMPOSE_DIR / str(build["context"])).resolve() / str(build["dockerfile"])


@dataclass(frozen=True)
class Mount:
    source: str  # a named volume, or a path relative to deploy/compose
    target: str
    read_only: bool

    @property
    def bind(self) -> bool:
        return self.source.startswith((".", "/"))

    def host(self) -> Path:
        return (COMPOSE_DIR / self.source).resolve()


def mounts(svc: Service) -> list[Mount]:
    result = []
    for entry in svc.get("volumes", []):
        source, target, *options = str(entry).split(":")
        result.append(Mount(source, target, "ro" in options))
    return result


def mount_of(svc: Service, path: str) -> tuple[Mount, str]:
    """The mount that holds ``path`` inside the container, and the rest of the path below it."""
    found = [m for m in mounts(svc) if path == m.target or path.startswith(m.target.rstrip("/") + "/")]
    assert found, f"{path} is on none of the service's volumes or bind mounts"
    mount = max(found, key=lambda m: len(m.target))
    return mount, path[len(mount.target) :].lstrip("/")


def volume_dir(root: Path, volume: str) -> Path:
    """Where the init run under ``root`` keeps the named volume ``volume`` (init's mount point)."""
    (mount,) = [m for m in mounts(service("init")) if m.source == volume]
    return root / mount.target.lstrip("/")


def host_path(root: Path, service_name: str, path: str | Path) -> Path:
    """The file a container path of ``service_name`` stands for: in the repository or in a volume."""
    mount, rest = mount_of(service(service_name), str(path))
    base = mount.host() if mount.bind else volume_dir(root, mount.source)
    return base / rest if rest else base


def repository_path(service_name: str, path: str) -> Path:
    """The repository file that a bind mount of ``service_name`` shows at ``path``."""
    mount, rest = mount_of(service(service_name), path)
    assert mount.bind, f"{service_name}: {path} is not bind-mounted from the repository"
    return mount.host() / rest if rest else mount.host()


# -- the settings models ---------------------------------------------------------------------------


def _reachable(annotation: Any) -> Any:
    """The model (or ``dict``) a nested settings name can reach inside ``annotation``; None: a leaf."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is dict:
        return dict
    if origin in (list, tuple):
        return None
    for arg in typing.get_args(annotation):
        found = _reachable(arg)
        if found is not None:
            return found
    return None


def is_settings_field(model: type[BaseModel], variable: str, prefix: str) -> bool:
    """Whether ``PREFIX_A__B`` names a field of ``model``, as gateway.config reads variables."""
    path = [part.lower() for part in variable[len(prefix) :].split("__") if part]
    current: Any = model
    for part in path:
        if current is dict:
            return True  # a mapping's keys are free (e.g. cache key versions)
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return False
        field = current.model_fields.get(part)
        if field is None:
            return False
        current = _reachable(field.annotation)
    return bool(path)


def _mentions_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_mentions_secret(arg) for arg in typing.get_args(annotation))


def secret_fields_set(model: type[BaseModel], data: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Every field typed as a secret (``SecretStr``) that ``data`` gives a value, by dotted name."""
    found: dict[str, Any] = {}
    for name, value in data.items():
        field = model.model_fields.get(name)
        assert field is not None, f"{where}{name}: not a settings field"
        if _mentions_secret(field.annotation):
            found[f"{where}{name}"] = value
        inner = _reachable(field.annotation)
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if isinstance(inner, type) and issubclass(inner, BaseModel) and isinstance(item, Mapping):
                label = f"{where}{name}[{index}]." if isinstance(value, list) else f"{where}{name}."
                found.update(secret_fields_set(inner, item, label))
    return found


def parse_worker_command(argv: list[str]) -> WorkerSettings:
    """The worker's settings from its command line, as ``python -m backend serve`` builds them."""
    # Imported here: backend.cli loads torch (seconds), which the init run started earlier overlaps.
    from backend.cli import build_parser, settings_from_args

    return settings_from_args(build_parser().parse_args(argv))


def worker_settings(monkeypatch: pytest.MonkeyPatch) -> WorkerSettings:
    for name, value in environment(service("worker")).items():
        monkeypatch.setenv(name, value)
    return parse_worker_command(service("worker")["command"])


# -- the init service, run for real ----------------------------------------------------------------


def init_command() -> list[str]:
    shell, script = service("init")["entrypoint"]
    return [shell, str(repository_path("init", script))]


def init_environment(root: Path, **extra: str) -> dict[str, str]:
    # `python` is this test run's interpreter, as it is the image's in the container.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    return {**os.environ, "PATH": path, "WARDEN_INIT_ROOT": str(root), **extra}


def run_init(root: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        init_command(), env=init_environment(root, **extra), capture_output=True, text=True, timeout=120
    )


class InitRun:
    """init.sh as the init service runs it, under a temporary root standing in for its volumes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        init = service("init")
        for mount in mounts(init):
            if not mount.bind:
                (root / mount.target.lstrip("/")).mkdir(parents=True)  # an empty named volume
        for name in init.get("secrets", []):
            secret = root / "run" / "secrets" / name
            secret.parent.mkdir(parents=True, exist_ok=True)
            secret.write_text(PASSPHRASE, encoding="utf-8")
        self._process = subprocess.Popen(
            init_command(),
            env=init_environment(root),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._output: str | None = None

    def wait(self) -> str:
        if self._output is None:
            self._output, _ = self._process.communicate(timeout=120)
            assert self._process.returncode == 0, f"init.sh failed:\n{self._output}"
        return self._output

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.communicate()


@pytest.fixture(scope="module", autouse=True)
def init_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InitRun]:
    """Started before this module's first test: its three CLI runs take a few seconds, in which the
    tests that do not need its output (the worker's parser loads torch) run alongside."""
    run = InitRun(tmp_path_factory.mktemp("init"))
    yield run
    run.stop()


@pytest.fixture(scope="module")
def volumes(init_run: InitRun) -> Path:
    """The root under which the init run made its volumes, once it has finished."""
    init_run.wait()
    return init_run.root


@dataclass(frozen=True)
class Launch:
    argv: list[str]  # what the gateway container's `python` receives
    environ: dict[str, str]


@pytest.fixture(scope="module")
def gateway_launch(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> Launch:
    """The gateway's entrypoint run as compose runs it (its volumes from the init run), with a
    stand-in `python` that records the arguments and environment the gateway would start with."""
    gateway = service("gateway")
    shell, flag, script, name = gateway["entrypoint"]
    for mount in sorted(mounts(gateway), key=lambda m: -len(m.target)):
        if not mount.bind and mount.target in script:
            script = script.replace(mount.target, str(volume_dir(volumes, mount.source)))
    bin_dir = tmp_path_factory.mktemp("bin")
    record = bin_dir / "record"
    stub = bin_dir / "python"
    stub.write_text('#!/bin/sh\nprintf "%s\\0" "$@" > "$RECORD.args"\nenv -0 > "$RECORD.env"\n')
    stub.chmod(0o755)
    environ = {**environment(gateway), "PATH": f"{bin_dir}:/usr/bin:/bin", "RECORD": str(record)}
    subprocess.run([shell, flag, script, name, *gateway["command"]], env=environ, check=True, timeout=30)
    argv = Path(f"{record}.args").read_text(encoding="utf-8").split("\0")[:-1]
    started: dict[str, str] = {}
    for entry in Path(f"{record}.env").read_text(encoding="utf-8").split("\0")[:-1]:
        key, _, value = entry.partition("=")
        if key not in {"RECORD", "PATH", "PWD", "SHLVL", "_"}:
            started[key] = value
    return Launch(argv, started)


@pytest.fixture(scope="module")
def gateway_settings(gateway_launch: Launch, volumes: Path) -> GatewaySettings:
    """The gateway's settings as `python -m gateway serve` loads them in its container."""
    args = gateway_parser().parse_args(gateway_launch.argv[2:])
    return load_gateway_settings(
        host_path(volumes, "gateway", args.config),
        environ=gateway_launch.environ,
        overrides={"host": args.host, "port": args.port},
    )


def readme_tools_commands() -> list[list[str]]:
    """The `docker compose run --rm tools ...` commands that deploy/README.md tells people to run."""
    text = DEPLOY_README.read_text(encoding="utf-8")
    found = re.findall(r"docker compose run --rm (?:-T )?tools ([^)`\n]+)", text)
    assert found, "deploy/README.md shows no tools command"
    return [shlex.split(command) for command in found]


def readme_command(*prefix: str) -> list[str]:
    (command,) = [c for c in readme_tools_commands() if c[: len(prefix)] == list(prefix)]
    return command


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# -- the file itself ------------------------------------------------------------------------------


def test_compose_file_parses_and_every_service_has_an_image_we_can_build_or_a_pinned_one() -> None:
    document = load_compose()
    assert set(document) - {"name", "services", "networks", "volumes", "secrets"} <= {
        key for key in document if key.startswith("x-")
    }
    for name, svc in services().items():
        image = svc["image"]
        if "build" in svc:
            assert dockerfile_of(svc).is_file(), f"{name}: {dockerfile_of(svc)} does not exist"
            same_image = [other for other in services().values() if other["image"] == image]
            assert all(other.get("build") == svc["build"] for other in same_image), image
        else:
            # A version tag, never an implicit or explicit `latest`.
            assert re.fullmatch(r"[\w./-]+:v?\d+(\.\d+)*[\w.-]*", image), f"{name}: {image} is not pinned"


def test_every_volume_network_and_secret_a_service_uses_is_declared() -> None:
    document = load_compose()
    for name, svc in services().items():
        for mount in mounts(svc):
            if not mount.bind:
                assert mount.source in document["volumes"], f"{name}: volume {mount.source}"
        for network in svc.get("networks", []):
            assert network in document["networks"], f"{name}: network {network}"
        for secret in svc.get("secrets", []):
            assert secret in document["secrets"], f"{name}: secret {secret}"


def test_every_bind_mounted_path_exists_in_the_repository() -> None:
    for name, svc in services().items():
        for mount in mounts(svc):
            if mount.bind:
                assert mount.host().exists(), f"{name}: {mount.source} does not exist"
                assert mount.host().is_relative_to(REPO), f"{name}: {mount.source} is outside the repository"


def test_every_service_runs_as_10001_read_only_without_capabilities() -> None:
    for name, svc in services().items():
        assert svc.get("user") == USER, name
        assert svc.get("read_only") is True, name
        assert "/tmp" in svc.get("tmpfs", []), name
        assert svc.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name


def test_every_long_running_service_has_a_health_check_and_dependencies_wait_for_it() -> None:
    for name, svc in services().items():
        check = svc.get("healthcheck")
        if svc.get("restart") == "no":
            assert check == {"disable": True}, f"{name} is one-shot: it must not inherit the image's check"
        elif check is None:
            text = dockerfile_of(svc).read_text(encoding="utf-8")
            assert re.search(r"^HEALTHCHECK ", text, re.MULTILINE), f"{name}: no health check in its image"
        elif check.get("disable"):
            assert name in NO_HEALTH_CHECK, f"{name}: health check disabled"
        else:
            assert check["test"][0] in ("CMD", "CMD-SHELL"), name
    for svc in services().values():
        for dependency, condition in svc.get("depends_on", {}).items():
            wanted = condition["condition"]
            if wanted == "service_healthy":
                assert service(dependency).get("healthcheck", {}).get("disable") is not True, dependency
            elif wanted == "service_completed_successfully":
                assert service(dependency).get("restart") == "no", dependency
    assert service("gateway")["depends_on"] == {
        "init": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
        "worker": {"condition": "service_healthy"},
    }
    assert service("worker")["depends_on"] == {"init": {"condition": "service_completed_successfully"}}


def members(network: str) -> set[str]:
    return {name for name in services() if network in networks_of(name)}


def test_redis_and_the_worker_are_reached_by_the_gateway_alone_and_reach_nothing_outside() -> None:
    document = load_compose()
    internal = {name for name, net in document["networks"].items() if net and net.get("internal")}
    for name in ("redis", "worker"):
        assert networks_of(name) and networks_of(name) <= internal, f"{name} is on a network with a way out"
        assert "ports" not in service(name), f"{name} must not be published"
    # Redis: only on networks shared with the gateway alone.
    assert all(members(network) == {"gateway", "redis"} for network in networks_of("redis"))
    # The worker: its API link is a network of its own with the gateway; its other network carries
    # metrics and traces to the observability services (its API there still needs a client certificate).
    assert [network for network in networks_of("worker") if members(network) == {"gateway", "worker"}]
    observability = {name for name, svc in services().items() if "observability" in svc.get("profiles", [])}
    for network in networks_of("worker"):
        assert members(network) <= {"gateway", "worker", *observability}, network
    for name in ("init", "tools"):
        assert service(name)["network_mode"] == "none", name
    for name, svc in services().items():
        for port in svc.get("ports", []):
            assert isinstance(port, dict) and port["host_ip"] == "127.0.0.1", (
                f"{name} publishes beyond this host"
            )


def test_redis_keeps_nothing_on_disk() -> None:
    command = service("redis")["command"]
    assert command[0] == "redis-server"
    assert option(command, "--save") == "" and option(command, "--appendonly") == "no"


# -- commands, through the services' own parsers ---------------------------------------------------


def test_the_gateway_command_parses_and_its_entrypoint_execs_the_gateway() -> None:
    gateway = service("gateway")
    shell, flag, script, _name = gateway["entrypoint"]
    assert (shell, flag) == ("/bin/sh", "-ec")
    assert script.strip().splitlines()[-1] == 'exec python -m gateway "$@"'
    args = gateway_parser().parse_args(gateway["command"])
    assert args.command == "serve"
    mount, _ = mount_of(gateway, args.config)
    assert mount.bind and mount.read_only


def test_the_init_script_calls_only_real_gateway_commands() -> None:
    script = repository_path("init", service("init")["entrypoint"][1]).read_text(encoding="utf-8")
    calls = re.findall(r"^\s*python -m gateway (.+)$", script, re.MULTILINE)
    assert {shlex.split(call)[0] for call in calls} == {"certs", "audit", "token"}
    for call in calls:
        gateway_parser().parse_args(shlex.split(call))


def test_the_tools_service_and_the_readme_commands_parse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        gateway_parser().parse_args(service("tools")["command"])
    assert exited.value.code == 0
    capsys.readouterr()
    for argv in readme_tools_commands():
        gateway_parser().parse_args(argv)
        for word in argv:
            if word.startswith("/"):
                mount_of(service("tools"), word)  # every path is on one of the tools' mounts


def test_the_worker_command_parses_into_mtls_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = worker_settings(monkeypatch)
    assert settings.tls.complete() and not settings.insecure_dev
    assert settings.tls.allowed_clients == ["warden-gateway"]
    for path in (settings.tls.cert, settings.tls.key, settings.tls.ca):
        mount, _ = mount_of(service("worker"), str(path))
        assert not mount.bind and mount.read_only


def test_tracing_is_off_unless_the_observability_env_file_is_used() -> None:
    for name in ("gateway", "worker"):
        assert tracing_from_env("warden-test", environment(service(name))) is None, name
        traced = environment(service(name, observability=True))
        endpoint = urlsplit(traced["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert endpoint.scheme == "http" and endpoint.hostname in services(observability=True)
        span_exporter("otlp", traced)  # an exporter the services accept (OTLP over HTTP)
        sampler_from_env(traced)
        assert networks_of(name) & networks_of(str(endpoint.hostname)), f"{name} cannot reach the collector"
    profiles = read_env_file(OBSERVABILITY_ENV)["COMPOSE_PROFILES"].split(",")
    assert profiles == ["observability"]
    collector = urlsplit(environment(service("gateway", observability=True))["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert service(str(collector.hostname)).get("profiles") == ["observability"]


# -- observability files ---------------------------------------------------------------------------


def test_the_collector_receives_otlp_http_where_the_services_send_it_and_forwards_nothing() -> None:
    collector = service("otel-collector")
    (mount,) = mounts(collector)
    config = yaml.safe_load(mount.host().read_text(encoding="utf-8"))
    assert collector["command"] == [f"--config={mount.target}"]
    endpoint = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    host, _, port = endpoint.rpartition(":")
    sent = urlsplit(environment(service("gateway", observability=True))["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert int(port) == sent.port == 4318 and host not in LOOPBACK
    for pipeline in config["service"]["pipelines"].values():
        for exporter in pipeline["exporters"]:
            assert exporter.split("/")[0] in {"debug", "file"}, f"{exporter} would send data elsewhere"


def test_grafana_provisions_prometheus_and_the_warden_dashboard() -> None:
    grafana = service("grafana")
    provisioning_mount, _ = mount_of(grafana, environment(grafana)["GF_PATHS_PROVISIONING"])
    provisioning = provisioning_mount.host()
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    url = urlsplit(datasource["url"])
    prometheus = service("prometheus")
    listen = option_value(prometheus["command"], "--web.listen-address")
    assert url.hostname == "prometheus" and url.port == int(listen.rpartition(":")[2])
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    assert networks_of("grafana") & networks_of("prometheus")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "warden.yaml").read_text())["providers"]
    folder = provider["options"]["path"]
    dashboards = [m for m in mounts(grafana) if m.target.startswith(folder.rstrip("/") + "/")]
    assert [m.host() for m in dashboards] == [REPO / "deploy" / "grafana" / "warden-dashboard.json"]
    assert json.loads(dashboards[0].host().read_text(encoding="utf-8"))["uid"] == "warden-overview"


def option_value(argv: list[str], name: str) -> str:
    (value,) = [word.partition("=")[2] for word in argv if word.startswith(f"{name}=")]
    return value


# -- secrets ---------------------------------------------------------------------------------------


def test_no_secret_is_written_in_the_compose_file_or_the_settings_it_mounts() -> None:
    for name, svc in services().items():
        for variable, value in environment(svc).items():
            if SECRET_NAME.search(variable):
                # Only a file name, of a secret mounted in this service.
                assert variable.endswith("_FILE"), f"{name}: {variable} holds a secret inline"
                assert value.startswith("/run/secrets/") and value.rpartition("/")[2] in svc["secrets"]
        words = [*svc.get("entrypoint", []), *svc.get("command", [])]
        assert not [word for word in words if SECRET_FLAG.match(str(word))], (
            f"{name}: a secret on its command line"
        )
    for secret in load_compose()["secrets"].values():
        assert set(secret) == {"file"} and secret["file"].startswith("./secrets/"), secret
    ignored = (COMPOSE_DIR / "secrets" / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert [line for line in ignored if line and not line.startswith("#")] == ["*", "!.gitignore"]
    settings_file = repository_path("gateway", option(service("gateway")["command"], "--config"))
    inline = secret_fields_set(GatewaySettings, yaml.safe_load(settings_file.read_text(encoding="utf-8")))
    # redis.url is typed as a secret because a URL can carry a password; this one carries none.
    assert set(inline) <= {"redis.url"} and urlsplit(inline.get("redis.url", "")).password is None


# -- what the init service makes, and the services that use it -------------------------------------


def test_the_gateway_starts_with_the_generated_secrets_exported(
    gateway_launch: Launch, volumes: Path
) -> None:
    assert gateway_launch.argv == ["-m", "gateway", *service("gateway")["command"]]
    env_dir = volume_dir(volumes, "gateway-keys") / "env"
    files = {path.name: path for path in env_dir.iterdir()}
    assert {"WARDEN_GATEWAY_AUDIT__HMAC_KEY", "WARDEN_GATEWAY_CACHE__KEY_SECRET"} <= set(files)
    exported = {k: v for k, v in gateway_launch.environ.items() if k.startswith(GATEWAY_PREFIX)}
    assert exported == {name: path.read_text(encoding="utf-8") for name, path in files.items()}
    for path in files.values():
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_every_warden_variable_names_a_settings_field(gateway_launch: Launch) -> None:
    variables = dict(gateway_launch.environ)
    for svc in services(observability=True).values():
        variables.update(environment(svc))
    for name in variables:
        if name.startswith(GATEWAY_PREFIX):
            assert is_settings_field(GatewaySettings, name, GATEWAY_PREFIX), name
        elif name.startswith(WORKER_PREFIX):
            assert is_settings_field(WorkerSettings, name, WORKER_PREFIX), name


def test_the_gateway_settings_load_with_audit_cache_and_metrics_configured(
    gateway_settings: GatewaySettings,
) -> None:
    assert gateway_settings.audit.enabled and gateway_settings.cache.configured
    assert gateway_settings.metrics.port is not None and gateway_settings.metrics.host not in LOOPBACK
    assert gateway_settings.host not in LOOPBACK and gateway_settings.tls is None
    (audit_mount, _) = mount_of(service("gateway"), str(gateway_settings.audit.directory))
    assert not audit_mount.bind and not audit_mount.read_only
    (policy_mount, _) = mount_of(service("gateway"), str(gateway_settings.policy_dir))
    assert policy_mount.bind and policy_mount.read_only


def test_ports_host_names_and_networks_agree_across_services(
    gateway_settings: GatewaySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = worker_settings(monkeypatch)
    (published,) = service("gateway")["ports"]
    assert published["target"] == gateway_settings.port
    (upstream,) = gateway_settings.upstreams
    (url,) = [urlsplit(worker_url) for worker_url in upstream.workers]
    assert url.hostname == "worker" and url.port == worker.port and worker.host not in LOOPBACK
    assert any(fnmatch.fnmatchcase(worker.model_name, pattern) for pattern in upstream.models)
    assert networks_of("gateway") & networks_of("worker")
    redis = urlsplit(gateway_settings.redis.url.get_secret_value())
    assert redis.hostname == "redis" and redis.port == 6379 and "--port" not in service("redis")["command"]
    assert networks_of("gateway") & networks_of("redis")
    prometheus = service("prometheus")
    (config_mount,) = mounts(prometheus)
    assert option_value(prometheus["command"], "--config.file") == config_mount.target
    scrape = yaml.safe_load(config_mount.host().read_text(encoding="utf-8"))
    targets = {
        t for job in scrape["scrape_configs"] for group in job["static_configs"] for t in group["targets"]
    }
    assert f"gateway:{gateway_settings.metrics.port}" in targets
    assert f"worker:{worker.metrics_port}" in targets and worker.metrics_host not in LOOPBACK
    for target in targets:
        assert networks_of("prometheus") & networks_of(target.partition(":")[0]), target


def test_the_files_the_gateway_and_worker_use_are_the_ones_init_made(
    gateway_settings: GatewaySettings, volumes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = worker_settings(monkeypatch)
    (upstream,) = gateway_settings.upstreams
    used = {
        "gateway": [
            upstream.tls.ca,
            upstream.tls.cert,
            upstream.tls.key,
            gateway_settings.audit.auditor_public_key,
            gateway_settings.audit.signing_key,
            *[key.pem for issuer in gateway_settings.auth.issuers for key in issuer.keys],
        ],
        "worker": [worker.tls.ca, worker.tls.cert, worker.tls.key],
    }
    made_by_init = {mount.source for mount in mounts(service("init")) if not mount.bind}
    for name, paths in used.items():
        files = {host_path(volumes, name, str(path)) for path in paths if path is not None}
        for file in files:
            assert file.is_file(), f"{name} uses {file}, which init did not make"
        # Every private key visible to the service is one it uses (no one else's key leaks in).
        for mount in mounts(service(name)):
            if mount.bind or mount.source not in made_by_init:
                continue
            for file in volume_dir(volumes, mount.source).rglob("*.pem"):
                if b"PRIVATE KEY" in file.read_bytes():
                    assert file in files, f"{name} can read {file.name}, a key it has no use for"
                    assert file.stat().st_mode & 0o777 == 0o600, file
    assert not list((volumes / "run").rglob("ca-key.pem")), "the CA's private key must not be kept"


def test_the_gateway_and_worker_complete_an_mtls_handshake_with_those_files(
    gateway_settings: GatewaySettings, volumes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = worker_settings(monkeypatch)
    (upstream,) = gateway_settings.upstreams

    def on_host(name: str, path: Path | None) -> Path | None:
        return None if path is None else host_path(volumes, name, str(path))

    client = client_context(
        TlsFiles(
            ca=on_host("gateway", upstream.tls.ca),
            cert=on_host("gateway", upstream.tls.cert),
            key=on_host("gateway", upstream.tls.key),
        ),
        check_hostname=upstream.tls.check_hostname,
    )
    server = server_context(
        TlsFiles(
            ca=on_host("worker", worker.tls.ca),
            cert=on_host("worker", worker.tls.cert),
            key=on_host("worker", worker.tls.key),
        ),
        require_client_cert=True,
    )
    hostname = urlsplit(upstream.workers[0]).hostname
    assert hostname is not None
    server_end, _ = handshake_in_memory(server, client, hostname)
    peer = server_end.getpeercert()
    assert peer is not None
    assert peer_identities(peer) & set(worker.tls.allowed_clients), "the worker would refuse the gateway"


def test_the_audit_keys_fit_together(gateway_settings: GatewaySettings, volumes: Path) -> None:
    audit = gateway_settings.audit
    assert audit.auditor_public_key is not None and audit.signing_key is not None
    public = load_auditor_public_key(host_path(volumes, "gateway", audit.auditor_public_key))
    signing = load_signing_key(host_path(volumes, "gateway", audit.signing_key))
    read = readme_command("audit", "read")
    private = load_auditor_private_key(
        host_path(volumes, "tools", option(read, "--key")), PASSPHRASE.encode()
    )
    assert private.public_key().public_bytes_raw() == public.public_bytes_raw()
    verify = readme_command("audit", "verify")
    verify_key = load_verify_key(host_path(volumes, "tools", option(verify, "--signing-key")))
    assert verify_key.public_bytes_raw() == signing.public_key().public_bytes_raw()
    assert audit.hmac_key is not None
    auditors_copy = volume_dir(volumes, "auditor") / "audit-hmac-key"
    assert auditors_copy.read_text(encoding="utf-8") == audit.hmac_key.get_secret_value()


def test_a_token_minted_as_the_readme_says_is_accepted_and_allowed(
    gateway_settings: GatewaySettings, volumes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mint = readme_command("token", "mint")
    key = host_path(volumes, "tools", option(mint, "--key"))
    args = gateway_parser().parse_args([str(key) if word == option(mint, "--key") else word for word in mint])
    assert args.handler(args) == 0
    token = capsys.readouterr().out.strip()

    auth = gateway_settings.auth.model_dump()
    for issuer in auth["issuers"]:
        for entry in issuer["keys"]:
            entry["pem"] = host_path(volumes, "gateway", entry["pem"])

    async def authenticate() -> Mapping[str, Any]:
        authenticator = Authenticator(AuthSettings.model_validate(auth))
        await authenticator.start()
        try:
            return (await authenticator.authenticate(f"Bearer {token}")).claims
        finally:
            await authenticator.aclose()

    claims = asyncio.run(authenticate())
    policy = load_policy_dir(host_path(volumes, "gateway", str(gateway_settings.policy_dir)))
    (upstream,) = gateway_settings.upstreams
    for model in upstream.models:
        decision = decide(policy, claims, RequestFacts("chat.completions", model=model))
        assert decision.allowed, decision.reason


def test_a_second_init_run_keeps_everything(volumes: Path) -> None:
    before = {path: path.read_bytes() for path in (volumes / "run").rglob("*") if path.is_file()}
    second = run_init(volumes)
    assert second.returncode == 0, second.stderr
    assert {path: path.read_bytes() for path in (volumes / "run").rglob("*") if path.is_file()} == before
    assert "issued" not in second.stdout and "created" not in second.stdout


def test_init_refuses_to_replace_a_partial_set_of_audit_keys(volumes: Path, tmp_path: Path) -> None:
    copy = tmp_path / "root"
    shutil.copytree(volumes, copy)
    (volume_dir(copy, "auditor") / "auditor-key.pem").unlink()
    signing_key = volume_dir(copy, "gateway-keys") / "signing-key.pem"
    before = signing_key.read_bytes()
    refused = run_init(copy)
    assert refused.returncode == 1
    assert "partial set of audit keys" in refused.stderr
    assert signing_key.read_bytes() == before
