"""nginx-rtmp hooks: a broadcaster going live starts captions; stopping ends them.

nginx-rtmp POSTs form-encoded ``call``, ``app``, ``name``, ``addr``, ... A non-2xx answer to
``on_publish`` makes nginx refuse the stream, so relay answers 2xx whenever the stream
itself is fine, even if captioning could not start (that is logged and counted): captions
failing must never take a broadcast off the air. A stream that publishes again gets a new
task; its viewers stay connected.
"""

from __future__ import annotations

import asyncio
import re

import structlog
from aiohttp import web

from relay.errors import InvalidRequest, RelayError, StreamBusy
from relay.live.captions import StreamRequest
from relay.web.auth import require_control
from relay.web.keys import SERVICE, SETTINGS
from relay.web.models import STREAM_ID_PATTERN, HookAnswer

log = structlog.get_logger("relay.hooks")
routes = web.RouteTableDef()
_STREAM_ID = re.compile(STREAM_ID_PATTERN)
_APP = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


async def _form(request: web.Request) -> tuple[str, str]:
    require_control(request, allow_query_token=True)
    form = await request.post()
    app, name = form.get("app"), form.get("name")
    if not isinstance(name, str) or not _STREAM_ID.match(name):
        raise InvalidRequest("name: a stream name of letters, digits, '.', '_', '-', '~'")
    if not isinstance(app, str) or not _APP.match(app):
        raise InvalidRequest("app: an nginx-rtmp application name")
    return app, name


@routes.post("/v1/hooks/nginx-rtmp/on_publish")
async def on_publish(request: web.Request) -> web.Response:
    app, name = await _form(request)
    settings, service = request.app[SETTINGS], request.app[SERVICE]
    url = f"{settings.rtmp_url}/{app}/{name}"
    source: dict[str, object] = {"url": url}
    if settings.default_engine == "aliyun":
        source["mode"] = "live"
    stream = StreamRequest(
        stream_id=name,
        engine=settings.default_engine,
        source=source,
        auto_terminate=True,
        auto_terminate_delay_s=settings.hook_terminate_s,
    )
    with structlog.contextvars.bound_contextvars(stream_id=name):
        try:
            try:
                record = await service.start_stream(stream)
            except StreamBusy:  # published again before the old task ended: replace it
                await service.stop_stream(name)
                record = await service.start_stream(stream)
        except RelayError as exc:
            log.error("hook.captions_failed", code=exc.code, reason=exc.message)
            return web.json_response(HookAnswer(captions="failed", error=exc.code).model_dump())
        log.info("hook.publish", app=app, task_id=record.task_id, source=url)
        # nginx holds the publisher until we answer. Answering only once our reader had
        # time to connect means it hears the stream from its first packet: a live RTMP
        # player joining later would miss the first words.
        await asyncio.sleep(settings.hook_hold_s)
    return web.json_response(HookAnswer(captions="started", task_id=record.task_id).model_dump())


@routes.post("/v1/hooks/nginx-rtmp/on_publish_done")
async def on_publish_done(request: web.Request) -> web.Response:
    _, name = await _form(request)
    try:
        await request.app[SERVICE].stop_stream(name)
    except RelayError as exc:
        log.info("hook.publish_done_ignored", stream_id=name, code=exc.code)
        return web.json_response(HookAnswer(captions="none").model_dump())
    log.info("hook.publish_done", stream_id=name)
    return web.json_response(HookAnswer(captions="stopped").model_dump())
