"""``python -m gateway serve``."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from gateway.config import ConfigError
from gateway.logs import configure_logging
from gateway.serving import serve
from gateway.settings import load_gateway_settings
from gateway.tls import server_context
from gateway.tracing import TracingConfigError, tracing_from_env

logger = logging.getLogger("gateway")


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("serve", help="run the gateway")
    parser.add_argument("--config", help="settings YAML file (WARDEN_GATEWAY_* variables override it)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that the other commands (policy, audit, token, certs) start without
    # loading the guards' NLP stack.
    from gateway.app import create_app

    settings = load_gateway_settings(args.config, overrides={"host": args.host, "port": args.port})
    configure_logging(settings.log_level)
    try:
        tracing = tracing_from_env("warden-gateway")
    except TracingConfigError as exc:
        raise ConfigError(str(exc)) from None
    context = server_context(settings.tls.files(), require_client_cert=False) if settings.tls else None
    logger.info(
        "gateway starting",
        extra={
            "host": settings.host,
            "port": settings.port,
            "tls": context is not None,
            "upstreams": [u.name for u in settings.upstreams],
            "tracing": tracing is not None,
        },
    )
    serve(
        create_app(settings, tracing=tracing),
        host=settings.host,
        port=settings.port,
        ssl_context=context,
        graceful_shutdown_s=settings.graceful_shutdown_s,
        log_level=settings.log_level,
    )
    return 0
