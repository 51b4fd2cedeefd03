"""``relay`` command line: serve, config, viewer-token, --version."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from relay import __version__, config, log
from relay.core import viewer_token


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="Live caption relay daemon.")
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the daemon"),
        ("config", "print the effective settings, secrets masked"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", type=Path, help="TOML settings file (RELAY_* env wins)")
    token = sub.add_parser("viewer-token", help="issue a viewer token (RELAY_VIEWER_SECRET)")
    token.add_argument("stream_id")
    token.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid")
    token.add_argument("--config", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = config.load(args.config)
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        print(f"relay: invalid settings: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(json.dumps(config.masked(settings), indent=2, sort_keys=True))
        return 0
    if args.command == "viewer-token":
        if settings.viewer_secret is None:
            print("relay: RELAY_VIEWER_SECRET is not set", file=sys.stderr)
            return 2
        expires = int(time.time()) + args.ttl
        print(
            viewer_token.issue(settings.viewer_secret.get_secret_value(), args.stream_id, expires)
        )
        return 0
    log.configure(settings.log_level, settings.log_format)
    from relay.app import serve  # imported late: `relay config` must not need the servers

    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        log.LOG.error("relay.failed", error=str(exc))
        return 1
    return 0
