"""The images (deploy/docker/*.Dockerfile) are built the way the project installs itself, run as
the compose file and the settings expect, and carry no secret.

No Docker daemon or registry is reachable here, so the images are not built: each Dockerfile is
read (a small parser below: logical lines, stages, exec-form JSON, shell words), its commands go
through the services' own argument parsers, and its health checks run against stand-in servers.
"""

from __future__ import annotations

import http.server
import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest
import yaml

from backend.metrics import WorkerMetrics
from gateway.cli import build_parser as gateway_parser
from gateway.guards.settings import InjectionSettings
from tests.deploy.test_compose import (
    REPO,
    dockerfile_of,
    mounts,
    option,
    parse_worker_command,
    service,
    services,
)
from tests.support.engine_stats import loaded_engine

if TYPE_CHECKING:
    pass

DOCKERFILES = sorted((REPO / "deploy" / "docker").glob("*.Dockerfile"))
DOCKERIGNORE = REPO / ".dockerignore"
ENTRYPOINTS = {"gateway": ["python", "-m", "gateway"], "worker": ["python", "-m", "backend"]}
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|PASSPHRASE|TOKEN|CREDENTIAL", re.IGNORECASE)
TORCH = "torch==2.13.0"

# -- reading a Dockerfile --------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    value: str  # the rest of the logical line, continuation lines joined

    def exec_form(self) -> list[str]:
        words = json.loads(self.value)
        assert isinstance(words, list) and all(isinstance(w, str) for w in words), self.value
        return words


@dataclass(frozen=True)
class Stage:
    base: str  # the FROM image, global ARG defaults substituted
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]

    def args(self) -> dict[str, str]:
        """The stage's ARG defaults."""
        return dict(_assignment(i.value) for i in self.all("ARG"))

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            values.update(_assignment(word) for word in shlex.split(instruction.value))
        return values


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    global_args: dict[str, str]  # ARGs before the first FROM
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def kind(self) -> str:
        entrypoint = self.final.last("ENTRYPOINT").exec_form()
        (kind,) = [name for name, expected in ENTRYPOINTS.items() if expected == entrypoint]
        return kind

    def instructions(self) -> Iterator[tuple[Stage, Instruction]]:
        for stage in self.stages:
            for instruction in stage.instructions:
                yield stage, instruction


def _assignment(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    return name, value.strip('"')


def _expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), text)


def read_dockerfile(path: Path) -> Dockerfile:
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments and blank lines, also inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: the last instruction ends with a continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        instruction = Instruction(keyword.upper(), value.strip())
        if instruction.keyword == "FROM":
            base = _expand(instruction.value.split()[0], global_args)
            stages.append(Stage(base, []))
        elif not stages:
            assert instruction.keyword == "ARG", f"{path.name}: {keyword} before the first FROM"
            global_args.update([_assignment(instruction.value)])
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(path, global_args, stages)


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a RUN line (split at `&&`, `||`, `;`, `|`; `if`/`then` dropped)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        elif commands[-1] or token not in {"if", "then", "else", "do", "fi", "done"}:
            commands[-1].append(token)
    return [command for command in commands if command]


@dataclass
class PipInstall:
    requirements: list[str] = field(default_factory=list)  # positional requirement specifiers
    files: list[str] = field(default_factory=list)  # -r
    constraints: list[str] = field(default_factory=list)  # -c
    flags: set[str] = field(default_factory=set)
    index_url: str | None = None


def pip_installs(dockerfile: Dockerfile) -> list[PipInstall]:
    """Every `pip install` of every RUN line, in build order, with ARG defaults substituted."""
    installs: list[PipInstall] = []
    for stage, instruction in dockerfile.instructions():
        if instruction.keyword != "RUN":
            continue
        for words in shell_commands(instruction.value):
            if words[:2] == ["pip", "install"]:
                rest = words[2:]
            elif words[1:4] == ["-m", "pip", "install"]:
                rest = words[4:]
            else:
                continue
            variables = {**dockerfile.global_args, **stage.args()}
            install = PipInstall()
            values = iter(_expand(word, variables) for word in rest)
            for word in values:
                if word in ("-r", "--requirement"):
                    install.files.append(next(values))
                elif word in ("-c", "--constraint"):
                    install.constraints.append(next(values))
                elif word in ("-i", "--index-url"):
                    install.index_url = next(values)
                elif word in ("--extra-index-url", "-f", "--find-links"):
                    raise AssertionError(f"{dockerfile.path.name}: {word} mixes package sources")
                elif word.startswith("-"):
                    install.flags.add(word)
                else:
                    install.requirements.append(word)
            installs.append(install)
    return installs


# -- what .dockerignore keeps out of the build context ----------------------------------------------


def _glob_to_regex(pattern: str) -> str:
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        elif pattern[index] == "*":
            parts.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            parts.append("[^/]")
            index += 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            parts.append(pattern[index : end + 1])
            index = end + 1
        else:
            parts.append(re.escape(pattern[index]))
            index += 1
    return "".join(parts)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception `!`, pattern) in file order, as Docker reads .dockerignore."""
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        rules.append((exception, re.compile(_glob_to_regex(pattern))))
    return rules


def excluded(relative: str) -> bool:
    """Whether Docker leaves ``relative`` out of the context: the last rule that matches it or one
    of its parent directories decides."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[:count]) for count in range(1, len(parts) + 1)]
    result = False
    for exception, pattern in dockerignore_rules():
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            result = not exception
    return result


# -- the compose services built from each image ----------------------------------------------------


def compose_services_of(dockerfile: Dockerfile) -> list[str]:
    """The compose services that run this image, or (the CUDA worker) one of the same kind."""
    names = [name for name, svc in services().items() if "build" in svc]
    same_file = [name for name in names if dockerfile_of(service(name)) == dockerfile.path]
    if same_file:
        return same_file
    return [name for name in names if read_dockerfile(dockerfile_of(service(name))).kind == dockerfile.kind]


def gateway_compose_settings() -> dict[str, object]:
    config = option(service("gateway")["command"], "--config")
    (mount,) = [m for m in mounts(service("gateway")) if m.target == config]
    loaded = yaml.safe_load(mount.host().read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def expected_ports(dockerfile: Dockerfile) -> set[int]:
    """The ports the compose deployment serves from this image: API and metrics."""
    if dockerfile.kind == "gateway":
        settings = gateway_compose_settings()
        metrics = settings["metrics"]
        assert isinstance(metrics, dict)
        return {int(str(settings["port"])), int(metrics["port"])}
    worker = parse_worker_command(service("worker")["command"])
    assert worker.metrics_port is not None
    return {worker.port, worker.metrics_port}


def healthcheck(dockerfile: Dockerfile) -> tuple[str, list[str]]:
    """The HEALTHCHECK options and its exec-form command."""
    options, marker, command = dockerfile.final.last("HEALTHCHECK").value.partition(" CMD ")
    assert marker, "HEALTHCHECK without CMD"
    return options, Instruction("CMD", command.strip()).exec_form()


# -- the tests -------------------------------------------------------------------------------------


@pytest.fixture(params=DOCKERFILES, ids=lambda path: path.name.removesuffix(".Dockerfile"))
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    path = request.param
    assert isinstance(path, Path)
    return read_dockerfile(path)


def test_the_three_images_are_here() -> None:
    assert [path.name for path in DOCKERFILES] == [
        "gateway.Dockerfile",
        "worker-cuda.Dockerfile",
        "worker.Dockerfile",
    ]


def test_the_final_stage_runs_as_uid_10001_in_app(dockerfile: Dockerfile) -> None:
    assert dockerfile.final.last("USER").value in ("10001", "10001:10001")
    assert dockerfile.final.last("WORKDIR").value == "/app"
    assert len(dockerfile.stages) >= 2, "build in one stage, run in another"


def test_the_runtime_stage_is_the_builders_virtualenv_on_a_pinned_base(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    base_name, _, tag = final.base.partition(":")
    assert tag and tag != "latest" and re.match(r"v?\d", tag), f"{final.base} is not pinned by tag"
    if dockerfile.path.name == "worker-cuda.Dockerfile":
        assert base_name == "nvidia/cuda" and "runtime" in tag
    else:
        assert base_name == "python" and tag.startswith("3.11") and "slim" in tag
    copies = [i.value for i in final.all("COPY") if i.value.startswith("--from=")]
    venv = "--from=builder /opt/venv /opt/venv"
    if dockerfile.path.name == "worker.Dockerfile":
        # The CPU worker also takes the fused kernels built beside the venv, and imports them from there.
        assert copies == [venv, "--from=builder /opt/warden/kernels /opt/warden/kernels"]
        assert final.env()["WARDEN_KERNEL_CACHE"] == "/opt/warden/kernels"
    else:
        assert copies == [venv]
    assert not [i for i in final.all("RUN") if "pip" in i.value], "nothing is built in the runtime stage"
    env = final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    if dockerfile.kind == "gateway":
        assert env["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] == ""  # Presidio stays offline


def test_the_entrypoint_and_command_parse_with_the_services_own_parser(dockerfile: Dockerfile) -> None:
    command = dockerfile.final.last("CMD").exec_form()
    if dockerfile.kind == "gateway":
        args = gateway_parser().parse_args(command)
        assert args.command == "serve"
        # The settings file is where the compose file mounts it.
        assert args.config in {m.target for m in mounts(service("gateway"))}
    else:
        settings = parse_worker_command(command)
        assert settings.tls.complete() and not settings.insecure_dev
        assert settings.tls.allowed_clients == ["warden-gateway"]
        assert command == service("worker")["command"], "the image and the compose file run the same worker"


def test_the_exposed_ports_are_the_ones_the_settings_and_compose_use(dockerfile: Dockerfile) -> None:
    exposed = {int(word.split("/")[0]) for i in dockerfile.final.all("EXPOSE") for word in i.value.split()}
    assert exposed == expected_ports(dockerfile)
    if dockerfile.kind == "gateway":
        (published,) = service("gateway")["ports"]
        assert published["target"] in exposed


def test_the_health_check_probes_an_exposed_port_with_valid_python(dockerfile: Dockerfile) -> None:
    options, command = healthcheck(dockerfile)
    for name in ("--interval", "--timeout", "--start-period", "--retries"):
        assert f"{name}=" in options, name
    assert command[:2] == ["python", "-c"] and len(command) == 3
    compile(command[2], "HEALTHCHECK", "exec")
    (port,) = re.findall(r"http://127\.0\.0\.1:(\d+)/", command[2])
    exposed = {int(word) for i in dockerfile.final.all("EXPOSE") for word in i.value.split()}
    assert int(port) in exposed


def test_every_copied_path_is_in_the_repository_and_in_the_build_context(dockerfile: Dockerfile) -> None:
    for _stage, instruction in dockerfile.instructions():
        assert instruction.keyword != "ADD", "COPY only (ADD fetches URLs and unpacks archives)"
        if instruction.keyword != "COPY" or instruction.value.startswith("--from="):
            continue
        words = [word for word in shlex.split(instruction.value) if not word.startswith("--")]
        for source in words[:-1]:
            path = REPO / source
            assert path.exists(), f"COPY {source}: not in the repository"
            assert not excluded(source), f"COPY {source}: excluded by .dockerignore"
            for file in path.rglob("*") if path.is_dir() else [path]:
                if file.is_file() and "__pycache__" not in file.parts:
                    relative = file.relative_to(REPO).as_posix()
                    assert not excluded(relative), f"{relative} is copied but excluded by .dockerignore"


def test_the_mount_points_of_its_volumes_belong_to_10001(dockerfile: Dockerfile) -> None:
    created: set[str] = set()
    for instruction in dockerfile.final.all("RUN"):
        for words in shell_commands(instruction.value):
            if words[:2] == ["install", "-d"] and words[2:6] == ["-o", "10001", "-g", "10001"]:
                created.update(word for word in words[6:] if word.startswith("/"))
    for name in compose_services_of(dockerfile):
        for mount in mounts(service(name)):
            if not mount.bind:
                assert mount.target in created, f"{name}: {mount.target} would be a root-owned volume"


def test_every_pip_install_is_pinned(dockerfile: Dockerfile) -> None:
    installs = pip_installs(dockerfile)
    assert installs
    for install in installs:
        if install.files:
            assert {"--require-hashes", "--no-deps"} <= install.flags, install
            assert not install.requirements and not install.constraints, install
            for name in install.files:
                assert re.fullmatch(r"requirements-\w+\.txt", name), name
                lines = [line for line in (REPO / name).read_text().splitlines() if line.strip()]
                specs = [line for line in lines if not line.lstrip().startswith("#")]
                assert specs and all("==" in s and "--hash=sha256:" in s for s in specs), name
        else:
            assert install.constraints == ["constraints.txt"], install


def test_the_gateway_image_never_installs_torch_or_the_backend_extra() -> None:
    gateway = read_dockerfile(REPO / "deploy" / "docker" / "gateway.Dockerfile")
    installs = pip_installs(gateway)
    for install in installs:
        for requirement in install.requirements:
            assert "torch" not in requirement.lower(), requirement
            assert "[backend" not in requirement.replace(" ", ""), requirement
        assert install.index_url is None, "the gateway installs from PyPI only"
    assert ["."] in [install.requirements for install in installs], "the project, without extras"
    assert {name for install in installs for name in install.files} == {"requirements-ner.txt"}
    copied = [word for _stage, i in gateway.instructions() if i.keyword == "COPY" for word in i.value.split()]
    assert not [word for word in copied if word.startswith("backend")], "the worker's code stays out"


@pytest.mark.parametrize("name", ["worker.Dockerfile", "worker-cuda.Dockerfile"])
def test_the_worker_images_install_torch_2_13_0_first_then_the_backend_extra_and_the_model(name: str) -> None:
    installs = pip_installs(read_dockerfile(REPO / "deploy" / "docker" / name))
    torch = [i for i in installs if any("torch" in r.lower() for r in i.requirements)]
    assert len(torch) == 1 and torch[0].requirements == [TORCH], "torch==2.13.0, exactly and alone"
    index = torch[0].index_url
    assert index is not None and index.startswith("https://download.pytorch.org/whl/")
    assert index.endswith("/cpu") if name == "worker.Dockerfile" else re.search(r"/cu12\d$", index)
    backend = [i for i in installs if ".[backend]" in i.requirements]
    assert len(backend) == 1 and installs.index(torch[0]) < installs.index(backend[0])
    assert backend[0].index_url is None
    assert {n for install in installs for n in install.files} == {"requirements-model.txt"}


def test_no_env_or_arg_holds_a_secret(dockerfile: Dockerfile) -> None:
    values = dict(dockerfile.global_args)
    for stage in dockerfile.stages:
        values.update(stage.args())
        values.update(stage.env())
    for name, value in values.items():
        assert not (SECRET_NAME.search(name) and value), f"{name} holds a value in the image"


def test_the_gateway_image_has_the_injection_rules_where_the_settings_look() -> None:
    dockerfile = read_dockerfile(REPO / "deploy" / "docker" / "gateway.Dockerfile")
    default = InjectionSettings().rules_path
    assert not default.is_absolute()
    workdir = dockerfile.final.last("WORKDIR").value
    copied = {
        f"{workdir}/{words[-1].rstrip('/')}": words[0].rstrip("/")
        for words in (shlex.split(i.value) for i in dockerfile.final.all("COPY"))
        if not words[0].startswith("--")
    }
    (target, source) = next((t, s) for t, s in copied.items() if f"{workdir}/{default}".startswith(t + "/"))
    assert (REPO / source / Path(f"{workdir}/{default}").relative_to(target)).is_file()


def test_dockerignore_keeps_local_state_caches_and_keys_out_of_the_context() -> None:
    for path in (
        ".venv/bin/python",
        "run/demo/pki/ca-key.pem",
        "run/demo/audit/segment-1.records",
        ".git/HEAD",
        ".pytest_cache/v/cache",
        ".mypy_cache/3.11",
        ".ruff_cache/content",
        ".hypothesis/examples",
        "gateway/__pycache__/app.cpython-311.pyc",
        "tests/conftest.py",
        "deploy/compose/secrets/auditor-passphrase",
        "anywhere/worker-key.pem",
    ):
        assert excluded(path), f"{path} would be sent to the build"
    for path in ("gateway/app.py", "backend/cli.py", "pyproject.toml", "policies/rules/injection.yaml"):
        assert not excluded(path), path


# -- the health checks, run against stand-in servers -----------------------------------------------


class StandIn(http.server.ThreadingHTTPServer):
    """Answers GET requests from a table of path -> (status, body)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, tuple[int, bytes]] = {}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = cast(StandIn, self.server).routes.get(self.path, (404, b""))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def run_healthcheck(dockerfile: Dockerfile, server: StandIn) -> int:
    _options, command = healthcheck(dockerfile)
    code = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{server.server_port}", command[2])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode


def test_the_health_check_passes_only_when_the_service_is_up(
    dockerfile: Dockerfile, stand_in: StandIn
) -> None:
    if dockerfile.kind == "gateway":
        path = "/healthz"
        down, up = (503, b'{"status": "stopping"}'), (200, b'{"status": "ok"}')
    else:
        # The worker's own metrics page, before and after its model has loaded.
        path = "/metrics"
        loaded = WorkerMetrics(lambda: loaded_engine(blocks_used=3, running=1, steps=5))
        down, up = (200, WorkerMetrics().render()), (200, loaded.render())
    assert run_healthcheck(dockerfile, stand_in) != 0, "nothing answers yet"
    stand_in.routes[path] = down
    assert run_healthcheck(dockerfile, stand_in) != 0
    stand_in.routes[path] = up
    assert run_healthcheck(dockerfile, stand_in) == 0
