"""``python -m gateway certs init DIR``: the CA and certificates for the gateway-worker mTLS link."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.pki import CA_DAYS, LEAF_DAYS, PkiExistsError, init_pki


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("certs", help="manage mTLS certificates")
    actions = parser.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="create a CA, a worker server certificate and a gateway client certificate",
        description="Writes ca.pem, worker.pem and gateway-client.pem with their keys (0600). "
        "An existing complete set is kept unless --force is given.",
    )
    init.add_argument("directory", type=Path)
    init.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP for the worker certificate (repeatable); "
        "localhost and 127.0.0.1 are always in",
    )
    init.add_argument(
        "--days", type=int, default=LEAF_DAYS, help=f"leaf validity in days (default {LEAF_DAYS})"
    )
    init.add_argument("--ca-days", type=int, default=CA_DAYS, help=f"CA validity in days (default {CA_DAYS})")
    init.add_argument("--force", action="store_true", help="replace existing files")
    init.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    if not 1 <= args.days <= args.ca_days <= 3650:
        print("error: expected 1 <= --days <= --ca-days <= 3650", file=sys.stderr)
        return 2
    try:
        paths, written = init_pki(
            args.directory,
            server_names=args.name,
            force=args.force,
            leaf_days=args.days,
            ca_days=args.ca_days,
        )
    except PkiExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    verb = "created" if written else "kept existing (use --force to replace)"
    print(f"{verb}: {paths.root}")
    for path in paths.all():
        print(f"  {path.name}")
    return 0
