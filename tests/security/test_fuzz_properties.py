"""Property-based fuzzing of the parsers that face untrusted input: bounded runs, no crash allowed.

Each property says what may come out of a parser whatever goes in: the JWT path answers with a
principal or ``AuthenticationFailed`` only; the policy loader with a policy or ``PolicyError``
only; the SSE splitter returns every byte it was given, cut only after complete events, whatever
the chunking.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth import Authenticator
from gateway.auth.settings import AuthSettings
from gateway.errors import AuthenticationFailed
from gateway.policy.store import PolicyError, load_policy_dir
from gateway.relay import sse_events
from tests.support.fuzz_scale import examples
from tests.support.identity import TestIssuer

FUZZ = settings(
    max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
claims = st.dictionaries(
    st.sampled_from(["iss", "aud", "sub", "exp", "nbf", "iat", "groups", "org", "crit", "alg", "kid"])
    | st.text(max_size=8),
    json_values,
    max_size=8,
)
segments = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=60).map(b64),
    claims.map(lambda c: b64(json.dumps(c).encode())),
)
tokens = st.one_of(
    st.text(max_size=200),
    st.tuples(segments, segments, segments).map(".".join),
    st.lists(segments, min_size=1, max_size=5).map(".".join),
)


@pytest.fixture(scope="module")
def authenticator(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authenticator, TestIssuer]:
    issuer = TestIssuer(tmp_path_factory.mktemp("fuzz-idp"))
    return Authenticator(AuthSettings.model_validate({"issuers": [issuer.settings()]})), issuer


@FUZZ
@given(token=tokens, scheme=st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Bearer  "]))
def test_the_jwt_path_only_ever_refuses_with_401(
    authenticator: tuple[Authenticator, TestIssuer], token: str, scheme: str
) -> None:
    auth, _ = authenticator
    try:
        asyncio.run(auth.authenticate(scheme + token))
    except AuthenticationFailed as refused:
        assert refused.status_code == 401
        assert len(token) < 8 or token not in refused.message  # the token is never echoed back


@FUZZ
@given(claims=claims)
def test_validly_signed_tokens_with_arbitrary_claims_never_crash(
    authenticator: tuple[Authenticator, TestIssuer], claims: dict[str, object]
) -> None:
    auth, issuer = authenticator
    valid = jwt.decode(issuer.mint(), options={"verify_signature": False})
    payload = json.dumps({**valid, **claims}).encode()  # fuzzed claims over a valid set, signed
    token = jwt.api_jws.encode(payload, issuer.private_key, algorithm="ES256")
    try:
        principal = asyncio.run(auth.authenticate(f"Bearer {token}"))
    except AuthenticationFailed:
        return
    assert isinstance(principal.subject, str) and principal.subject


policy_like = st.fixed_dictionaries(
    {},
    optional={
        "version": st.integers(-2, 3) | st.text(max_size=5),
        "tenant": json_values,
        "bindings": st.lists(json_values, max_size=3) | json_values,
        "roles": st.dictionaries(st.text(max_size=8), json_values, max_size=3) | json_values,
    },
)


@FUZZ
@given(document=st.one_of(policy_like, json_values), raw=st.binary(max_size=200))
def test_the_policy_loader_only_ever_refuses_with_policy_error(
    tmp_path_factory: pytest.TempPathFactory, document: object, raw: bytes
) -> None:
    directory = tmp_path_factory.mktemp("fuzz-policy")
    (directory / "a.yaml").write_text(yaml.safe_dump(document))
    (directory / "b.yaml").write_bytes(raw)
    for files in (["a.yaml"], ["a.yaml", "b.yaml"]):
        for name in {"a.yaml", "b.yaml"} - set(files):
            (directory / name).unlink(missing_ok=True)
        try:
            load_policy_dir(Path(directory))
        except PolicyError as refused:
            assert str(refused)  # names the file and what was wrong


async def _split(chunks: list[bytes]) -> list[bytes]:
    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return [event async for event in sse_events(source())]


event_bodies = st.lists(
    st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r"), max_size=30
    ).map(lambda text: f"data: {text}\n\n".encode()),
    max_size=8,
)


@FUZZ
@given(events=event_bodies, cuts=st.lists(st.integers(0, 400), max_size=12))
def test_sse_events_survive_any_chunking(events: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(events)
    points = sorted({c for c in cuts if c < len(stream)})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert asyncio.run(_split(chunks)) == events


@FUZZ
@given(chunks=st.lists(st.binary(max_size=64), max_size=10))
def test_sse_splitting_of_garbage_loses_nothing_and_only_cuts_after_blank_lines(chunks: list[bytes]) -> None:
    events = asyncio.run(_split(chunks))
    data = b"".join(chunks)
    joined = b"".join(events)
    assert all(event.endswith(b"\n\n") for event in events)
    # Every byte given comes out once, in order: a final unterminated event is closed; only a
    # remainder of whitespace (no event at all) is left out.
    if joined != data + b"\n\n":
        assert data.startswith(joined) and not data[len(joined) :].strip()
