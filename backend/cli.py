"""The worker's command line: ``serve``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from backend import generate
from backend.server import create_app
from backend.settings import WorkerSettings, load_worker_settings
from gateway.config import ConfigError, run_command
from gateway.logs import configure_logging
from gateway.serving import serve
from gateway.tls_reload import reloading_server_context
from gateway.tracing import TracingConfigError, tracing_from_env

# Gateways pool connections to workers and close idle ones after their idle_connection_timeout_s
# (4 s by default); the worker keeps them far longer so that it is never the side closing first.
WORKER_KEEP_ALIVE_S = 30

logger = logging.getLogger("backend")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description="Warden inference worker")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser("serve", help="serve the OpenAI-compatible API over mTLS")
    serve_cmd.add_argument("--config", help="settings YAML file (WARDEN_WORKER_* variables override it)")
    serve_cmd.add_argument("--model", help="'default' (the bundled SmolLM2-135M-Instruct) or a path")
    serve_cmd.add_argument("--served-model-name")
    serve_cmd.add_argument(
        "--model-sha256", help="expected SHA-256 of the model (tamper check before loading)"
    )
    serve_cmd.add_argument("--dtype", choices=["auto", "bfloat16", "float32"])
    serve_cmd.add_argument("--kv-cache-memory", type=int, metavar="MB", help="KV cache budget in MiB")
    serve_cmd.add_argument("--max-num-seqs", type=int, help="sequences computed together at most")
    serve_cmd.add_argument(
        "--block-size", type=int, choices=[8, 16, 32, 64, 128], help="KV block size in tokens"
    )
    serve_cmd.add_argument("--max-waiting", type=int, help="queued requests beyond which new ones get 429")
    serve_cmd.add_argument("--host")
    serve_cmd.add_argument("--port", type=int)
    serve_cmd.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics over plain HTTP on this port (and not on the mTLS port)",
    )
    serve_cmd.add_argument("--metrics-host", help="address of the metrics port (default 127.0.0.1)")
    serve_cmd.add_argument("--tls-cert", type=Path, help="the worker's certificate (PEM)")
    serve_cmd.add_argument("--tls-key", type=Path, help="the worker's private key (PEM)")
    serve_cmd.add_argument("--tls-ca", type=Path, help="CA that signs allowed client certificates")
    serve_cmd.add_argument(
        "--tls-reload-interval",
        type=float,
        metavar="SECONDS",
        help="check the TLS files for a renewal this often (default 5; 0: load them once at start)",
    )
    serve_cmd.add_argument(
        "--allow-client",
        action="append",
        dest="allowed_clients",
        metavar="NAME",
        help="client identity (SAN or CN) allowed to connect; repeatable; default: any from --tls-ca",
    )
    serve_cmd.add_argument(
        "--insecure-dev",
        action="store_true",
        default=None,
        help="serve plain HTTP without certificates (local experiments only; never in production)",
    )
    serve_cmd.set_defaults(handler=run_serve)
    generate.register(commands)
    return parser


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    return load_worker_settings(
        args.config,
        overrides={
            "model": args.model,
            "served_model_name": args.served_model_name,
            "model_sha256": args.model_sha256,
            "dtype": args.dtype,
            "kv_cache_memory_mb": args.kv_cache_memory,
            "max_num_seqs": args.max_num_seqs,
            "block_size": args.block_size,
            "max_waiting": args.max_waiting,
            "host": args.host,
            "port": args.port,
            "metrics_port": args.metrics_port,
            "metrics_host": args.metrics_host,
            "insecure_dev": args.insecure_dev,
            "tls": {
                "cert": args.tls_cert,
                "key": args.tls_key,
                "ca": args.tls_ca,
                "allowed_clients": args.allowed_clients,
                "reload_interval_s": args.tls_reload_interval,
            },
        },
    )


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        tracing = tracing_from_env("warden-worker")
    except TracingConfigError as exc:
        raise ConfigError(f"tracing (OTEL_* environment): {exc}") from None
    configure_logging(settings.log_level)
    if settings.tls.complete():
        # Renewed certificates and rotated CA bundles apply to new handshakes without a restart.
        context = reloading_server_context(
            settings.tls.files(),
            require_client_cert=True,
            interval_s=settings.tls.reload_interval_s,
            label="worker",
        )
    else:
        context = None
        logger.warning(
            "INSECURE: serving plain HTTP without client authentication (--insecure-dev). "
            "Anyone who can reach this port can use the model. Never use this outside a local experiment."
        )
    logger.info(
        "worker starting",
        extra={
            "host": settings.host,
            "port": settings.port,
            "mtls": context is not None,
            "model": settings.model,
            "metrics_port": settings.metrics_port,
            "tracing": tracing is not None,
        },
    )
    try:
        serve(
            create_app(settings, tracing=tracing),
            host=settings.host,
            port=settings.port,
            ssl_context=context,
            graceful_shutdown_s=settings.graceful_shutdown_s,
            log_level=settings.log_level,
            allowed_clients=settings.tls.allowed_clients if context is not None else (),
            keep_alive_s=WORKER_KEEP_ALIVE_S,
        )
    finally:
        if tracing is not None:
            tracing.shutdown()  # flushes the spans still batched
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)
