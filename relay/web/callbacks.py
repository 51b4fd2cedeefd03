"""Callback ingestion: ``POST /v1/callbacks/aliyun/{token}`` (SPEC §3.2).

Every outcome is counted in ``relay_callbacks_total{result}`` (``accepted``, ``duplicate``
or the error code) and every rejection is logged, with no secret and no expected signature.
"""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from relay.errors import BodyTooLarge, RelayError
from relay.store.base import TaskRecord
from relay.web.keys import METRICS, SERVICE, SETTINGS

log = structlog.get_logger("relay.callbacks")
routes = web.RouteTableDef()

_ACK = b"{}"


@routes.post("/v1/callbacks/aliyun/{token}")
async def aliyun_callback(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    started = time.perf_counter()
    try:
        body = await read_limited(request, request.app[SETTINGS].callback_max_bytes)
        fresh = await request.app[SERVICE].ingest_callback(
            request.match_info["token"],
            request.headers.get("SIG-TIME"),
            request.headers.get("ASR-SIG"),
            body,
        )
    except RelayError as exc:
        metrics.callbacks.labels(result=exc.code).inc()
        record = exc.details.get("record")
        log.warning(
            "callback.rejected",
            code=exc.code,
            status=exc.status,
            reason=exc.message,
            remote=request.remote,
            stream_id=record.stream_id if isinstance(record, TaskRecord) else None,
            task_id=record.task_id if isinstance(record, TaskRecord) else None,
        )
        raise
    (metrics.callbacks_accepted if fresh else metrics.callbacks_duplicate).inc()
    metrics.callback_seconds.observe(time.perf_counter() - started)
    return web.Response(body=_ACK, content_type="application/json")


async def read_limited(request: web.Request, limit: int) -> bytes:
    """Read the body, refusing more than ``limit`` bytes before buffering them."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
