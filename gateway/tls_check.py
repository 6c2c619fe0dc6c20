"""Check replacement TLS material before it is used: every file whole, the certificate current and
issued by a CA of the bundle.

The key's match with the certificate is checked by loading both into an ``SSLContext``
(``gateway.tls``); this adds what loading does not look at. Errors name the file and the problem,
never the content.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.hashes import SHA256

from gateway.tls import TlsFiles

_BEGIN_CERT = b"-----BEGIN CERTIFICATE-----"
_MAX_CHAIN = 8  # leaf, intermediates and the anchor; deeper chains are not ours


class TlsMaterialError(Exception):
    """The files cannot be used; the message names the file and the problem."""


def check_material(files: TlsFiles, *, now: dt.datetime) -> dt.datetime | None:
    """Raise ``TlsMaterialError`` unless the files are usable at ``now``; return the cert's expiry."""
    bundle = read_certificates(files.ca, "tls.ca") if files.ca is not None else []
    if files.cert is None:
        return None
    chain = read_certificates(files.cert, "tls.cert")
    leaf = chain[0]
    _check_window(leaf, f"tls.cert {files.cert}", now)
    if files.ca is not None:
        _check_issued(leaf, chain[1:], bundle, files, now)
    return leaf.not_valid_after_utc


def read_certificates(path: Path, setting: str) -> list[x509.Certificate]:
    """All PEM certificates of ``path``; a file cut short (a writer caught mid-way) is an error."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsMaterialError(f"{setting} {path}: cannot read ({exc.strerror})") from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsMaterialError(f"{setting} {path}: not a PEM certificate file") from None
    if len(certificates) != data.count(_BEGIN_CERT):
        raise TlsMaterialError(f"{setting} {path}: ends in an incomplete certificate (half-written?)")
    return certificates


def _check_window(cert: x509.Certificate, where: str, now: dt.datetime) -> None:
    if now >= cert.not_valid_after_utc:
        raise TlsMaterialError(f"{where}: expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    if now < cert.not_valid_before_utc:
        raise TlsMaterialError(f"{where}: not valid before {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}")


def _check_issued(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    bundle: list[x509.Certificate],
    files: TlsFiles,
    now: dt.datetime,
) -> None:
    """Walk from the leaf to a certificate of the bundle, checking each signature and validity.

    One CA signs both ends of the worker link (``certs init``, cert-manager's ``ca.crt``), so our
    own certificate must chain to the bundle that verifies the peer: a certificate that does not
    was most likely paired with the wrong bundle during a rotation.
    """
    anchors = {cert.fingerprint(SHA256()) for cert in bundle}
    current = leaf
    for _ in range(_MAX_CHAIN):
        if current.fingerprint(SHA256()) in anchors:
            return
        issuer = _issuer_of(current, [*intermediates, *bundle])
        if issuer is None:
            raise TlsMaterialError(
                f"tls.cert {files.cert}: not issued by a CA in tls.ca {files.ca} "
                f"(issuer {current.issuer.rfc4514_string()})"
            )
        _check_window(issuer, f"the issuer {issuer.subject.rfc4514_string()}", now)
        current = issuer
    raise TlsMaterialError(f"tls.cert {files.cert}: the chain to tls.ca is longer than {_MAX_CHAIN}")


def _issuer_of(cert: x509.Certificate, candidates: list[x509.Certificate]) -> x509.Certificate | None:
    # Two CAs may share a name (a renewal made with `certs init`): the signature decides.
    for candidate in candidates:
        if candidate.subject != cert.issuer or candidate is cert:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None
