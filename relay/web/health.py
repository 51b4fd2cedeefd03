"""``/healthz`` (process up), ``/readyz`` (store and engines ready), ``/metrics``."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.errors import RelayError
from relay.web.keys import METRICS, READY_CHECKS, SERVICE, STORE, ReadyCheck

routes = web.RouteTableDef()
READY_TIMEOUT_S = 2.0


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, ReadyCheck] = {"store": request.app[STORE].ping}
    extra: dict[str, ReadyCheck] = request.app[READY_CHECKS]
    checks.update(extra)
    failed: dict[str, str] = {}
    for name, check in checks.items():
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await check()
        except (RelayError, OSError, TimeoutError) as exc:
            failed[name] = str(exc) or type(exc).__name__
    if failed:
        return web.json_response({"status": "unavailable", "checks": failed}, status=503)
    return web.json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics_ = request.app[METRICS]
    for state, count in request.app[SERVICE].task_states().items():
        metrics_.tasks.labels(state=state).set(count)
    body = generate_latest(metrics_.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
