"""The ASR-SIG callback signature of Alibaba Cloud Live real-time ASR tasks.

``ASR-SIG = md5("{SIG-TIME}/{callback URL}/{AuthKey}")`` in lowercase hex. The hash covers the
header string exactly as received, so SIG-TIME may be seconds (10 digits) or milliseconds
(13 digits); only the freshness check needs the unit. The signature does not cover the body:
callers must also keep the skew window short and drop redelivered message ids.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum

_MS_THRESHOLD = 10**11  # above this, a timestamp is in milliseconds (year 5138 in seconds)


class Verdict(StrEnum):
    OK = "ok"
    MISSING = "missing_signature"
    BAD = "bad_signature"
    STALE = "stale_signature"


def sign(sig_time: str, callback_url: str, auth_key: str) -> str:
    """Return the ASR-SIG value for these inputs."""
    # surrogateescape: hash the bytes as received, even when a header was not valid UTF-8.
    message = f"{sig_time}/{callback_url}/{auth_key}".encode("utf-8", "surrogateescape")
    digest = hashlib.md5(message, usedforsecurity=False)
    return digest.hexdigest()


def sig_time_seconds(sig_time: str) -> float | None:
    """Parse SIG-TIME (epoch seconds or milliseconds) to seconds; None if it is not a time."""
    if not sig_time.isascii() or not sig_time.isdigit() or len(sig_time) > 16:
        return None
    value = int(sig_time)
    return value / 1000 if value >= _MS_THRESHOLD else float(value)


def verify(
    sig_time: str | None,
    asr_sig: str | None,
    *,
    callback_url: str,
    auth_key: str,
    now: float,
    max_skew_s: float,
) -> Verdict:
    """Check one callback's headers against the task's registered URL and key.

    The comparison is constant-time and over the header strings exactly as received (the
    signature hex is compared case-insensitively). The signature is checked before the
    time, so an unsigned caller learns nothing about the window.
    """
    if not sig_time or not asr_sig:
        return Verdict.MISSING
    expected = sign(sig_time, callback_url, auth_key)
    if not hmac.compare_digest(
        expected.encode(), asr_sig.strip().lower().encode("utf-8", "replace")
    ):
        return Verdict.BAD
    sent_at = sig_time_seconds(sig_time)
    if sent_at is None or abs(now - sent_at) > max_skew_s:
        return Verdict.STALE
    return Verdict.OK
