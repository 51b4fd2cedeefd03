"""Control API for live streams: ``/v1/streams``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from relay.config import PublicUrls, Settings
from relay.core.wire import IDLE
from relay.errors import InvalidRequest, StreamNotFound
from relay.live.captions import StreamRequest
from relay.store.base import StreamRecord
from relay.web.auth import require_control
from relay.web.keys import SERVICE, SETTINGS, STORE, URLS, VIEWER_COUNT
from relay.web.models import (
    Counters,
    CreateStream,
    LatencyFigures,
    StreamCreated,
    StreamInfo,
    StreamList,
)

routes = web.RouteTableDef()


@routes.post("/v1/streams")
async def create_stream(request: web.Request) -> web.Response:
    require_control(request)
    body = CreateStream.model_validate(await read_json(request))
    urls = request.app[URLS]
    record = await request.app[SERVICE].start_stream(to_stream_request(body, request.app[SETTINGS]))
    created = StreamCreated(
        stream_id=record.stream_id,
        task_id=record.task_id,
        state=str(record.state),
        callback_url=record.callback_url,
        viewer_url=viewer_url(urls, record.stream_id),
        overlay_url=overlay_url(urls, record.stream_id),
    )
    return web.json_response(created.model_dump(), status=201)


@routes.get("/v1/streams")
async def list_streams(request: web.Request) -> web.Response:
    require_control(request)
    records = await request.app[STORE].list_streams()
    infos = [stream_info(request.app, r) for r in sorted(records, key=lambda r: r.stream_id)]
    return web.json_response(StreamList(streams=infos).model_dump())


@routes.get("/v1/streams/{stream_id}")
async def get_stream(request: web.Request) -> web.Response:
    require_control(request)
    stream_id = request.match_info["stream_id"]
    record = await request.app[STORE].get_stream(stream_id)
    if record is None or record.task is None:
        raise StreamNotFound(f"no stream {stream_id!r}")
    return web.json_response(stream_info(request.app, record).model_dump())


@routes.delete("/v1/streams/{stream_id}")
async def delete_stream(request: web.Request) -> web.Response:
    require_control(request)
    stream_id = request.match_info["stream_id"]
    await request.app[SERVICE].stop_stream(stream_id)
    record = await request.app[STORE].get_stream(stream_id)
    assert record is not None
    return web.json_response(stream_info(request.app, record).model_dump())


async def read_json(request: web.Request) -> Any:
    try:
        return await request.json(loads=json.loads)
    except ValueError as exc:
        raise InvalidRequest(f"body is not JSON: {exc}", code="invalid_json") from None


def to_stream_request(body: CreateStream, settings: Settings) -> StreamRequest:
    engine = body.engine or settings.default_engine
    auth_key = body.auth_key
    if body.task_id is not None and auth_key is None and settings.aliyun_auth_key is not None:
        auth_key = settings.aliyun_auth_key.get_secret_value() or None
    return StreamRequest(
        stream_id=body.stream_id,
        engine=engine,
        source=body.source.model_dump(exclude_none=True) if body.source else {},
        language=body.language,
        translate=tuple(body.translate),
        auto_terminate=body.auto_terminate.enabled,
        auto_terminate_delay_s=body.auto_terminate.delay_s,
        report_interval_ms=body.report_interval_ms,
        task_id=body.task_id,
        auth_key=auth_key,
    )


def stream_info(app: web.Application, record: StreamRecord) -> StreamInfo:
    urls, task = app[URLS], record.task
    counters = record.counters
    return StreamInfo(
        stream_id=record.stream_id,
        state=str(task.state) if task else IDLE,
        reason=task.reason if task else "",
        engine=task.engine if task else None,
        task_id=task.task_id if task else None,
        seq=record.seq,
        started_at=_iso(task.started_at if task else None),
        last_result_at=_iso(task.last_result_at if task else None),
        ended_at=_iso(task.ended_at if task else None),
        counters=Counters(
            callbacks=counters.get("callbacks", 0),
            partials=counters.get("partials", 0),
            finals=counters.get("finals", 0),
            viewers=app[VIEWER_COUNT](record.stream_id),
            rejected=counters.get("rejected", 0),
        ),
        latency=_latency(app[SERVICE].latency(record.stream_id)),
        viewer_url=viewer_url(urls, record.stream_id),
        overlay_url=overlay_url(urls, record.stream_id),
    )


def _latency(figures: dict[str, dict[str, float]] | None) -> dict[str, LatencyFigures] | None:
    if figures is None:
        return None
    return {kind: LatencyFigures(**values) for kind, values in figures.items()}


def viewer_url(urls: PublicUrls, stream_id: str) -> str:
    return f"{urls.ws}/v1/captions/{stream_id}"


def overlay_url(urls: PublicUrls, stream_id: str) -> str:
    return f"{urls.http}/overlay/{stream_id}"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
