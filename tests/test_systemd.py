"""The systemd unit verifies, and `relay serve` speaks the notify protocol it relies on."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cli import free_port

UNIT = Path(__file__).parent.parent / "systemd" / "relay.service"


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: scripts/test installs it (package systemd)")
    relay_bin = Path(sys.executable).parent / "relay"
    assert relay_bin.exists(), "the relay console script is installed beside the interpreter"
    unit = tmp_path / "relay.service"
    unit.write_text(UNIT.read_text().replace("/opt/relay/venv/bin/relay", str(relay_bin)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "EnvironmentFile=",
        "NoNewPrivileges=yes",
    ):
        assert line in text


def test_serve_notifies_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(20)
        env = {
            **os.environ,
            "NOTIFY_SOCKET": path,
            "WATCHDOG_USEC": "400000",
            "RELAY_HTTP_PORT": str(free_port()),
            "RELAY_WS_PORT": str(free_port()),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            messages = [sock.recv(256).decode() for _ in range(3)]
            assert messages[0] == "READY=1"
            assert messages[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            while (message := sock.recv(256).decode()) == "WATCHDOG=1":
                pass
            assert message == "STOPPING=1"
            assert proc.wait(timeout=20) == 0
            assert time.monotonic() - start < 15
        finally:
            proc.kill()
            proc.wait()
