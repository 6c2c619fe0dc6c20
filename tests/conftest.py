from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.pki import PkiPaths, init_pki
from tests.support.redis_server import RedisServer

# Variables that change TLS, proxy or settings behaviour must not leak in from the developer's shell.
_LEAKY_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(scope="session", autouse=True)
def clean_environment() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("WARDEN_") or name in _LEAKY_ENV or name.upper() in _PROXY_ENV:
                patch.delenv(name)
        yield


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    """The test run's PKI, made by the same code as `python -m gateway certs init`."""
    paths, _ = init_pki(tmp_path_factory.mktemp("pki"))
    return paths


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    """A second, unrelated CA with its own certificates: nothing it signs may be trusted."""
    paths, _ = init_pki(tmp_path_factory.mktemp("foreign-pki"))
    return paths


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"
