"""Every command the documentation shows is run, so the docs cannot drift from the code.

The pages are README.md, SECURITY.md, docs/guides/*.md, docs/scaling.md, deploy/README.md and
deploy/k8s/README.md. Each fenced block is read
with the HTML comment on the line before it, if any:

- ```` ```bash ```` blocks run with ``bash -euo pipefail -c`` and ```` ```python ```` blocks with
  this interpreter (whose ``python`` is also first on the ``PATH`` of bash blocks). They must exit 0
  unless ``<!-- run: exit 1 -->`` (or ``exit 0 or 1``) says otherwise; ``output has "TEXT"`` also
  checks standard output; clauses are separated by ``;``.
- ``<!-- not run: REASON -->`` marks a block that cannot run here (it starts a service, needs a
  cluster, takes minutes); REASON says where it is exercised instead. A shell or Python block in any
  other language, or a block of any language with a line that looks like a command, must carry it:
  nothing escapes by being fenced as ``console`` or ``text``.
- ``<!-- run: builds the layout -->`` marks the block that creates the working directory the guides
  document (docs/guides/security-admins.md); it runs first, in an empty directory holding only the
  inputs the guide says the reader brings (the repository checkout as ``warden/`` and the auditors'
  passphrase file).
- ``<!-- file: PATH -->`` is a file of that directory (gateway.yaml, a policy file, data); it is
  written there after the layout is built. ``<!-- check: KIND -->`` validates a snippet as gateway
  settings, a policy file or an injection rules file.

Blocks run while the documented gateway.yaml serves the directory (``python -m gateway serve``,
with only its port, its workers' addresses, Redis and the audit HMAC key overridden from the
environment) in front of ``tests.docs.sdk_worker``, with ``WARDEN_URL`` and ``WARDEN_TOKEN`` set;
blocks that read its audit log (they name ``audit/``) run after it stopped, so that the log is
closed and complete. In each of these two phases, the blocks of one section (a ``##`` heading) run
in order in one copy of the directory, so a block may use what an earlier block of its section
made; sections run in parallel.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.guards.rules import load_rules
from gateway.policy.schema import PolicyFile
from gateway.settings import GatewaySettings
from gateway.tls import TlsFiles, client_context
from tests.docs.sdk_worker import start_sdk_worker
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PAGES = (
    "README.md",
    "SECURITY.md",
    *sorted(str(path.relative_to(REPO)) for path in (REPO / "docs" / "guides").glob("*.md")),
    "docs/scaling.md",
    "deploy/README.md",
    "deploy/k8s/README.md",
)
RUNNABLE = frozenset({"bash", "python"})
SHELL_LIKE = frozenset({"sh", "shell", "console", "zsh", "shell-session", "py", "python3", "pycon", "ps1"})
COMMAND_LINE = re.compile(
    r"^\s*(?:\$ |python3? -m |make |curl |kubectl |docker |helm |openssl |kill |export |sudo |\./)"
)
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
INDENTED_FENCE = re.compile(r"^\s+(?:`{3,}|~{3,})")
ANNOTATION = re.compile(r"^<!--\s*(?P<kind>not run|run|file|check):\s*(?P<arg>.*?)\s*-->$")
NEEDS_GATEWAY = re.compile(r"\bWARDEN_(?:URL|TOKEN)\b")
READS_AUDIT_LOG = re.compile(r"\baudit/")
EXIT_CLAUSE = re.compile(r"exit (?P<codes>\d+(?: or \d+)*)(?: \(.+\))?")
OUTPUT_CLAUSE = re.compile(r'output has "(?P<text>.+)"')
BLOCK_TIMEOUT_S = 60
# The inputs the guides say the reader brings; everything else is made by the documented commands.
PASSPHRASE = "the auditors keep this phrase to themselves"
# Who the documentation's requests come from; the policy the guide shows must let this caller in.
CALLER = ("--sub", "ada", "--groups", "developers", "--tenant-claim", "org=acme")
# A request of the fixture's own, so the auditors' pages find a known prompt in the log.
KNOWN_PROMPT = {"model": "smollm2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}


@dataclass(frozen=True, slots=True)
class Expect:
    exits: frozenset[int] = frozenset({0})
    output: tuple[str, ...] = ()
    builds_layout: bool = False


@dataclass(frozen=True, slots=True)
class Block:
    page: str
    section: str  # the "## " heading the block is under
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    kind: str | None  # the annotation's kind: "not run", "run", "file", "check"
    arg: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUNNABLE and self.kind != "not run"

    @property
    def needs_gateway(self) -> bool:
        return NEEDS_GATEWAY.search(self.text) is not None

    @property
    def reads_audit_log(self) -> bool:
        return READS_AUDIT_LOG.search(self.text) is not None

    def expect(self) -> Expect:
        if self.kind != "run":
            return Expect()
        exits: frozenset[int] = frozenset({0})
        output: list[str] = []
        builds = False
        for clause in re.split(r";\s*", self.arg):
            if (match := EXIT_CLAUSE.fullmatch(clause)) is not None:
                exits = frozenset(int(code) for code in match["codes"].split(" or "))
            elif (match := OUTPUT_CLAUSE.fullmatch(clause)) is not None:
                output.append(match["text"])
            elif clause == "builds the layout":
                builds = True
            else:
                raise ValueError(f"{self.id}: unknown run annotation {clause!r}")
        return Expect(exits, tuple(output), builds)


@dataclass(frozen=True, slots=True)
class Outcome:
    code: int | None  # None: timed out
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        status = "timed out" if self.code is None else f"exit {self.code}"
        status += f" after {self.seconds:.1f} s"
        return f"{status}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"


def read_blocks(page: str) -> list[Block]:
    return parse_blocks(page, (REPO / page).read_text(encoding="utf-8"))


def parse_blocks(page: str, markdown: str) -> list[Block]:
    """The fenced blocks of a page, each with the annotation on the last non-blank line before it."""
    lines = markdown.splitlines()
    blocks: list[Block] = []
    previous = section = ""
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            if lines[index].strip():
                previous = lines[index].strip()
            if lines[index].startswith("## "):
                section = lines[index][3:].strip()
            index += 1
            continue
        fence, info = opening["fence"], opening["info"].strip()
        end = index + 1
        while end < len(lines) and lines[end].rstrip() != fence:
            end += 1
        if end == len(lines):
            raise ValueError(f"{page}:{index + 1}: the fence is never closed")
        annotation = ANNOTATION.match(previous)
        blocks.append(
            Block(
                page=page,
                section=section,
                line=index + 1,
                lang=info.split()[0].lower() if info else "",
                text="\n".join(lines[index + 1 : end]) + "\n",
                kind=annotation["kind"] if annotation else None,
                arg=annotation["arg"] if annotation else "",
            )
        )
        previous = ""
        index = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in read_blocks(page)]
RUN_BLOCKS = [block for block in BLOCKS if block.runs]


# -- the rules every block follows ---------------------------------------------------------------


def test_fences_start_the_line_and_name_their_language() -> None:
    indented = [
        f"{page}:{number}"
        for page in PAGES
        for number, line in enumerate((REPO / page).read_text(encoding="utf-8").splitlines(), start=1)
        if INDENTED_FENCE.match(line)
    ]
    assert not indented, f"indented fences are not checked; start them at the line's beginning: {indented}"
    unnamed = [block.id for block in BLOCKS if not block.lang]
    assert not unnamed, f"fences without a language: {unnamed}"


def block_problem(block: Block) -> str | None:
    """Why a block breaks the rules: commands that would escape the test, misplaced annotations."""
    looks_like_commands = block.lang in SHELL_LIKE or any(
        COMMAND_LINE.match(line) for line in block.text.splitlines()
    )
    if block.kind == "not run":
        return None if len(block.arg) >= 20 else "say why it is not run and where it is exercised"
    if block.lang not in RUNNABLE and looks_like_commands:
        return f"commands in a {block.lang} block: make it bash or python, or mark it not run"
    if block.kind == "run" and block.lang not in RUNNABLE:
        return f"a run annotation on a {block.lang} block"
    if block.kind in ("file", "check") and block.lang in RUNNABLE:
        return f"a {block.kind} annotation on a {block.lang} block"
    return None


@pytest.mark.parametrize(
    ("snippet", "problem"),
    [
        ("```bash\npython -m gateway policy check policies\n```", None),
        ("```yaml\nversion: 1\n```", None),
        ("```console\npython -m gateway serve\n```", "commands in a console block"),
        ("```text\n$ python -m gateway audit verify audit\n```", "commands in a text block"),
        ("```yaml\nkubectl apply -k deploy/k8s\n```", "commands in a yaml block"),
        ("```sh\nls\n```", "commands in a sh block"),
        ("<!-- not run: starts a service; make demo runs it -->\n```console\nmake demo\n```", None),
        ("<!-- not run: no -->\n```console\nmake demo\n```", "say why"),
        ("<!-- not run: starts a service; make demo runs it -->\n\nText.\n```console\nmake demo\n```",
         "commands in a console block"),
        ("<!-- run: exit 1 -->\n```yaml\nversion: 1\n```", "a run annotation"),
        ("<!-- file: gateway.yaml -->\n```bash\ntrue\n```", "a file annotation"),
    ],
)  # fmt: skip
def test_commands_cannot_escape_the_test(snippet: str, problem: str | None) -> None:
    (block,) = parse_blocks("page.md", snippet)
    found = block_problem(block)
    assert (found is None) if problem is None else (found is not None and problem in found), found


def test_every_command_runs_or_says_where_it_is_exercised() -> None:
    problems = [f"{block.id}: {problem}" for block in BLOCKS if (problem := block_problem(block))]
    assert not problems, "\n".join(problems)
    assert RUN_BLOCKS, "no runnable blocks found"
    assert [b for b in BLOCKS if b.kind == "file" and b.arg == "gateway.yaml"], "no gateway.yaml block"
    assert [b for b in RUN_BLOCKS if b.expect().builds_layout], "no block builds the layout"
    both = [b.id for b in RUN_BLOCKS if b.needs_gateway and b.reads_audit_log]
    assert not both, f"blocks that need the running gateway and its closed audit log at once: {both}"


LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(
            r"^(`{3,}|~{3,}).*?^\1", "", (REPO / page).read_text(encoding="utf-8"), flags=re.M | re.S
        )
        for match in LINK.finditer(text):
            target = match["target"]
            if re.match(r"[a-z]+:", target):
                continue
            name, _, fragment = target.partition("#")
            path = (REPO / page).parent / name if name else REPO / page
            if not path.exists():
                broken.append(f"{page}: {target} (no such file)")
            elif fragment and path.suffix == ".md" and fragment not in _anchors(path):
                broken.append(f"{page}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def _check_gateway_settings(text: str, _tmp: Path) -> None:
    GatewaySettings.model_validate(yaml.safe_load(text))


def _check_policy_file(text: str, _tmp: Path) -> None:
    PolicyFile.model_validate(yaml.safe_load(text))


def _check_injection_rules(text: str, tmp: Path) -> None:
    path = tmp / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    load_rules(path)


CHECKS: dict[str, Callable[[str, Path], None]] = {
    "gateway settings": _check_gateway_settings,
    "policy file": _check_policy_file,
    "injection rules": _check_injection_rules,
}


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "check"], ids=lambda b: b.id)
def test_snippet_is_valid(block: Block, tmp_path: Path) -> None:
    assert block.arg in CHECKS, f"{block.id}: unknown check {block.arg!r}"
    CHECKS[block.arg](block.text, tmp_path)


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: b.id)
def test_documented_block_runs(block: Block, documented_runs: Mapping[str, Outcome]) -> None:
    outcome = documented_runs.get(block.id)
    assert outcome is not None, f"{block.id} was not run"
    expect = block.expect()
    assert outcome.code in expect.exits, (
        f"{block.id}: expected exit {sorted(expect.exits)}, got {outcome.describe()}"
    )
    for text in expect.output:
        assert text in outcome.stdout, f"{block.id}: {text!r} not in the output: {outcome.describe()}"


# -- running them --------------------------------------------------------------------------------


def block_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("WARDEN_", "OTEL_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def _text(value: str | bytes | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value or ""


def run_block(block: Block, cwd: Path, env: Mapping[str, str]) -> Outcome:
    args = (
        [sys.executable, "-c", block.text]
        if block.lang == "python"
        else ["bash", "-euo", "pipefail", "-c", block.text]
    )
    started = time.monotonic()
    try:
        done = subprocess.run(
            args, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        return Outcome(None, _text(exc.stdout), _text(exc.stderr), time.monotonic() - started)
    return Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def run_sections(
    blocks: list[Block], layout: Path, where: Path, env: Mapping[str, str], *, audit: bool
) -> dict[str, Outcome]:
    """The blocks of each section of a page in order, in a copy of the layout of its own; sections
    (which never build on one another) in parallel."""
    sections: dict[tuple[str, str], list[Block]] = {}
    for block in blocks:
        sections.setdefault((block.page, block.section), []).append(block)

    def run_section(number: int, section_blocks: list[Block]) -> dict[str, Outcome]:
        copy = where / f"{number:02d}-{re.sub(r'[^A-Za-z0-9]+', '-', section_blocks[0].page)}"
        ignore = None if audit else shutil.ignore_patterns("audit")
        shutil.copytree(layout, copy, symlinks=True, ignore=ignore)
        return {block.id: run_block(block, copy, env) for block in section_blocks}

    outcomes: dict[str, Outcome] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for result in pool.map(run_section, range(len(sections)), sections.values()):
            outcomes.update(result)
    return outcomes


def build_layout(root: Path, outcomes: dict[str, Outcome]) -> Path:
    """The working directory the guides document, made by their own commands and files."""
    layout = root / "layout"
    layout.mkdir()
    (layout / "warden").symlink_to(REPO, target_is_directory=True)
    passphrase = layout / "auditor-passphrase"
    passphrase.write_text(PASSPHRASE + "\n", encoding="utf-8")
    passphrase.chmod(0o600)
    for block in (b for b in RUN_BLOCKS if b.expect().builds_layout):
        outcome = outcomes[block.id] = run_block(block, layout, block_env())
        if outcome.code not in block.expect().exits:
            raise RuntimeError(f"{block.id} does not build the layout: {outcome.describe()}")
    for block in (b for b in BLOCKS if b.kind == "file"):
        target = (layout / block.arg).resolve()
        if not target.is_relative_to(layout.resolve()):
            raise ValueError(f"{block.id}: {block.arg} is outside the working directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.text, encoding="utf-8")
    return layout


@dataclass
class Served:
    url: str
    token: str


@contextmanager
def serve_layout(layout: Path, root: Path, redis_url: str) -> Iterator[Served]:
    """The documented gateway.yaml, served from the layout in front of the SDK stand-in worker."""
    pki = layout / "pki"
    settings: dict[str, Any] = yaml.safe_load((layout / "gateway.yaml").read_text(encoding="utf-8"))
    worker, worker_url = start_sdk_worker(pki / "worker.pem", pki / "worker-key.pem", pki / "ca.pem", root)
    gateway: ServiceProcess | None = None
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        overrides = {
            "WARDEN_GATEWAY_PORT": str(port),
            "WARDEN_GATEWAY_UPSTREAMS": json.dumps(
                [{**u, "workers": [worker_url]} for u in settings["upstreams"]]
            ),
            "WARDEN_GATEWAY_REDIS__URL": redis_url,
            "WARDEN_GATEWAY_REDIS__KEY_PREFIX": f"docs-{secrets.token_hex(4)}:",
            "WARDEN_GATEWAY_AUDIT__HMAC_KEY": (layout / "audit-hmac-key").read_text(encoding="utf-8").strip(),
        }
        gateway = ServiceProcess.python_module(
            "gateway", "serve", "--config", "gateway.yaml",
            log_path=root / "gateway.log", env=overrides, cwd=layout,
        ).start()  # fmt: skip
        context = client_context(
            TlsFiles(ca=pki / "ca.pem", cert=pki / "gateway-client.pem", key=pki / "gateway-client-key.pem")
        )
        worker.wait_until(
            lambda: httpx.get(f"{worker_url}/health", verify=context, timeout=1).status_code == 200
        )
        gateway.wait_until(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, timeout_s=60)
        issuer = settings["auth"]["issuers"][0]
        minted = subprocess.run(
            [sys.executable, "-m", "gateway", "token", "mint", "--key", "jwt/jwt-private.pem",
             "--iss", issuer["issuer"], "--aud", issuer["audiences"][0], *CALLER],
            cwd=layout, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        token = minted.stdout.strip()
        headers = {"authorization": f"Bearer {token}"}
        known = httpx.post(f"{url}/v1/chat/completions", json=KNOWN_PROMPT, headers=headers, timeout=30)
        denied = httpx.post(
            f"{url}/v1/chat/completions", json={**KNOWN_PROMPT, "model": "llama-3.1-70b-instruct"},
            headers=headers, timeout=30,
        )  # fmt: skip
        if (known.status_code, denied.status_code) != (200, 403):
            raise RuntimeError(
                f"the documented gateway answers {known.text} / {denied.text}:\n{gateway.logs()}"
            )
        yield Served(url, token)
    finally:
        if gateway is not None:
            gateway.stop()  # SIGTERM: the audit log's open segment is closed with a signed checkpoint
        worker.stop()


@pytest.fixture(scope="module")
def documented_runs(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("docs")
    outcomes: dict[str, Outcome] = {}
    layout = build_layout(root, outcomes)
    remaining = [block for block in RUN_BLOCKS if block.id not in outcomes]
    serving, stopped = root / "serving", root / "stopped"
    serving.mkdir()
    stopped.mkdir()
    with serve_layout(layout, root, redis_server.url) as served:
        env = block_env({"WARDEN_URL": served.url, "WARDEN_TOKEN": served.token})
        now = [b for b in remaining if not b.reads_audit_log]
        outcomes.update(run_sections(now, layout, serving, env, audit=False))
    later = [b for b in remaining if b.reads_audit_log]
    outcomes.update(run_sections(later, layout, stopped, block_env(), audit=True))
    return outcomes
