"""The worker's HTTP application. Served over mTLS only (see ``backend.cli``)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from backend.settings import WorkerSettings
from gateway.errors import install_error_handlers


def create_app(settings: WorkerSettings) -> Starlette:
    served_name = settings.served_model_name or settings.model

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": served_name})

    app = Starlette(routes=[Route("/health", health)])
    install_error_handlers(app)
    return app
