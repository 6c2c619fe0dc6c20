"""Schemathesis against the real gateway app, driven by the OpenAPI document the app serves.

Shared by tests/security/test_openapi_fuzz.py (bounded, in CI) and bench/fuzz_api.py (long runs).
The gateway app runs in this process (uvicorn on a thread) in front of the fake worker over
mTLS; its Redis is a port where nothing listens, so it runs degraded (cache bypassed, limits in
process). Each operation is fuzzed by two callers: ``anonymous`` (no credentials) and ``member``
(a token whose role may use the served model, so that generated bodies get past authentication
into validation, policy, guards and routing), with schema-valid (positive) and schema-invalid
(negative) data.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as with_seed
from hypothesis import strategies as st
from hypothesis.errors import HypothesisDeprecationWarning, Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode, Response
from schemathesis.checks import CheckContext, CheckFunction, not_a_server_error
from schemathesis.core import NotSet
from schemathesis.core.result import Err
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from gateway.app import create_app
from gateway.pki import PkiPaths
from gateway.settings import GatewaySettings
from tests.support.fake_worker import MODEL, start_fake_worker
from tests.support.gateway import upstream
from tests.support.identity import TestIssuer
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess
from tests.support.worker import gateway_ssl

Caller = Literal["anonymous", "member"]
Operation = APIOperation[Any, Any, Any, Any]
FuzzCase = Case[Any]
CALLERS: tuple[Caller, ...] = ("anonymous", "member")
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
ANSWER_TIMEOUT_S = 10.0  # the fake worker answers at once; longer means the gateway hangs
REPO = Path(__file__).resolve().parents[2]

# Members may use the served model with generous caps, so most valid bodies reach the worker.
POLICY = """
version: 1
tenant: {claim: org, required: true}
bindings:
  - {name: members, when: {claim: groups, contains: fuzzers}, roles: [member]}
roles:
  member:
    models: ["fake-*"]
    max_tokens: 1000000000  # generated bodies ask for any size; a cap would refuse most of them
    sampling: {temperature_max: 2.0, n_max: 16}
"""
# What an error body must never carry: a Python traceback, a source location, an installed path.
LEAK = re.compile(rf"Traceback|File \"[^\"]+\", line \d+|site-packages|{re.escape(str(REPO))}")


def error_body_problem(status: int, content: bytes) -> str | None:
    """Why an answer breaks the error contract (the OpenAI envelope with a stable snake_case code,
    nothing internal in it), or None if it keeps it. Only 4xx and 5xx answers are errors."""
    if status < 400:
        return None
    text = content.decode("utf-8", "replace")
    if LEAK.search(text):
        return f"the error body leaks internals: {text[:300]}"
    try:
        error = json.loads(content)["error"]
        missing = {"message", "type", "code"} - set(error)
    except (ValueError, TypeError, KeyError):
        return f"not an OpenAI error body: {text[:300]}"
    if missing:
        return f"the error lacks {sorted(missing)}: {text[:300]}"
    if not isinstance(error["code"], str) or not re.fullmatch(r"[a-z][a-z0-9_]*", error["code"]):
        return f"unstable error code {error['code']!r}"
    return None


def openai_error_body(_ctx: CheckContext, response: Response, _case: FuzzCase) -> bool | None:
    """The error contract as a schemathesis check."""
    problem = error_body_problem(response.status_code, response.content)
    if problem is not None:
        raise AssertionError(problem)
    return None


def edge_accepts_documented_bodies(_ctx: CheckContext, response: Response, case: FuzzCase) -> bool | None:
    """A body the document allows never fails the edge's validation: the document is the contract.

    (Other 400s stay possible for valid bodies: a guard's refusal, or a limit set in the settings.)"""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return None
    code = json.loads(response.content)["error"]["code"]
    if code in ("invalid_request", "invalid_json"):
        raise AssertionError(f"a body the document allows was refused: {response.text[:300]}")
    return None


CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    unsupported_method,
    openai_error_body,
    edge_accepts_documented_bodies,
]


@dataclass
class Report:
    """What one (operation, caller, mode) run saw: statuses and distinct failures with an example."""

    operation: str
    caller: Caller
    mode: str
    cases: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def record(self, status: int, failures: list[tuple[str, str]]) -> None:
        self.cases += 1
        self.statuses[status] += 1
        for title, detail in failures:
            self.failures[title] += 1
            self.examples.setdefault(title, detail)

    def merge(self, other: Report) -> None:
        self.cases += other.cases
        self.seconds += other.seconds
        self.statuses.update(other.statuses)
        self.failures.update(other.failures)
        for title, detail in other.examples.items():
            self.examples.setdefault(title, detail)

    def summary(self) -> str:
        lines = [f"{self.operation} as {self.caller}, {self.mode} data: {self.cases} cases"]
        lines += [f"{n} x {title}:\n  {self.examples[title]}" for title, n in self.failures.items()]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation, "caller": self.caller, "mode": self.mode, "cases": self.cases,
            "seconds": round(self.seconds, 2), "failures": dict(self.failures), "examples": self.examples,
            "statuses": {str(status): n for status, n in sorted(self.statuses.items())},
        }  # fmt: skip


class FuzzedGateway:
    """The gateway app with its fake worker and identity provider, and the schema it serves.

    The app runs under uvicorn on a thread, so that requests go through a real HTTP server and the
    app's lifespan runs once, from ``__enter__`` to ``__exit__``. (Schemathesis' in-process ASGI
    transport ends an app's lifespan after every pytest test, and the gateway is not restartable.)
    """

    def __init__(self, directory: Path, pki: PkiPaths) -> None:
        self.directory = directory
        self.pki = pki
        self.issuer = TestIssuer(directory / "idp")
        self._worker: ServiceProcess | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FuzzedGateway:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        worker, url = start_fake_worker(
            self.pki.worker_cert, self.pki.worker_key, self.pki.ca_cert, self.directory / "logs",
            name="fuzz", event_delay=0.0,
        )  # fmt: skip
        self._worker = worker
        context = gateway_ssl(self.pki)
        worker.wait_until(lambda: httpx.get(f"{url}/health", verify=context, timeout=1).status_code == 200)
        policy_dir = self.directory / "policies"
        policy_dir.mkdir(parents=True, exist_ok=True)
        (policy_dir / "main.yaml").write_text(POLICY)
        settings = GatewaySettings.model_validate(
            {
                "auth": {"issuers": [self.issuer.settings()]},
                "policy_dir": str(policy_dir),
                "upstreams": [upstream(self.pki, "fake", [MODEL], [url])],
                "redis": {"url": f"redis://127.0.0.1:{free_port()}/0"},
                "guards": {"injection": {"rules_path": str(REPO / "policies/rules/injection.yaml")}},
            }
        )
        port = free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, lifespan="on", log_config=None,
            log_level="warning", access_log=False,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fuzzed-gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port}"
        self.schema = schemathesis.openapi.from_url(f"{self.url}/openapi.json")

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        try:
            if self._server is not None and self._thread is not None:
                self._server.should_exit = True
                self._thread.join(30)
        finally:
            if self._worker is not None:
                self._worker.stop()

    def operations(self) -> list[Operation]:
        found = []
        for result in self.schema.get_all_operations():
            if isinstance(result, Err):
                raise result.err()  # the document itself is broken
            found.append(result.ok())
        return found

    def headers(self, caller: Caller) -> dict[str, str] | None:
        if caller == "anonymous":
            return None
        return {"Authorization": f"Bearer {self.issuer.mint(groups=['fuzzers'], org='acme', ttl_s=86_400)}"}

    def fuzz(
        self, operation: Operation, caller: Caller, mode: GenerationMode, *, examples: int, seed: int
    ) -> Report:
        """Send ``examples`` generated cases (fewer if the operation has little to vary) and check each."""
        report = Report(operation.label, caller, mode.value)
        strategy = operation.as_strategy(generation_mode=mode, headers=self.headers(caller))
        if caller == "member" and mode.is_positive and operation.body:
            # Valid bodies name a random model; half of them name the served one, to reach the worker.
            strategy = st.tuples(strategy, st.booleans()).map(_serve_model)

        @with_seed(seed)
        @settings(
            max_examples=examples, deadline=None, database=None, derandomize=False,
            phases=[Phase.explicit, Phase.generate], print_blob=False,
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(case=strategy)
        def run(case: FuzzCase) -> None:
            try:
                response = case.call(timeout=ANSWER_TIMEOUT_S)
            except requests.RequestException as exc:  # no answer at all: a hang or a dropped connection
                report.record(0, [(f"No answer ({type(exc).__name__})", _detail(exc, case, None))])
                return
            failures: list[tuple[str, str]] = []
            try:
                case.validate_response(response, checks=CHECKS)
            except (FailureGroup, AssertionError) as error:
                failures = [(_title(e), _detail(e, case, response)) for e in _flatten(error)]
            report.record(response.status_code, failures)

        started = time.perf_counter()
        random.seed(seed)  # schemathesis draws some values from `random`: seed it too, for a repeatable run
        with warnings.catch_warnings():
            # schemathesis' own strategies draw from `random`; Hypothesis warns, nothing of ours to fix.
            warnings.filterwarnings("ignore", "Do not use the `random` module", HypothesisDeprecationWarning)
            # Unsatisfiable: nothing to vary, e.g. no invalid request exists once the credentials are fixed.
            with contextlib.suppress(Unsatisfiable):
                run()
        report.seconds = time.perf_counter() - started
        return report


def _serve_model(drawn: tuple[FuzzCase, bool]) -> FuzzCase:
    case, served = drawn
    if served and isinstance(case.body, dict):
        case.body["model"] = MODEL
    return case


def _flatten(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _flatten(inner)]
    return [error]


def _title(error: BaseException) -> str:
    title = getattr(error, "title", None)
    return str(title) if title else f"{type(error).__name__}: {str(error)[:80]}"


def _detail(error: BaseException, case: FuzzCase, response: Response | None) -> str:
    message = getattr(error, "message", None) or str(error)
    body = "-" if isinstance(case.body, NotSet) else json.dumps(case.body, default=str)[:400]
    text = response.text_lossy()[:300] if response is not None else "-"
    return f"{message}\n  request: {case.method} {case.formatted_path} body={body}\n  response: {text}"
