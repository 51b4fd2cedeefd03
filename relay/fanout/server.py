"""The viewer WebSocket server: ``ws://HOST:PORT/v1/captions/{stream_id}?since=&lang=&token=``.

Per viewer: validate the request at the handshake (bad path 404, bad query 400, bad token
401, full 503), join the stream's audience with live frames held back, write ``hello``, the
replay (finals after ``since``, then the current partial) and release the live frames that
came after it. Then only read, to answer pings and notice the close; viewers have nothing
to say.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import structlog
from structlog.contextvars import bound_contextvars
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from relay.core import viewer_token, wire
from relay.core.events import Partial
from relay.errors import RelayError
from relay.fanout.hub import Hub
from relay.fanout.viewer import ViewerConnection, text_frame
from relay.metrics import Metrics
from relay.store.base import Store

log = structlog.get_logger("relay.fanout")

_PATH = re.compile(r"^/v1/captions/(?P<stream_id>[A-Za-z0-9][A-Za-z0-9._~-]{0,127})$")
_LANG = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})?$")


@dataclass(frozen=True, slots=True)
class ViewerRequest:
    stream_id: str
    since: int | None
    lang: str | None


@dataclass(frozen=True, slots=True)
class ViewerLimits:
    max_pending_bytes: int = 1 << 20
    max_viewers: int = 20000
    secret: str | None = None


def parse_viewer_path(path: str) -> ViewerRequest | tuple[HTTPStatus, str]:
    """Parse the request target; an (HTTP status, message) pair when it is not valid."""
    parts = urlsplit(path)
    match = _PATH.match(parts.path)
    if match is None:
        return HTTPStatus.NOT_FOUND, "expected /v1/captions/{stream_id}"
    query = parse_qs(parts.query)
    since_raw = query.get("since", [None])[-1]
    since = None
    if since_raw is not None:
        if not since_raw.isascii() or not since_raw.isdigit() or len(since_raw) > 18:
            return HTTPStatus.BAD_REQUEST, "since must be a non-negative integer"
        since = int(since_raw)
    lang = query.get("lang", [None])[-1] or None
    if lang is not None and not _LANG.match(lang):
        return HTTPStatus.BAD_REQUEST, "lang must be a language code such as en or zh-CN"
    return ViewerRequest(match["stream_id"], since, lang)


class FanoutServer:
    def __init__(self, store: Store, hub: Hub, metrics: Metrics, limits: ViewerLimits) -> None:
        self._store = store
        self._hub = hub
        self._metrics = metrics
        self._limits = limits
        self._server: Server | None = None
        self.clock: Callable[[], float] = time.time

    async def start(self, host: str, port: int) -> Server:
        self._server = await serve(
            self._handle,
            host,
            port,
            create_connection=ViewerConnection,
            process_request=self._process_request,
            compression=None,  # prepared frames are shared by every viewer: no per-viewer state
            max_size=4096,  # viewers have nothing to send
            max_queue=4,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=5,
            server_header=None,
        )
        return self._server

    @property
    def server(self) -> Server:
        assert self._server is not None, "start() first"
        return self._server

    def _reject(self, conn: ServerConnection, status: HTTPStatus, reason: str) -> Response:
        self._metrics.viewer_rejects.labels(reason=status.phrase.lower().replace(" ", "_")).inc()
        log.info("viewer.rejected", status=int(status), reason=reason)
        return conn.respond(status, reason + "\n")

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        parsed = parse_viewer_path(request.path)
        if not isinstance(parsed, ViewerRequest):
            return self._reject(conn, *parsed)
        secret = self._limits.secret
        if secret is not None:
            token = parse_qs(urlsplit(request.path).query).get("token", [None])[-1]
            if not viewer_token.check(secret, parsed.stream_id, token, now=self.clock()):
                return self._reject(
                    conn, HTTPStatus.UNAUTHORIZED, "a valid viewer token is required"
                )
        if self._hub.total >= self._limits.max_viewers:
            return self._reject(
                conn, HTTPStatus.SERVICE_UNAVAILABLE, "too many viewers; retry later"
            )
        return None

    async def _handle(self, conn: ServerConnection) -> None:
        assert isinstance(conn, ViewerConnection) and conn.request is not None
        parsed = parse_viewer_path(conn.request.path)
        assert isinstance(parsed, ViewerRequest)  # checked in _process_request
        conn.outbox_limit = self._limits.max_pending_bytes
        conn.stream_id, conn.lang = parsed.stream_id, parsed.lang
        with bound_contextvars(stream_id=parsed.stream_id):
            conn.start_sync()
            self._hub.join(conn)
            try:
                await self._greet(conn, parsed)
                async for _ in conn:  # drain whatever a viewer sends; it means nothing
                    pass
            except ConnectionClosed:
                pass
            finally:
                self._hub.leave(conn)

    async def _greet(self, conn: ViewerConnection, req: ViewerRequest) -> None:
        """hello, then the replay, then release the live frames held meanwhile."""
        try:
            replay = await self._store.replay(req.stream_id, req.since)
        except RelayError as exc:
            log.warning("viewer.replay_failed", code=exc.code)
            await conn.close(1011, "store unavailable; reconnect with since=")
            return
        conn.write_now(text_frame(wire.encode_hello(req.stream_id, replay.state, replay.seq)))
        last = replay.seq if req.since is None else max(req.since, 0)
        for published in replay.finals:
            conn.write_now(text_frame(wire.encode(published, req.lang)))
            last = max(last, published.seq)
        partial = replay.partial
        fresh = partial is not None and (req.since is None or partial.seq > req.since)
        if partial is not None and fresh and isinstance(partial.event, Partial):
            conn.write_now(text_frame(wire.encode(partial, req.lang)))
        conn.end_sync(replay.seq)
