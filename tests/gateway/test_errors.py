from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.errors import InvalidRequest, RateLimited, install_error_handlers


async def invalid(_request: Request) -> JSONResponse:
    raise InvalidRequest("messages: expected a list", code="invalid_messages", param="messages")


async def limited(_request: Request) -> JSONResponse:
    raise RateLimited(headers={"Retry-After": "3"})


async def crash(_request: Request) -> JSONResponse:
    raise RuntimeError("secret-token-abc /srv/internal/path.py")


def make_app() -> Starlette:
    app = Starlette(routes=[Route("/invalid", invalid), Route("/limited", limited), Route("/crash", crash)])
    install_error_handlers(app)
    return app


def test_api_error_renders_the_openai_envelope() -> None:
    response = TestClient(make_app()).get("/invalid")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "messages: expected a list",
            "type": "invalid_request_error",
            "code": "invalid_messages",
            "param": "messages",
        }
    }


def test_error_headers_are_sent() -> None:
    response = TestClient(make_app()).get("/limited")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json()["error"]["code"] == "rate_limited"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nowhere", 404, "not_found"),
        ("POST", "/invalid", 405, "method_not_allowed"),
    ],
)
def test_routing_errors_use_the_envelope(method: str, path: str, status: int, code: str) -> None:
    response = TestClient(make_app()).request(method, path)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_unexpected_exception_leaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    client = TestClient(make_app(), raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR):
        response = client.get("/crash")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "secret-token-abc" not in response.text
    assert "Traceback" not in response.text
    assert "secret-token-abc" not in caplog.text
    assert any(getattr(r, "error_type", None) == "RuntimeError" for r in caplog.records)
