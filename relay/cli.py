"""``relay`` command line: serve, config, viewer-token, emulate, --version."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from relay import __version__, config, log
from relay.core import viewer_token

if TYPE_CHECKING:
    from relay.emulators.aliyun_live.emulator import EmulatorConfig


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
    _emulate_parser(sub)
    return parser


def _emulate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    emulate = sub.add_parser("emulate", help="run a local emulator of a cloud API")
    emulate.add_argument("target", choices=("aliyun-live", "aliyun-ice", "tencent-ci"))
    emulate.add_argument("--host", default="127.0.0.1")
    emulate.add_argument("--port", type=int, default=18080, help="0: a free port")
    emulate.add_argument("--access-key-id", help="default: $RELAY_ALIYUN_ACCESS_KEY_ID or dev pair")
    emulate.add_argument("--access-key-secret", help="default: $RELAY_ALIYUN_ACCESS_KEY_SECRET")
    emulate.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="duplicate|drop|reorder=P, delay_ms=MS, burst=N (repeatable)",
    )
    emulate.add_argument("--seed", type=int, default=0, help="seed of the fault choices")
    emulate.add_argument(
        "--rtc-source",
        action="append",
        default=[],
        metavar="CHANNEL=URL",
        help="audio for Mode=rtc tasks of that ChannelID (repeatable)",
    )
    emulate.add_argument("--log-level", default="info")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "emulate":
        return _emulate(args)
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


def _emulate(args: argparse.Namespace) -> int:
    if args.target != "aliyun-live":
        print(f"relay: the {args.target} emulator is not built yet", file=sys.stderr)
        return 2
    from relay.emulators.aliyun_live import (
        DEV_ACCESS_KEY_ID,
        DEV_ACCESS_KEY_SECRET,
        EmulatorConfig,
        Faults,
    )

    key_id = args.access_key_id or os.environ.get("RELAY_ALIYUN_ACCESS_KEY_ID")
    secret = args.access_key_secret or os.environ.get("RELAY_ALIYUN_ACCESS_KEY_SECRET")
    if bool(key_id) != bool(secret):
        print("relay: give both an access key id and its secret, or neither", file=sys.stderr)
        return 2
    try:
        faults = Faults.from_json(
            {name: float(value) for name, value in _pairs(args.fault)} | {"seed": args.seed}
        )
        rtc_sources = dict(_pairs(args.rtc_source))
    except ValueError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    log.configure(args.log_level)
    config = EmulatorConfig(
        access_key_id=key_id or DEV_ACCESS_KEY_ID,
        access_key_secret=secret or DEV_ACCESS_KEY_SECRET,
        faults=faults,
        rtc_sources=rtc_sources,
    )
    try:
        asyncio.run(_run_emulator(config, args.host, args.port))
    except OSError as exc:
        log.LOG.error("emulator.failed", error=str(exc))
        return 1
    return 0


def _pairs(items: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        out.append((name, value))
    return out


async def _run_emulator(config: EmulatorConfig, host: str, port: int) -> None:
    from relay.emulators.aliyun_live import AliyunLiveEmulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with AliyunLiveEmulator(config).running(host, port) as bound:
        print(f"relay emulate aliyun-live: listening on http://{host}:{bound}", flush=True)
        print(f"  access key id: {config.access_key_id}", flush=True)  # never the secret
        await stop.wait()
