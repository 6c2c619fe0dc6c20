"""The gateway's command line: each subcommand group lives in its own module."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from gateway.cli import audit, certs, policy, serve, token
from gateway.config import run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Warden secure inference gateway")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(commands)
    certs.register(commands)
    policy.register(commands)
    token.register(commands)
    audit.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)
