"""``python -m gateway token mint|keygen``: signing keys and tokens for development and tests only.

In production an identity provider issues tokens; the gateway only verifies them. These commands
let a developer try the gateway without one, and say so on stderr every time they run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth.settings import MIN_SECRET_BYTES
from gateway.pki import write_key_file

DEV_ONLY = "Development only: real deployments get tokens from their identity provider"
PRIVATE_NAME = "jwt-private.pem"
PUBLIC_NAME = "jwt-public.pem"
ASYMMETRIC = ("RS256", "RS384", "PS256", "ES256", "ES384", "EdDSA")
RESERVED_CLAIMS = frozenset({"iss", "aud", "sub", "exp", "iat", "nbf"})
_RSA_BITS = 3072


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "token",
        help="mint test tokens and signing keys (development only)",
        description=f"Test tokens and signing keys. {DEV_ONLY}.",
    )
    actions = parser.add_subparsers(dest="token_command", required=True, metavar="ACTION")

    mint = actions.add_parser(
        "mint",
        help="print a signed JWT (development only)",
        description=f"Print a signed JWT on stdout. {DEV_ONLY}.",
    )
    mint.add_argument("--key", type=Path, required=True, help="private key PEM, or a secret file for HS256")
    mint.add_argument("--alg", choices=(*ASYMMETRIC, "HS256"), default="ES256")
    mint.add_argument("--iss", required=True, help="issuer (iss)")
    mint.add_argument("--aud", required=True, action="append", help="audience (aud); repeatable")
    mint.add_argument("--sub", required=True, help="subject (sub)")
    mint.add_argument("--groups", help="comma-separated list for the 'groups' claim")
    mint.add_argument(
        "--tenant-claim", metavar="NAME=VALUE", help="the tenant claim, e.g. org=acme (a string)"
    )
    mint.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra claim (repeatable); VALUE is read as JSON when it parses, else as a string",
    )
    mint.add_argument("--kid", help="key id for the token header")
    mint.add_argument("--ttl", type=int, default=3600, help="seconds until exp (default 3600)")
    mint.set_defaults(handler=run_mint)

    keygen = actions.add_parser(
        "keygen",
        help="write a signing key pair (development only)",
        description=f"Write {PRIVATE_NAME} (0600) and {PUBLIC_NAME} into DIR. {DEV_ONLY}.",
    )
    keygen.add_argument("directory", type=Path)
    keygen.add_argument("--alg", choices=ASYMMETRIC, default="ES256")
    keygen.add_argument("--force", action="store_true", help="replace existing files")
    keygen.set_defaults(handler=run_keygen)


def _warn() -> None:
    print(
        "warning: development only; real deployments get tokens from their identity provider", file=sys.stderr
    )


def run_mint(args: argparse.Namespace) -> int:
    _warn()
    if not 1 <= args.ttl <= 31 * 86_400:
        return _error("--ttl must be between 1 second and 31 days")
    try:
        claims = _claims(args)
        key = _signing_key(args.key, args.alg)
    except ValueError as exc:
        return _error(str(exc))
    headers = {"kid": args.kid} if args.kid else None
    print(jwt.encode(claims, key, algorithm=args.alg, headers=headers))
    return 0


def _claims(args: argparse.Namespace) -> dict[str, Any]:
    now = int(time.time())
    audiences: list[str] = args.aud
    claims: dict[str, Any] = {
        "iss": args.iss,
        "aud": audiences[0] if len(audiences) == 1 else audiences,
        "sub": args.sub,
        "iat": now,
        "exp": now + args.ttl,
    }
    extras: list[tuple[str, Any]] = []
    if args.groups is not None:
        extras.append(("groups", [group for group in args.groups.split(",") if group]))
    if args.tenant_claim is not None:
        name, value = _pair(args.tenant_claim, "--tenant-claim")
        extras.append((name, value))
    for item in args.claim:
        name, raw = _pair(item, "--claim")
        extras.append((name, _json_or_string(raw)))
    for name, value in extras:
        if name in RESERVED_CLAIMS:
            raise ValueError(f"claim {name!r} is set by --iss/--aud/--sub/--ttl")
        claims[name] = value
    return claims


def _pair(item: str, option: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise ValueError(f"{option}: expected NAME=VALUE")
    return name, value


def _json_or_string(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _signing_key(path: Path, alg: str) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"--key: cannot read {path} ({exc.strerror})") from None
    if alg == "HS256":
        secret = data.strip()
        if b"-----BEGIN" in secret:
            raise ValueError("--key: HS256 needs a secret file, not a PEM key")
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"--key: an HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
        return secret
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"--key: {path} is not an unencrypted PEM private key") from None


def run_keygen(args: argparse.Namespace) -> int:
    _warn()
    directory: Path = args.directory
    private_path, public_path = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    existing = [path.name for path in (private_path, public_path) if path.exists()]
    if existing and not args.force:
        return _error(f"{directory} already holds {', '.join(existing)}; use --force to replace")
    key = _new_private_key(args.alg)
    directory.mkdir(parents=True, exist_ok=True)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_key_file(private_path, private_pem, 0o600)
    write_key_file(public_path, public_pem, 0o644)
    print(f"{private_path}\n{public_path}")
    print(f"verify with: keys: [{{pem: {public_path}, algorithms: [{args.alg}]}}]", file=sys.stderr)
    return 0


def _new_private_key(alg: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2
