"""Bearer-token authentication: JWTs from configured issuers, verified against configured keys."""

from __future__ import annotations

from gateway.auth.authenticator import Authenticator, Principal
from gateway.auth.settings import AuthSettings

__all__ = ["AuthSettings", "Authenticator", "Principal"]
