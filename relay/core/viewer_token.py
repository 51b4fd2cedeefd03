"""Viewer tokens: ``{expiry}.{hmac}`` scoping one stream until an expiry (epoch seconds).

``hmac = HMAC-SHA256(secret, "{stream_id}.{expiry}")`` in hex. Issued by whoever embeds the
player (``relay viewer-token``); checked at the WebSocket handshake when a secret is set.
"""

from __future__ import annotations

import hashlib
import hmac


def issue(secret: str, stream_id: str, expires_at: int) -> str:
    return f"{expires_at}.{_mac(secret, stream_id, expires_at)}"


def check(secret: str, stream_id: str, token: str | None, *, now: float) -> bool:
    if not token:
        return False
    expiry, _, mac = token.partition(".")
    if not expiry.isascii() or not expiry.isdigit() or len(expiry) > 12:
        return False
    expected = _mac(secret, stream_id, int(expiry))
    return hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")) and now < int(
        expiry
    )


def _mac(secret: str, stream_id: str, expires_at: int) -> str:
    message = f"{stream_id}.{expires_at}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
