"""Token verification, one test per attack it must stop, plus the accepted case for each algorithm.

Keys are real (made with ``cryptography``), JWKS URLs are served by a real HTTPS server whose
request count proves when the gateway refreshes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms
from pydantic import ValidationError

from gateway.auth import Authenticator, AuthSettings, Principal
from gateway.auth.keys import parse_jwks
from gateway.config import ConfigError
from gateway.errors import AuthenticationFailed
from gateway.pki import PkiPaths
from gateway.tls import TlsFiles, server_context

ISSUER = "https://idp.example.com"
OTHER_ISSUER = "https://login.partner.example"
AUDIENCE = "warden"
SECRET = "a-shared-secret-that-is-long-enough-0123456789"
T = TypeVar("T")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private: PrivateKey
    pem: Path  # the public key

    def jwk(self, kid: str, alg: str) -> dict[str, Any]:
        jwk: dict[str, Any] = dict(
            get_default_algorithms()[alg].to_jwk(self.private.public_key(), as_dict=True)
        )
        return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    root = tmp_path_factory.mktemp("jwt-keys")
    made: dict[str, PrivateKey] = {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p256b": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }
    pairs: dict[str, KeyPair] = {}
    for name, private in made.items():
        path = root / f"{name}.pem"
        path.write_bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        pairs[name] = KeyPair(private, path)
    return pairs


# --- helpers -------------------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def sign(payload: dict[str, Any], key: Any, alg: str, headers: dict[str, Any] | None = None) -> str:
    """Sign any payload as given (PyJWT's ``encode`` would refuse or coerce some attack payloads)."""
    return jwt.PyJWS().encode(json.dumps(payload).encode(), key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_by_hand(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """HS256 without PyJWT, which refuses PEM keys as HMAC secrets (the attacker has no such scruples)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def pem_key(pair: KeyPair, *algorithms: str, kid: str | None = None) -> dict[str, Any]:
    return {"pem": str(pair.pem), "algorithms": list(algorithms), "kid": kid}


def secret_key(secret: str = SECRET) -> dict[str, Any]:
    return {"secret": secret, "algorithms": ["HS256"]}


def issuer(*key_entries: dict[str, Any], iss: str = ISSUER, **extra: Any) -> dict[str, Any]:
    return {"issuer": iss, "audiences": [AUDIENCE, "warden-admin"], "keys": list(key_entries), **extra}


def settings(*issuers: dict[str, Any], **extra: Any) -> AuthSettings:
    return AuthSettings.model_validate({"issuers": list(issuers), **extra})


class _Reasons(logging.Handler):
    """Collects the rejection reasons the authenticator logs at debug level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        reason = getattr(record, "reason", None)
        if isinstance(reason, str):
            self.reasons.append(reason)


@asynccontextmanager
async def started(auth_settings: AuthSettings) -> AsyncIterator[Authenticator]:
    authenticator = Authenticator(auth_settings)
    await authenticator.start()
    try:
        yield authenticator
    finally:
        await authenticator.aclose()


async def outcome(authenticator: Authenticator, token: str) -> Principal | str:
    """The principal, or the reason the authenticator logged for its generic 401."""
    log = logging.getLogger("gateway.auth")
    handler, level = _Reasons(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        return await authenticator.authenticate(f"Bearer {token}")
    except AuthenticationFailed as exc:
        assert (exc.status_code, exc.code) == (401, "invalid_token")
        assert exc.message == "Authentication failed."  # generic: never says why
        assert len(handler.reasons) == 1
        return handler.reasons[0]
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def check_all(auth_settings: AuthSettings, tokens: list[str]) -> list[Principal | str]:
    async def scenario() -> list[Principal | str]:
        async with started(auth_settings) as authenticator:
            return [await outcome(authenticator, token) for token in tokens]

    return run(scenario())


def check(auth_settings: AuthSettings, token: str) -> Principal | str:
    return check_all(auth_settings, [token])[0]


def accepted(result: Principal | str) -> bool:
    return isinstance(result, Principal)


def es256(pair: KeyPair, **extra: Any) -> AuthSettings:
    """One issuer that trusts ``pair`` for ES256."""
    return settings(issuer(pem_key(pair, "ES256"), **extra))


# --- a real HTTPS JWKS server --------------------------------------------------------------------


class _JwksHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    body = b"{}"
    requests = 0
    lock = threading.Lock()


class _JwksHandler(BaseHTTPRequestHandler):
    server: _JwksHttpServer

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests += 1
            body = self.server.body
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class JwksServer:
    def __init__(self, server: _JwksHttpServer) -> None:
        self._server = server
        self.url = f"https://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"

    @property
    def requests(self) -> int:
        with self._server.lock:
            return self._server.requests

    def publish(self, *jwks: dict[str, Any]) -> None:
        with self._server.lock:
            self._server.body = json.dumps({"keys": list(jwks)}).encode()


@pytest.fixture
def jwks_server(pki: PkiPaths) -> Iterator[JwksServer]:
    server = _JwksHttpServer(("127.0.0.1", 0), _JwksHandler)
    server.lock = threading.Lock()
    context = server_context(TlsFiles(cert=pki.worker_cert, key=pki.worker_key), require_client_cert=False)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield JwksServer(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def jwks_issuer(server: JwksServer, pki: PkiPaths, **jwks: Any) -> dict[str, Any]:
    options = {"url": server.url, "ca": str(pki.ca_cert), "algorithms": ["ES256", "RS256"], **jwks}
    return {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": options}


# --- accepted tokens, one per algorithm family ---------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "family"),
    [
        ("RS256", "rsa"),
        ("RS384", "rsa"),
        ("PS256", "rsa"),
        ("ES256", "p256"),
        ("ES384", "p384"),
        ("EdDSA", "ed25519"),
        ("HS256", None),
    ],
)
def test_valid_token_is_accepted_for_each_algorithm(
    keys: dict[str, KeyPair], alg: str, family: str | None
) -> None:
    signing_key: PrivateKey | bytes
    if family is None:
        entry, signing_key = secret_key(), SECRET.encode()
    else:
        entry, signing_key = pem_key(keys[family], alg), keys[family].private
    payload = claims(sub="alice@example.com", groups=["eng"])
    result = check(settings(issuer(entry)), sign(payload, signing_key, alg))
    assert isinstance(result, Principal)
    assert result.subject == "alice@example.com"
    assert result.issuer == ISSUER
    assert result.expires_at == payload["exp"]
    assert result.claims["groups"] == ["eng"]
    with pytest.raises(TypeError):
        result.claims["sub"] = "mallory"  # type: ignore[index]


def test_audience_list_with_one_accepted_member_is_accepted(keys: dict[str, KeyPair]) -> None:
    token = sign(claims(aud=["some-other-api", "warden-admin"]), keys["p256"].private, "ES256")
    assert accepted(check(es256(keys["p256"]), token))


# --- the attacks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_decode_with_alg_none_should_fail(keys: dict[str, KeyPair], alg: str) -> None:
    unsigned = f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims()).encode())}"
    results = check_all(es256(keys["p256"]), [f"{unsigned}.", f"{unsigned}.c2lnbmF0dXJl"])
    assert results == ["malformed segment", "unsigned token (alg none)"]


def test_hs256_signed_with_the_rsa_public_key_is_refused(keys: dict[str, KeyPair]) -> None:
    """Key confusion: the attacker uses the published RSA public key as an HMAC secret."""
    public_pem = keys["rsa"].pem.read_bytes()
    forged = hs256_by_hand({"alg": "HS256", "typ": "JWT"}, claims(sub="admin"), public_pem)
    honest = sign(claims(), keys["rsa"].private, "RS256")
    rsa_only = settings(issuer(pem_key(keys["rsa"], "RS256")))
    # With an HS256 secret configured beside the RSA key, the forged MAC still matches nothing.
    with_secret = settings(issuer(pem_key(keys["rsa"], "RS256"), secret_key()))
    assert check(rsa_only, forged) == "no key allows this algorithm and kid"
    forged_result, honest_result = check_all(with_secret, [forged, honest])
    assert forged_result == "signature does not verify"
    assert accepted(honest_result)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"pem": "/k.pem", "algorithms": ["RS256", "HS256"]}, "HS256 needs a 'secret'"),
        (
            {"secret": "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n"},
            "looks like a PEM or SSH key",
        ),
        (
            {"secret": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7vbqajDhA user@host"},
            "looks like a PEM or SSH key",
        ),
        ({"secret": SECRET, "algorithms": ["HS256", "RS256"]}, "may only list HS256"),
        ({"secret": "too-short"}, "at least 32 bytes"),
        ({"pem": "/k.pem", "secret": SECRET}, "exactly one of"),
        ({"pem": "/k.pem", "algorithms": []}, "at least 1 item"),
    ],
)
def test_key_confusion_is_refused_at_config_load(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(issuer({"algorithms": ["HS256"], **entry}))


def test_hmac_in_a_jwks_is_refused_at_config_load() -> None:
    jwks = {"file": "/j.json", "algorithms": ["RS256", "HS256"]}
    with pytest.raises(ValidationError, match="never HS"):
        settings({"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks})


def test_algorithm_outside_the_keys_allowlist_is_refused(keys: dict[str, KeyPair]) -> None:
    # Same RSA key, but only RS256 is configured: a PS256 signature by that key is still refused.
    pss = sign(claims(), keys["rsa"].private, "PS256")
    rs = sign(claims(), keys["rsa"].private, "RS256")
    results = check_all(settings(issuer(pem_key(keys["rsa"], "RS256"))), [pss, rs])
    assert results[0] == "no key allows this algorithm and kid"
    assert accepted(results[1])


@pytest.mark.parametrize(("seconds_ago", "ok"), [(5, True), (20, True), (40, False), (3600, False)])
def test_expired_token_is_refused(keys: dict[str, KeyPair], seconds_ago: int, ok: bool) -> None:
    now = int(time.time())
    token = sign(claims(iat=now - 7200, exp=now - seconds_ago), keys["p256"].private, "ES256")
    result = check(es256(keys["p256"], leeway_s=30), token)  # within the leeway is still valid
    assert accepted(result) if ok else result == "expired"


@pytest.mark.parametrize(("seconds_ahead", "ok"), [(10, True), (45, False), (86_400, False)])
def test_not_yet_valid_token_is_refused(keys: dict[str, KeyPair], seconds_ahead: int, ok: bool) -> None:
    token = sign(claims(nbf=int(time.time()) + seconds_ahead), keys["p256"].private, "ES256")
    result = check(es256(keys["p256"], leeway_s=30), token)
    assert accepted(result) if ok else result == "not yet valid"


@pytest.mark.parametrize(("seconds_ahead", "ok"), [(10, True), (45, False), (86_400, False)])
def test_token_issued_in_the_future_is_refused(
    keys: dict[str, KeyPair], seconds_ahead: int, ok: bool
) -> None:
    now = int(time.time())
    token = sign(claims(iat=now + seconds_ahead, exp=now + 90_000), keys["p256"].private, "ES256")
    result = check(es256(keys["p256"], leeway_s=30), token)
    assert accepted(result) if ok else result == "issued in the future"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": str(int(time.time()) + 300)}, "exp is not a number"),  # PyJWT alone would coerce it
        ({"exp": True}, "exp is not a number"),
        ({"iat": "yesterday"}, "iat is not a number"),
        ({"nbf": [0]}, "nbf is not a number"),
        ({"exp": None}, "missing required claim"),  # exp is always required: the cache needs it
        ({"iat": None}, "missing required claim"),  # required by default
    ],
)
def test_malformed_or_missing_time_claims_are_refused(
    keys: dict[str, KeyPair], overrides: dict[str, Any], reason: str
) -> None:
    token = sign(claims(**overrides), keys["p256"].private, "ES256")
    assert check(es256(keys["p256"]), token) == reason


def test_wrong_issuer_is_refused(keys: dict[str, KeyPair]) -> None:
    token = sign(claims(iss="https://evil.example"), keys["p256"].private, "ES256")
    assert check(es256(keys["p256"]), token) == "issuer not configured"


@pytest.mark.parametrize(
    "iss",
    [
        "https://idp.example",  # prefix
        "https://idp.example.com.evil.net",  # configured issuer as a prefix
        "idp.example.com",  # suffix
        "https://idp.example.com/",  # trailing slash
        "HTTPS://IDP.EXAMPLE.COM",  # case
        " https://idp.example.com",  # whitespace
        "https://idp.example.com\u0000",
        [ISSUER],  # a list holding the issuer
    ],
)
def test_partial_issuer_match_is_refused(keys: dict[str, KeyPair], iss: Any) -> None:
    token = sign(claims(iss=iss), keys["p256"].private, "ES256")
    assert check(es256(keys["p256"]), token) == "issuer not configured"


@pytest.mark.parametrize(
    ("aud", "reason"),
    [
        ("other-api", "wrong audience"),
        ("warde", "wrong audience"),  # prefix of an accepted audience
        ("warden-x", "wrong audience"),  # an accepted audience as a prefix
        ("WARDEN", "wrong audience"),
        (["other-api"], "wrong audience"),
        ([AUDIENCE, 5], "malformed aud"),
        (5, "malformed aud"),
        ([], "malformed aud"),
        (None, "missing aud"),
    ],
)
def test_wrong_audience_is_refused(keys: dict[str, KeyPair], aud: Any, reason: str) -> None:
    token = sign(claims(aud=aud), keys["p256"].private, "ES256")
    assert check(es256(keys["p256"]), token) == reason


@pytest.mark.parametrize(
    ("sub", "reason"),
    [
        (None, "missing required claim"),
        ("", "sub is not a non-empty string"),
        (42, "sub is not a non-empty string"),
        (["alice"], "sub is not a non-empty string"),
        ({"id": "alice"}, "sub is not a non-empty string"),
    ],
)
def test_missing_sub_is_refused(keys: dict[str, KeyPair], sub: Any, reason: str) -> None:
    token = sign(claims(sub=sub), keys["p256"].private, "ES256")
    assert check(es256(keys["p256"]), token) == reason


def test_missing_configured_required_claim_is_refused(keys: dict[str, KeyPair]) -> None:
    auth_settings = es256(keys["p256"], required_claims=["sub", "exp", "iat", "tenant"])
    tokens = [sign(payload, keys["p256"].private, "ES256") for payload in (claims(), claims(tenant="acme"))]
    results = check_all(auth_settings, tokens)
    assert results[0] == "missing required claim"
    assert accepted(results[1])


def test_required_claims_must_keep_sub_and_exp() -> None:
    with pytest.raises(ValidationError, match="must include sub, exp"):
        settings(issuer(secret_key(), required_claims=["iat"]))


def test_token_signed_by_another_key_is_refused(keys: dict[str, KeyPair]) -> None:
    token = sign(claims(), keys["p256b"].private, "ES256")
    assert check(es256(keys["p256"]), token) == "signature does not verify"


def test_unknown_kid_refreshes_jwks_once_then_401(
    keys: dict[str, KeyPair], jwks_server: JwksServer, pki: PkiPaths
) -> None:
    jwks_server.publish(keys["p256"].jwk("k1", "ES256"))
    auth_settings = settings(jwks_issuer(jwks_server, pki, min_refresh_interval_s=30))
    known = sign(claims(), keys["p256"].private, "ES256", {"kid": "k1"})
    unknown = sign(claims(), keys["p256b"].private, "ES256", {"kid": "k2"})
    another = sign(claims(), keys["p256b"].private, "ES256", {"kid": "k3"})

    async def scenario() -> None:
        async with started(auth_settings) as authenticator:
            assert jwks_server.requests == 1  # the load at start
            assert accepted(await outcome(authenticator, known))
            assert jwks_server.requests == 1
            assert await outcome(authenticator, unknown) == "no key allows this algorithm and kid"
            assert jwks_server.requests == 2  # exactly one refresh for the unknown kid
            assert await outcome(authenticator, another) == "no key allows this algorithm and kid"
            assert await outcome(authenticator, unknown) == "no key allows this algorithm and kid"
            assert jwks_server.requests == 2  # within min_refresh_interval_s: no refetch

    run(scenario())


def test_rotated_key_is_found_by_refreshing_on_unknown_kid(
    keys: dict[str, KeyPair], jwks_server: JwksServer, pki: PkiPaths
) -> None:
    jwks_server.publish(keys["p256"].jwk("k1", "ES256"))
    auth_settings = settings(jwks_issuer(jwks_server, pki, min_refresh_interval_s=0))
    rotated = sign(claims(), keys["rsa"].private, "RS256", {"kid": "k2"})

    async def scenario() -> None:
        async with started(auth_settings) as authenticator:
            jwks_server.publish(keys["p256"].jwk("k1", "ES256"), keys["rsa"].jwk("k2", "RS256"))
            assert accepted(await outcome(authenticator, rotated))
            assert jwks_server.requests == 2

    run(scenario())


def test_concurrent_unknown_kids_share_one_refresh(
    keys: dict[str, KeyPair], jwks_server: JwksServer, pki: PkiPaths
) -> None:
    jwks_server.publish(keys["p256"].jwk("k1", "ES256"))
    auth_settings = settings(jwks_issuer(jwks_server, pki, min_refresh_interval_s=0))
    rotated = [sign(claims(jti=str(n)), keys["rsa"].private, "RS256", {"kid": "k2"}) for n in range(20)]

    async def scenario() -> None:
        async with started(auth_settings) as authenticator:
            jwks_server.publish(keys["rsa"].jwk("k2", "RS256"))
            results = await asyncio.gather(*(outcome(authenticator, token) for token in rotated))
            assert all(accepted(result) for result in results)
            assert jwks_server.requests == 2  # one refresh, not one per waiting request

    run(scenario())


def test_jwks_is_refetched_after_its_ttl(
    keys: dict[str, KeyPair], jwks_server: JwksServer, pki: PkiPaths
) -> None:
    jwks_server.publish(keys["p256"].jwk("k1", "ES256"))
    auth_settings = settings(jwks_issuer(jwks_server, pki, cache_ttl_s=0.2, min_refresh_interval_s=0))
    first = sign(claims(), keys["p256"].private, "ES256", {"kid": "k1"})
    second = sign(claims(jti="2"), keys["p256"].private, "ES256", {"kid": "k1"})

    async def scenario() -> None:
        async with started(auth_settings) as authenticator:
            assert accepted(await outcome(authenticator, first))
            assert jwks_server.requests == 1
            jwks_server.publish()  # the issuer withdraws the key
            await asyncio.sleep(0.3)
            assert await outcome(authenticator, second) == "no key allows this algorithm and kid"
            assert jwks_server.requests == 2

    run(scenario())


def test_unreachable_jwks_at_start_is_not_fatal(keys: dict[str, KeyPair], pki: PkiPaths) -> None:
    jwks = {
        "url": "https://127.0.0.1:9/jwks.json",
        "ca": str(pki.ca_cert),
        "algorithms": ["ES256"],
        "timeout_s": 1,
    }
    auth_settings = settings({"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks})
    token = sign(claims(), keys["p256"].private, "ES256", {"kid": "k1"})
    assert check(auth_settings, token) == "no key allows this algorithm and kid"


def test_jwks_symmetric_and_private_keys_are_never_used(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    private_jwk = dict(get_default_algorithms()["ES256"].to_jwk(keys["p256b"].private, as_dict=True))
    document = {
        "keys": [
            keys["p256"].jwk("good", "ES256"),
            {"kty": "oct", "k": b64(SECRET.encode()), "kid": "hmac", "alg": "HS256"},
            {**private_jwk, "kid": "leaked"},
            {**keys["rsa"].jwk("enc", "RS256"), "use": "enc"},
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        ]
    }
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(document))
    assert [key.kid for key in parse_jwks(path.read_bytes(), frozenset({"ES256", "RS256"}))] == ["good"]
    entry = {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"file": str(path), "algorithms": ["ES256"]}}
    tokens = [
        sign(claims(), SECRET.encode(), "HS256", {"kid": "hmac"}),
        sign(claims(), keys["p256b"].private, "ES256", {"kid": "leaked"}),
        sign(claims(), keys["p256"].private, "ES256", {"kid": "good"}),
    ]
    hmac_result, leaked_result, good_result = check_all(settings(entry), tokens)
    assert hmac_result == leaked_result == "no key allows this algorithm and kid"
    assert accepted(good_result)


def test_oversized_token_is_refused_before_parsing(keys: dict[str, KeyPair]) -> None:
    big = sign(claims(padding="x" * 2000), keys["p256"].private, "ES256")
    small = sign(claims(), keys["p256"].private, "ES256")
    garbage = "A" * 1_000_000  # would be costly to decode; refused on its length alone
    auth_settings = settings(issuer(pem_key(keys["p256"], "ES256")), max_token_bytes=1024)
    results = check_all(auth_settings, [big, garbage, small])
    assert results[:2] == ["token too large or not ASCII"] * 2
    assert accepted(results[2])


def _flip_low_bit(char: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return alphabet[alphabet.index(char) ^ 1]


_TAMPERED: dict[str, tuple[Any, str]] = {
    # name: (how to change header, payload, signature; the reason it is refused)
    "two segments": (lambda h, p, s: f"{h}.{p}", "malformed token"),
    "four segments": (lambda h, p, s: f"{h}.{p}.{s}.{s}", "malformed token"),
    "empty signature": (lambda h, p, s: f"{h}.{p}.", "malformed segment"),
    "empty header": (lambda h, p, s: f".{p}.{s}", "malformed segment"),
    "padded header": (lambda h, p, s: f"{h}=.{p}.{s}", "malformed segment"),
    "padded payload": (lambda h, p, s: f"{h}.{p}==.{s}", "malformed segment"),
    "padded signature": (lambda h, p, s: f"{h}.{p}.{s}==", "malformed segment"),
    "standard alphabet": (lambda h, p, s: f"{h}.{p}.{s}+/", "malformed segment"),
    "impossible length": (lambda h, p, s: f"{h}.{p}.{s}AAA", "malformed segment"),
    "whitespace": (lambda h, p, s: f"{h}. {p}.{s}", "malformed segment"),
    "non-ascii": (lambda h, p, s: f"{h}.{p}.{s}\u00e9", "token too large or not ASCII"),
    # ES256 signatures are 64 bytes: 86 characters whose last one carries 2 unused bits.
    "non-canonical last char": (
        lambda h, p, s: f"{h}.{p}.{s[:-1]}{_flip_low_bit(s[-1])}",
        "non-canonical segment",
    ),
}


@pytest.mark.parametrize("how", sorted(_TAMPERED))
def test_malformed_segments_and_bad_padding_are_refused(keys: dict[str, KeyPair], how: str) -> None:
    token = sign(claims(), keys["p256"].private, "ES256")
    tamper, reason = _TAMPERED[how]
    results = check_all(es256(keys["p256"]), [tamper(*token.split(".")), token])
    assert results[0] == reason
    assert accepted(results[1])


@pytest.mark.parametrize(
    ("header", "payload", "reason"),
    [
        (b'{"alg":"ES256","alg":"none"}', None, "malformed header"),  # duplicate member
        (None, b'{"iss":"https://idp.example.com","sub":"a","sub":"b"}', "malformed payload"),
        (b'["ES256"]', None, "malformed header"),
        (None, b"not json", "malformed payload"),
        (None, b'{"exp": NaN}', "malformed payload"),
        (b'{"alg":"ES256","kid":7}', None, "malformed kid"),
        (b'{"typ":"JWT"}', None, "missing alg"),
        (b'{"alg":"ES256","b64":false}', None, "unsupported header b64"),  # RFC 7797 unencoded payload
    ],
)
def test_malformed_json_segments_are_refused(
    keys: dict[str, KeyPair], header: bytes | None, payload: bytes | None, reason: str
) -> None:
    honest = sign(claims(), keys["p256"].private, "ES256").split(".")
    token = ".".join(
        [b64(header) if header else honest[0], b64(payload) if payload else honest[1], honest[2]]
    )
    assert check(es256(keys["p256"]), token) == reason


@pytest.mark.parametrize(
    ("extra_header", "reason"),
    [
        ({"crit": ["exp"]}, "unsupported header crit"),
        ({"crit": ["x-custom"], "x-custom": 1}, "unsupported header crit"),
        ({"crit": []}, "unsupported header crit"),
        ({"crit": ["b64"], "b64": True}, "unsupported header crit"),
    ],
)
def test_unknown_crit_header_is_refused(
    keys: dict[str, KeyPair], extra_header: dict[str, Any], reason: str
) -> None:
    token = sign(claims(), keys["p256"].private, "ES256", extra_header)
    assert check(es256(keys["p256"]), token) == reason


def test_second_configured_issuer_is_accepted_and_unconfigured_is_refused(keys: dict[str, KeyPair]) -> None:
    auth_settings = settings(
        issuer(pem_key(keys["p256"], "ES256")),
        issuer(pem_key(keys["ed25519"], "EdDSA"), iss=OTHER_ISSUER),
    )
    partner = sign(claims(iss=OTHER_ISSUER, sub="bob"), keys["ed25519"].private, "EdDSA")
    stranger = sign(claims(iss="https://unknown.example"), keys["p256"].private, "ES256")
    # The unverified iss only picks the keys: claiming the partner while signed by our key fails.
    swapped = sign(claims(iss=OTHER_ISSUER), keys["p256"].private, "ES256")
    partner_result, stranger_result, swapped_result = check_all(auth_settings, [partner, stranger, swapped])
    assert isinstance(partner_result, Principal)
    assert (partner_result.issuer, partner_result.subject) == (OTHER_ISSUER, "bob")
    assert stranger_result == "issuer not configured"
    assert swapped_result == "no key allows this algorithm and kid"


def test_no_configured_issuer_refuses_everything(keys: dict[str, KeyPair]) -> None:
    assert check(AuthSettings(), sign(claims(), keys["p256"].private, "ES256")) == "issuer not configured"


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_token"),
        ("", "invalid_token"),
        ("Basic dXNlcjpwYXNz", "invalid_token"),
        ("Bearer", "invalid_token"),
    ],
)
def test_missing_or_non_bearer_authorization_is_refused(header: str | None, code: str) -> None:
    async def scenario() -> AuthenticationFailed:
        async with started(settings(issuer(secret_key()))) as authenticator:
            with pytest.raises(AuthenticationFailed) as info:
                await authenticator.authenticate(header)
            return info.value

    error = run(scenario())
    assert (error.status_code, error.code) == (401, code)
    assert error.headers["WWW-Authenticate"].startswith("Bearer")


def test_verified_token_is_cached_until_exp(keys: dict[str, KeyPair]) -> None:
    # exp at most ~1.2 s ahead and no leeway: the cache must drop the entry at exp, not serve it on.
    exp = math.floor(time.time()) + 1
    exp += 1 if exp - time.time() < 0.2 else 0
    token = sign(claims(exp=exp), keys["p256"].private, "ES256")

    async def scenario() -> None:
        async with started(es256(keys["p256"], leeway_s=0)) as authenticator:
            first = await authenticator.authenticate(f"Bearer {token}")
            again = await authenticator.authenticate(f"bearer {token}")
            assert again is first  # served from the cache
            await asyncio.sleep(exp - time.time() + 0.05)
            assert await outcome(authenticator, token) == "expired"

    run(scenario())


def test_rejection_log_holds_neither_token_nor_claims(
    keys: dict[str, KeyPair], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.auth")
    token = sign(claims(sub="secret-subject", aud="secret-audience"), keys["p256"].private, "ES256")
    assert check(es256(keys["p256"]), token) == "wrong audience"
    rendered = " ".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert "wrong audience" in rendered
    for value in (token, token.split(".")[2], "secret-subject", "secret-audience"):
        assert value not in rendered


@pytest.mark.parametrize(
    ("algorithms", "message"),
    [
        (["ES384"], r"keys\[0\]\.algorithms: .* cannot verify ES384"),  # a P-256 key
        (["ES256", "RS256"], r"keys\[0\]\.algorithms: .* cannot verify RS256"),
    ],
)
def test_key_that_cannot_verify_its_algorithms_is_a_config_error(
    keys: dict[str, KeyPair], algorithms: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check(settings(issuer(pem_key(keys["p256"], *algorithms))), "x.y.z")


def test_private_key_pem_is_a_config_error(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    path = tmp_path / "private.pem"
    path.write_bytes(
        keys["p256"].private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match=r"auth\.issuers\[0\]\.keys\[0\]\.pem: .* holds a private key"):
        check(settings(issuer({"pem": str(path), "algorithms": ["ES256"]})), "x.y.z")
