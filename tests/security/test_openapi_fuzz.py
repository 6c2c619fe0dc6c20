"""Schemathesis against the real gateway, from the OpenAPI document it serves (bounded, reproducible).

Every fuzzable operation is driven without credentials and with a member's token, with valid and
invalid data. Each response must not be a 5xx, must match the documented status codes, media
types and schemas, must refuse invalid data with a 4xx (and never refuse a body the document
allows as invalid) and unauthenticated calls to protected operations, and every error must be the
OpenAI envelope with a stable code and no traceback. The same run, longer, is
``python -m bench.fuzz_api``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from schemathesis import GenerationMode

from gateway.openapi import openapi_document
from gateway.pki import PkiPaths
from tests.support.api_fuzz import CALLERS, REPO, Caller, FuzzedGateway, error_body_problem

pytestmark = pytest.mark.slow

EXAMPLES = 20  # per operation, caller and mode: about 8 s of CPU for the fuzzing itself
SEED = 20_260_101  # fixed, so that CI sends the same cases on every run

DOCUMENT = openapi_document("0")
# Schemathesis never fuzzes the address it loaded the document from.
FUZZED = {path: item for path, item in DOCUMENT["paths"].items() if path != "/openapi.json"}
PROTECTED = {f"{m.upper()} {p}" for p, item in FUZZED.items() for m, op in item.items() if op.get("security")}
COMPLETIONS = {"POST /v1/chat/completions", "POST /v1/completions"}


def runs() -> Iterator[tuple[str, Caller, GenerationMode]]:
    for path, item in FUZZED.items():
        for method, operation in item.items():
            for caller in CALLERS:
                yield f"{method.upper()} {path}", caller, GenerationMode.POSITIVE
                # Invalid data needs something to vary: a body, or the credentials of an anonymous caller.
                if "requestBody" in operation or (caller == "anonymous" and operation.get("security")):
                    yield f"{method.upper()} {path}", caller, GenerationMode.NEGATIVE


@pytest.fixture(scope="module")
def gateway(pki: PkiPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzedGateway]:
    with FuzzedGateway(tmp_path_factory.mktemp("openapi-fuzz"), pki) as target:
        yield target


def test_every_operation_of_the_document_is_fuzzed(gateway: FuzzedGateway) -> None:
    served = {f"{op.method.upper()} {op.path}" for op in gateway.operations()}
    assert served == {label for label, _, _ in runs()}
    assert gateway.schema.raw_schema == DOCUMENT | {"info": gateway.schema.raw_schema["info"]}


@pytest.mark.parametrize(("label", "caller", "mode"), list(runs()), ids=lambda v: str(v).replace(" ", ""))
def test_fuzzed_operation_keeps_its_contract(
    gateway: FuzzedGateway, label: str, caller: Caller, mode: GenerationMode
) -> None:
    operation = gateway.schema.find_operation_by_label(label)
    assert operation is not None
    report = gateway.fuzz(operation, caller, mode, examples=EXAMPLES, seed=SEED)
    assert report.cases > 0
    assert not report.failures, report.summary()
    if caller == "anonymous" and label in PROTECTED:
        # Edge checks (size, JSON, schema) come first; nothing gets further without a token.
        assert set(report.statuses) <= {400, 401, 413}, report.statuses
        assert report.statuses[401] > 0
    if caller == "member" and mode.is_positive and label in COMPLETIONS:
        # The fuzzing reached past authentication, policy and guards to the worker and back.
        assert report.statuses[200] > 0, report.statuses


@pytest.mark.parametrize(
    ("status", "body", "refused"),
    [
        (400, '{"error": {"message": "m", "type": "invalid_request_error", "code": "invalid_json"}}', False),
        (200, "Traceback (most recent call last)", False),  # only error bodies are inspected
        (500, '{"error": {"message": "Traceback (most recent call last):", "type": "t", "code": "c"}}', True),
        (500, f'{{"error": {{"message": "{REPO}/gateway/app.py", "type": "t", "code": "c"}}}}', True),
        (400, '{"detail": "Bad Request"}', True),
        (400, '{"error": {"message": "m", "type": "t"}}', True),
        (400, '{"error": {"message": "m", "type": "t", "code": "Bad Code!"}}', True),
        (400, '{"error": "bad"}', True),
        (502, "<html>Bad Gateway</html>", True),
    ],
)
def test_the_error_contract_refuses_leaks_and_foreign_shapes(status: int, body: str, refused: bool) -> None:
    assert (error_body_problem(status, body.encode()) is not None) == refused
