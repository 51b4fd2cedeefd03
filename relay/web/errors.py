"""Every error a client sees, in one shape: ``{"error": {"code", "message"}}``.

The middleware maps :class:`relay.errors.RelayError` (which knows its status and code),
aiohttp's own HTTP errors (unknown route, wrong method) and anything unexpected (500,
logged with its traceback, never shown to the client).
"""

from __future__ import annotations

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from relay.errors import RelayError

log = structlog.get_logger("relay.web")


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def validation_message(exc: ValidationError) -> str:
    """Field-level, one line per problem: ``source.url: Field required``."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RelayError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except ValidationError as exc:
        return error_response(400, "invalid_request", validation_message(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return error_response(exc.status, code, exc.text or exc.reason)
    except Exception:
        log.exception("http.internal_error", path=request.path, method=request.method)
        return error_response(500, "internal", "internal error; see the relay logs")
