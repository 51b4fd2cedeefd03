"""The command line, run as a real process: serve (graceful SIGTERM), config, --version."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relay import __version__


def relay_cmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_version() -> None:
    result = relay_cmd("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"relay {__version__}")


def test_config_masks_secrets_and_layers_file_and_env(tmp_path: Path) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text('http_port = 9001\ncontrol_token = "file-token"\nws_port = 9002\n')
    env = {"RELAY_WS_PORT": "9100", "RELAY_ALIYUN_ACCESS_KEY_SECRET": "sk-very-secret"}
    result = relay_cmd("config", "--config", str(toml), env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["http_port"] == 9001 and shown["ws_port"] == 9100  # env beats the file
    assert shown["control_token"] == "***" and shown["aliyun_access_key_secret"] == "***"
    assert "file-token" not in result.stdout and "sk-very-secret" not in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (("config", "--config", "/nonexistent.toml"), {}, "not found"),
        (("config",), {"RELAY_HTTP_PORT": "http"}, "http_port"),
        (("config",), {"RELAY_STORE": "floppy"}, "store"),
    ],
)
def test_bad_settings_exit_2_with_a_clear_message(
    args: tuple[str, ...], env: dict[str, str], needle: str
) -> None:
    result = relay_cmd(*args, env=env)
    assert result.returncode == 2
    assert needle in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_serve_then_sigterm_closes_viewers_1001_and_exits_0() -> None:
    http_port, ws_port = free_port(), free_port()
    env = {
        **os.environ,
        "RELAY_HTTP_PORT": str(http_port),
        "RELAY_WS_PORT": str(ws_port),
        "RELAY_CONTROL_TOKEN": "secret-control-token",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            while True:  # wait for the viewer port
                try:
                    ws = await connect(f"ws://127.0.0.1:{ws_port}/v1/captions/x")
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            assert json.loads(await ws.recv())["type"] == "hello"
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1001
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    logs = (await proc.stderr.read()).decode()
    events = [json.loads(line)["event"] for line in logs.splitlines() if line.startswith("{")]
    assert events[0] == "relay.started" and events[-1] == "relay.stopped"
    assert "secret-control-token" not in logs
