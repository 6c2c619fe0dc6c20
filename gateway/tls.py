"""The one place that builds SSL contexts, for both ends of every TLS link.

TLS 1.2 is the floor and 1.3 is negotiated whenever both ends have it. On the worker link both
sides verify: the worker requires a client certificate from the configured CA
(``CERT_REQUIRED``), the gateway verifies the worker's certificate and its host name.
Standard library only, so the worker can import it without any gateway dependency. Both services
rebuild their contexts with these functions when the files change (``gateway.tls_reload``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ConfigError

# Forward-secret AEAD suites only for TLS 1.2; TLS 1.3 suites are fixed by OpenSSL and all strong.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for one end of a TLS link. ``ca`` verifies the peer; ``cert``/``key`` identify us."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


def server_context(files: TlsFiles, *, require_client_cert: bool) -> ssl.SSLContext:
    """A server context; with ``require_client_cert`` the peer must present a cert signed by ``ca``."""
    if files.cert is None or files.key is None:
        raise ConfigError("tls: a server needs both 'cert' and 'key'")
    context = _base_context(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(context, files)
    if require_client_cert:
        if files.ca is None:
            raise ConfigError("tls.ca: required to verify client certificates")
        _load_ca(context, files.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        # A resumed session skips verification: without tickets, a client whose CA was rotated out
        # of the bundle cannot come back on a session from before (see gateway.tls_reload).
        context.num_tickets = 0
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(files: TlsFiles, *, check_hostname: bool = True) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca`` (or the system store) and host name.

    With ``cert`` and ``key`` it also presents a client certificate (mTLS).
    """
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = check_hostname
    if files.ca is not None:
        _load_ca(context, files.ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if files.cert is not None or files.key is not None:
        _load_chain(context, files)
    return context


def _base_context(protocol: int) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def _load_chain(context: ssl.SSLContext, files: TlsFiles) -> None:
    if files.cert is None or files.key is None:
        raise ConfigError("tls: 'cert' and 'key' must be given together")
    try:
        context.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    except FileNotFoundError as exc:
        raise ConfigError(f"tls: file not found: {exc.filename}") from None
    except ssl.SSLError:
        raise ConfigError(
            f"tls: {files.cert} and {files.key} are not a matching PEM certificate and key"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=str(ca))
    except FileNotFoundError:
        raise ConfigError(f"tls.ca: file not found: {ca}") from None
    except ssl.SSLError:
        raise ConfigError(f"tls.ca: {ca} holds no valid PEM CA certificate") from None
