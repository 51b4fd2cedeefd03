"""Who may use the control API: a Bearer token when one is set, else loopback only."""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from relay.errors import Forbidden, Unauthorized
from relay.web.keys import SETTINGS


def require_control(request: web.Request, *, allow_query_token: bool = False) -> None:
    """Raise unless the caller may use the control API.

    ``allow_query_token``: also accept ``?token=`` (nginx-rtmp hooks cannot send headers).
    """
    token = request.app[SETTINGS].control_token
    if token is not None and token.get_secret_value():
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if allow_query_token and "token" in request.query:
            scheme, given = "bearer", request.query["token"]
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), expected
        ):
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
        return
    if not _is_loopback(request.remote):
        raise Forbidden("the control API accepts only loopback clients when no token is set")


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False
