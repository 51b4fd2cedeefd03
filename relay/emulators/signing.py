"""Verify Alibaba Cloud POP request signatures, as the official SDKs make them. Pure: no I/O.

Two schemes (contract §7):

* **ACS3-HMAC-SHA256** (the SDK default): ``Authorization: ACS3-HMAC-SHA256 Credential=AK,
  SignedHeaders=a;b,Signature=hex`` over a canonical request of method, path, sorted query,
  the signed headers and ``x-acs-content-sha256``.
* **v2 RPC HMAC-SHA1** (``Config(signature_algorithm="v2")``): ``Signature`` in the query,
  base64 HMAC-SHA1 with ``secret + "&"`` over ``METHOD&%2F&quote(sorted params)``.

:meth:`Verifier.verify` returns the access key id or raises :class:`PopError` carrying the POP
error code and HTTP status. The order of checks: shape, access key, timestamp, body hash,
signature, and only then the nonce, so an unsigned caller can neither learn anything nor fill
the nonce memory. Signatures are compared in constant time and never appear in a message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from urllib.parse import parse_qsl, quote

ACS3 = "ACS3-HMAC-SHA256"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MAX_SKEW_S = 15 * 60
# The V3 headers a signature must cover: without them a replay could change the action or
# the date, or strip the nonce.
REQUIRED_SIGNED = frozenset(
    {"host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce",
     "x-acs-content-sha256"}
)  # fmt: skip
_MISMATCH = "Specified signature is not matched with our calculation."


class PopError(Exception):
    """A refusal with the POP error code and HTTP status the cloud would answer."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class Scheme(StrEnum):
    ACS3 = "ACS3-HMAC-SHA256"
    V2 = "HMAC-SHA1"


@dataclass(frozen=True, slots=True)
class Request:
    """A request as received. ``query`` and ``form`` are decoded pairs (see :func:`pairs`)."""

    method: str
    path: str
    query: Sequence[tuple[str, str]]
    headers: Mapping[str, str]  # any case; looked up case-insensitively
    body: bytes = b""
    form: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True, slots=True)
class Verified:
    access_key_id: str
    scheme: Scheme


def pairs(raw_query: str) -> list[tuple[str, str]]:
    """Decode a raw query or form string as the SDK encodes it (``+`` is a space)."""
    return parse_qsl(raw_query, keep_blank_values=True)


@dataclass(slots=True)
class NonceMemory:
    """The nonces seen in the last ``window_s`` seconds, at most ``max_entries`` of them.

    A timestamp is only accepted within ``MAX_SKEW_S`` of now, so a nonce older than twice
    that can never come back with a valid timestamp and may be forgotten. Past the bound the
    oldest are forgotten first (memory stays bounded under a flood).
    """

    window_s: float = 2 * MAX_SKEW_S
    max_entries: int = 100_000
    _seen: OrderedDict[tuple[str, str], float] = field(default_factory=OrderedDict)

    def check_and_add(self, key: tuple[str, str], now: float) -> bool:
        """Remember ``key``; return False if it was already seen within the window."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.window_s and len(self._seen) < self.max_entries:
                break
            del self._seen[oldest]
        if key in self._seen:
            return False
        self._seen[key] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)


class Verifier:
    """Checks requests against ``secrets`` (access key id -> secret, or None if unknown)."""

    def __init__(
        self,
        secrets: Callable[[str], str | None],
        *,
        max_skew_s: float = MAX_SKEW_S,
        nonces: NonceMemory | None = None,
    ) -> None:
        self._secrets = secrets
        self._max_skew_s = max_skew_s
        self._nonces = nonces if nonces is not None else NonceMemory(window_s=2 * max_skew_s)

    def verify(self, request: Request, now: float) -> Verified:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if "authorization" in headers:
            return self._acs3(request, headers, now)
        if any(k == "Signature" for k, _ in request.query):
            return self._v2(request, now)
        raise PopError("IncompleteSignature", "The request is not signed.")

    # --- ACS3-HMAC-SHA256 ---------------------------------------------------------------

    def _acs3(self, request: Request, headers: Mapping[str, str], now: float) -> Verified:
        credential, signed, given = _parse_authorization(headers["authorization"])
        missing = REQUIRED_SIGNED - set(signed)
        if missing:
            raise PopError(
                "IncompleteSignature", f"SignedHeaders must include {', '.join(sorted(missing))}."
            )
        absent = [name for name in signed if name not in headers]
        if absent:
            raise PopError("MissingParameter", f"The signed header {absent[0]} is missing.")
        secret = self._secret(credential)
        self._check_time(headers["x-acs-date"], "x-acs-date", now)
        body_hash = headers["x-acs-content-sha256"].strip()
        if not hmac.compare_digest(body_hash.lower(), hashlib.sha256(request.body).hexdigest()):
            raise PopError("SignatureDoesNotMatch", "x-acs-content-sha256 does not match the body.")
        canonical = "\n".join(
            (
                request.method.upper(),
                request.path or "/",
                canonical_query(request.query),
                "".join(f"{name}:{headers[name].strip()}\n" for name in signed),
                ";".join(signed),
                body_hash,
            )
        )
        to_sign = f"{ACS3}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        expected = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        _compare(expected, given.lower())
        self._check_nonce(credential, headers["x-acs-signature-nonce"], now)
        return Verified(credential, Scheme.ACS3)

    # --- v2 RPC HMAC-SHA1 ---------------------------------------------------------------

    def _v2(self, request: Request, now: float) -> Verified:
        params = [*request.query, *request.form]
        values = dict(params)
        for name in ("AccessKeyId", "SignatureMethod", "SignatureVersion", "Timestamp",
                     "SignatureNonce"):  # fmt: skip
            if not values.get(name):
                raise PopError("MissingParameter", f"The input parameter {name} is missing.")
        if values["SignatureMethod"] != "HMAC-SHA1":
            raise PopError("InvalidParameter", "SignatureMethod must be HMAC-SHA1.")
        if values["SignatureVersion"] != "1.0":
            raise PopError("InvalidParameter", "SignatureVersion must be 1.0.")
        access_key_id = values["AccessKeyId"]
        secret = self._secret(access_key_id)
        self._check_time(values["Timestamp"], "Timestamp", now)
        signed = [(k, v) for k, v in params if k != "Signature"]
        to_sign = "&".join(
            (request.method.upper(), quote(request.path or "/", safe="~"),
             quote(canonical_query(signed), safe="~"))
        )  # fmt: skip
        digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
        _compare(base64.b64encode(digest).decode(), values.get("Signature", ""))
        self._check_nonce(access_key_id, values["SignatureNonce"], now)
        return Verified(access_key_id, Scheme.V2)

    # --- shared -------------------------------------------------------------------------

    def _secret(self, access_key_id: str) -> str:
        secret = self._secrets(access_key_id)
        if secret is None:
            raise PopError(
                "InvalidAccessKeyId.NotFound", "Specified access key is not found.", status=404
            )
        return secret

    def _check_time(self, value: str, name: str, now: float) -> None:
        try:
            at = datetime.strptime(value.strip(), TIME_FORMAT).replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise PopError(
                "InvalidTimeStamp.Format", f"{name} must be UTC in the form {TIME_FORMAT}."
            ) from None
        if abs(now - at) > self._max_skew_s:
            raise PopError("InvalidTimeStamp.Expired", f"Specified {name} is expired.")

    def _check_nonce(self, access_key_id: str, nonce: str, now: float) -> None:
        if not self._nonces.check_and_add((access_key_id, nonce), now):
            raise PopError("SignatureNonceUsed", "Specified signature nonce was used already.")


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """Sorted ``quote(k)=quote(v)`` pairs joined by ``&`` (space as ``%20``, ``~`` kept)."""
    encoded = sorted((quote(k, safe="~"), quote(v, safe="~")) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in encoded)


def _parse_authorization(value: str) -> tuple[str, list[str], str]:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ACS3:
        raise PopError("IncompleteSignature", f"Authorization must use {ACS3}.")
    parts: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if sep:
            parts[key] = val
    credential, signed, signature = (
        parts.get("Credential"), parts.get("SignedHeaders"), parts.get("Signature")
    )  # fmt: skip
    if not credential or not signed or not signature:
        raise PopError(
            "IncompleteSignature", "Authorization needs Credential, SignedHeaders and Signature."
        )
    return credential, signed.lower().split(";"), signature


def _compare(expected: str, given: str) -> None:
    if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
        raise PopError("SignatureDoesNotMatch", _MISMATCH)
