"""The HTTP side: POP RPC requests in (``POST /``), JSON out; the ``/_emulator`` admin API.

Per request, in order: route (``x-acs-action`` / ``Action`` and the version), verify the
signature, rate limit, apply an injected refusal, then run the action. Every refusal is a
POP error body ``{"RequestId", "Code", "Message", "HostId", "Recommend"}`` with its status;
throttling adds ``x-acs-retry-after`` (ms), which the SDK turns into ``ThrottlingException``.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web

from relay.core.callback import NLS_SUCCESS, CallbackFormatError, parse_callback
from relay.core.events import RecognizerEvent
from relay.emulators.aliyun_live.emulator import AliyunLiveEmulator, Refusal
from relay.emulators.aliyun_live.faults import Faults
from relay.emulators.aliyun_live.ratelimit import KeyedRateLimiter
from relay.emulators.aliyun_live.tasks import parse_create
from relay.emulators.signing import PopError, Request, Verifier, pairs

log = structlog.get_logger("relay.emulators.aliyun_live")

VERSION = "2016-11-01"
HOST_ID = "live.aliyuncs.com"
ACTIONS = frozenset({"CreateRtcAsrTask", "QueryRtcAsrTasks", "StopRtcAsrTask", "DeleteRtcAsrTask"})
EMULATOR: web.AppKey[AliyunLiveEmulator] = web.AppKey("emulator", AliyunLiveEmulator)
_SUCCESS = {"Description": "success", "RetCode": 2000}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(emulator: AliyunLiveEmulator, host: str, port: int) -> AsyncIterator[int]:
    runner = web.AppRunner(build_app(emulator), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound: int = runner.addresses[0][1]
        yield bound
    finally:
        await runner.cleanup()


def build_app(emulator: AliyunLiveEmulator) -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app[EMULATOR] = emulator
    api = _Api(emulator)
    app.router.add_route("*", "/", api.handle)
    app.router.add_get("/_emulator/tasks", _tasks)
    app.router.add_get("/_emulator/faults", _get_faults)
    app.router.add_post("/_emulator/faults", _set_faults)
    app.router.add_post("/_emulator/tasks/{task_id}/events", _inject)
    return app


class _Api:
    def __init__(self, emulator: AliyunLiveEmulator) -> None:
        config = emulator.config
        keys = {config.access_key_id: config.access_key_secret}
        self.emulator = emulator
        self.verifier = Verifier(keys.get, max_skew_s=config.max_skew_s)
        self.limiter = KeyedRateLimiter(
            rate=config.rate_per_s, burst=max(1, int(config.rate_per_s))
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4()).upper()
        try:
            return await self._handle(request, request_id)
        except PopError as exc:
            log.info("api.refused", code=exc.code, status=exc.status)
            return _error(exc, request_id)

    async def _handle(self, request: web.Request, request_id: str) -> web.StreamResponse:
        body = await request.read()
        query = pairs(request.raw_path.partition("?")[2])
        form: list[tuple[str, str]] = []
        if request.content_type == "application/x-www-form-urlencoded":
            form = pairs(body.decode("utf-8", "replace"))
        params = dict([*query, *form])
        signed_v3 = "authorization" in {k.lower() for k in request.headers}
        action = request.headers.get("x-acs-action", "") if signed_v3 else params.get("Action", "")
        version = request.headers.get("x-acs-version", "") if signed_v3 else params.get("Version")
        if not action:
            raise PopError("MissingParameter", "The input parameter Action is missing.")
        if version != VERSION:
            raise PopError("InvalidVersion", f"Specified version {version} is not valid.")
        if action not in ACTIONS:
            raise PopError("InvalidAction.NotFound", f"Specified api {action} is not found.", 404)
        emulator = self.emulator
        now = emulator.config.clock()
        verified = self.verifier.verify(
            Request(request.method, request.path, query, request.headers, body, form), now
        )
        wait_s = self.limiter.take((verified.access_key_id, action), now)
        if wait_s is not None:
            raise _Throttled(max(1, round(wait_s * 1000)))
        refusal = emulator.take_refusal(action)
        if refusal is not None:
            if refusal.code.startswith("Throttling"):
                raise _Throttled(1000, refusal.code, refusal.message, refusal.status)
            raise PopError(refusal.code, refusal.message, refusal.status)
        result = await self._run(action, params)
        return web.json_response(
            {**_SUCCESS, "RequestId": request_id, **result},
            headers={"x-acs-request-id": request_id},
        )

    async def _run(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        emulator = self.emulator
        if action == "CreateRtcAsrTask":
            task = await emulator.create(parse_create(params))
            return {"TaskId": task.task_id}
        if action == "QueryRtcAsrTasks":
            return {"Tasks": emulator.query(params.get("TaskId") or None)}
        task_id = params.get("TaskId", "")
        if not task_id:
            raise PopError("MissingParameter", "The input parameter TaskId is missing.")
        if action == "StopRtcAsrTask":
            emulator.stop(task_id)
        else:
            emulator.delete(task_id)
        return {}


class _Throttled(PopError):
    def __init__(
        self,
        retry_after_ms: int,
        code: str = "Throttling.User",
        message: str = "Request was denied due to user flow control.",
        status: int = 400,
    ) -> None:
        super().__init__(code, message, status)
        self.retry_after_ms = retry_after_ms


def _error(exc: PopError, request_id: str) -> web.Response:
    headers = {"x-acs-request-id": request_id}
    if isinstance(exc, _Throttled):
        headers["x-acs-retry-after"] = str(exc.retry_after_ms)
    body = {
        "RequestId": request_id,
        "Code": exc.code,
        "Message": exc.message,
        "HostId": HOST_ID,
        "Recommend": f"https://api.aliyun.com/troubleshoot?q={exc.code}&product=live",
    }
    return web.json_response(body, status=exc.status, headers=headers)


# --- admin: /_emulator ------------------------------------------------------------------


async def _tasks(request: web.Request) -> web.Response:
    return web.json_response({"tasks": request.app[EMULATOR].snapshot()})


def _faults_json(emulator: AliyunLiveEmulator) -> dict[str, Any]:
    refuse = {
        action: {"code": r.code, "status": r.status, "times": r.times, "message": r.message}
        for action, r in emulator.refusals.items()
    }
    return {**emulator.faults.as_json(), "refuse": refuse}


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(_faults_json(request.app[EMULATOR]))


async def _set_faults(request: web.Request) -> web.Response:
    """Replace the faults (absent keys: off); ``refuse`` replaces the refusals when given."""
    emulator = request.app[EMULATOR]
    try:
        data = await request.json()
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        refuse = data.pop("refuse", None)
        faults = Faults.from_json(data)
        refusals = _refusals(refuse) if refuse is not None else None
    except ValueError as exc:
        return web.json_response(
            {"error": {"code": "invalid_faults", "message": str(exc)}}, status=400
        )
    emulator.set_faults(faults)
    if refusals is not None:
        emulator.refusals.clear()
        for action, refusal in refusals.items():
            emulator.refuse(action, refusal)
    log.info("emulator.faults", **faults.as_json(), refuse=sorted(emulator.refusals))
    return web.json_response(_faults_json(emulator))


def _refusals(raw: Any) -> dict[str, Refusal]:
    if not isinstance(raw, dict):
        raise ValueError("refuse must map an action to {code, status, times}")
    out = {}
    for action, spec in raw.items():
        if action not in ACTIONS or not isinstance(spec, dict):
            raise ValueError(f"refuse: unknown action {action!r} or bad spec")
        code, status, times = spec.get("code"), spec.get("status", 400), spec.get("times", 1)
        if not isinstance(code, str) or not isinstance(status, int) or not isinstance(times, int):
            raise ValueError("refuse: code must be a string, status and times integers")
        if not 400 <= status <= 599:
            raise ValueError("refuse: status must be 4xx or 5xx")
        message = spec.get("message")
        out[action] = Refusal(code, status, times, *([message] if isinstance(message, str) else []))
    return out


async def _inject(request: web.Request) -> web.Response:
    """``{"events": [{"name": "SentenceEnd", "payload": {...}}, ...]}`` (NLS shapes)."""
    emulator, task_id = request.app[EMULATOR], request.match_info["task_id"]
    try:
        data = await request.json()
        events = _scripted(task_id, data.get("events") if isinstance(data, dict) else None)
        emulator.inject(task_id, events)
    except (ValueError, CallbackFormatError) as exc:
        return web.json_response(
            {"error": {"code": "invalid_events", "message": str(exc)}}, status=400
        )
    except PopError as exc:
        return web.json_response({"error": {"code": exc.code, "message": exc.message}}, status=404)
    return web.json_response({"injected": len(events)})


def _scripted(task_id: str, raw: Any) -> list[RecognizerEvent]:
    if not isinstance(raw, list):
        raise ValueError("events must be a list")
    events = []
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError("each event must be an object")
        header = {"name": item.get("name"), "status": item.get("status", NLS_SUCCESS),
                  "status_text": item.get("status_text", "")}  # fmt: skip
        body = {
            "task_id": task_id,
            "content": {"header": header, "payload": item.get("payload", {})},
        }
        event = parse_callback(json.dumps(body).encode()).event  # the relay parser, reused
        if event is None:
            raise ValueError(f"not a recognizer event: {item.get('name')!r}")
        events.append(event)
    return events
