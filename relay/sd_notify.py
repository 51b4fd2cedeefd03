"""systemd ``Type=notify`` support: readiness, watchdog and stopping, over $NOTIFY_SOCKET.

The protocol is one datagram per message to the socket systemd names in the environment;
without it (not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``); False when not running under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.sendto(message.encode(), address)
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog period systemd asks for, or None when it asks for none."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or (pid is not None and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
