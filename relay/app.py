"""The composition root: settings -> objects -> start in order, stop in reverse.

This is the only module that knows every concrete class. Data flow::

    callbacks (web) --> CaptionService (merger, task life) --> Store.publish
                                                                   |
    viewers <-- FanoutServer <-- Hub.on_published <----------------+
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from websockets.asyncio.server import Server

from relay import sd_notify
from relay.config import PublicUrls, Settings
from relay.engines.aliyun.client import ApiConfig, LiveApi
from relay.engines.aliyun.engine import AliyunEngine
from relay.engines.base import Engine
from relay.engines.local.engine import LocalEngine, LocalEngineConfig
from relay.engines.local.recognizer import Recognizer
from relay.engines.local.source import default_ffmpeg
from relay.fanout.hub import Hub
from relay.fanout.server import FanoutServer, ViewerLimits
from relay.live.captions import CaptionService
from relay.metrics import Metrics
from relay.store.base import Store
from relay.store.memory import MemoryStore
from relay.web import callbacks, health, hooks, openapi, streams
from relay.web.errors import error_middleware
from relay.web.keys import (
    METRICS,
    READY_CHECKS,
    SERVICE,
    SETTINGS,
    STORE,
    URLS,
    VIEWER_COUNT,
    ReadyCheck,
)

log = structlog.get_logger("relay")


def build_store(settings: Settings) -> Store:
    return MemoryStore(caption_log_max=settings.caption_log_max)


def build_aliyun(settings: Settings, metrics: Metrics) -> AliyunEngine | None:
    """The Alibaba engine, when credentials are set (attaching needs none)."""
    secret = settings.aliyun_access_key_secret
    if not settings.aliyun_access_key_id or secret is None or not secret.get_secret_value():
        return None
    api = LiveApi(
        ApiConfig(
            access_key_id=settings.aliyun_access_key_id,
            access_key_secret=secret.get_secret_value(),
            region=settings.aliyun_region,
            endpoint=settings.aliyun_endpoint,
            signature_algorithm="v2" if settings.aliyun_signature == "v2" else "",
            timeout_s=settings.aliyun_timeout_s,
            rate_per_s=settings.aliyun_rate_per_s,
        ),
        metrics,
    )
    return AliyunEngine(api, stop_grace_s=settings.aliyun_stop_grace_s)


def build_web_app(relay: Relay) -> web.Application:
    # client_max_size bounds control bodies; callbacks enforce their own, smaller limit.
    app = web.Application(middlewares=[error_middleware], client_max_size=256 * 1024)
    app[SETTINGS] = relay.settings
    app[URLS] = relay.urls
    app[STORE] = relay.store
    app[SERVICE] = relay.service
    app[METRICS] = relay.metrics
    app[VIEWER_COUNT] = relay.hub.count
    checks: dict[str, ReadyCheck] = {}
    if relay.settings.local_preload:  # else the model loads on first use: nothing to wait for
        checks["local_engine"] = relay.local.ready
    app[READY_CHECKS] = checks
    for table in (streams.routes, hooks.routes, callbacks.routes, health.routes, openapi.routes):
        app.add_routes(table)
    return app


@dataclass(frozen=True, slots=True)
class Bound:
    """Where a running relay listens (ports resolved when 0 was asked for)."""

    http_port: int
    ws_port: int


class Relay:
    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.urls = PublicUrls.from_settings(settings)
        # A store handed in outlives this instance (tests restart relay on one store).
        self.store = store if store is not None else build_store(settings)
        self.hub = Hub(self.metrics)
        self.recognizer = Recognizer(
            settings.local_model or None, cpu_threads=settings.local_cpu_threads
        )
        self.local = LocalEngine(
            self.recognizer,
            LocalEngineConfig(
                ffmpeg=settings.ffmpeg or default_ffmpeg(),
                step_s=settings.local_step_s,
                reconnect_window_s=settings.local_reconnect_s,
                preload=settings.local_preload,
            ),
            self.metrics,
        )
        engines: dict[str, Engine] = {"local": self.local}
        self.aliyun = build_aliyun(settings, self.metrics)
        if self.aliyun is not None:
            engines["aliyun"] = self.aliyun
        self.service = CaptionService(
            self.store, self.metrics, settings, self.urls, engines=engines
        )
        self.fanout = FanoutServer(
            self.store,
            self.hub,
            self.metrics,
            ViewerLimits(
                max_pending_bytes=settings.viewer_max_pending_bytes,
                max_viewers=settings.max_viewers,
                secret=settings.viewer_secret.get_secret_value()
                if settings.viewer_secret
                else None,
            ),
        )
        self.web_app = build_web_app(self)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Bound]:
        """Start in order; on exit, in reverse: stop (or keep) the cloud tasks, stop accepting
        HTTP, close viewers (1001), stop the engines' tasks, flush the store."""
        settings = self.settings
        async with contextlib.AsyncExitStack() as stack:
            await self.store.start()
            stack.push_async_callback(self.store.close)
            self.store.add_listener(self.hub.on_published)
            stack.callback(self.recognizer.close)
            await stack.enter_async_context(self.local.running())

            ws = await self.fanout.start(settings.ws_host, settings.ws_port)
            stack.push_async_callback(self._close_viewers, ws)
            runner = web.AppRunner(
                self.web_app, access_log=None, shutdown_timeout=settings.shutdown_timeout_s
            )
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, settings.http_host, settings.http_port).start()

            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            ticker = tasks.create_task(self.service.run())
            stack.callback(ticker.cancel)
            await self.service.resume()
            # First on the way out, while callbacks still arrive: the cloud's last results
            # for the tasks being stopped land before the HTTP server closes.
            stack.push_async_callback(
                self.service.shutdown,
                keep_cloud_tasks=settings.aliyun_on_shutdown == "keep",
                timeout_s=settings.shutdown_timeout_s,
            )

            bound = Bound(_port(runner), ws.sockets[0].getsockname()[1])
            self.urls.bound(settings, bound.http_port, bound.ws_port)
            log.info("relay.started", http_port=bound.http_port, ws_port=bound.ws_port)
            if self.aliyun is not None and not settings.aliyun_endpoint and _loopback(self.urls):
                # The real cloud cannot call back to 127.0.0.1: every task would stay silent.
                log.warning("aliyun.callbacks_unreachable", public_url=self.urls.http)
            yield bound
        log.info("relay.stopped")

    async def _close_viewers(self, ws: Server) -> None:
        ws.close()  # every viewer gets 1001 (going away)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.shutdown_timeout_s):
                await ws.wait_closed()


def _loopback(urls: PublicUrls) -> bool:
    host = urlsplit(urls.http).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: assume the cloud can resolve it
        return False


def _port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        return int(address[1])
    raise RuntimeError("the HTTP server did not bind")


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT; then shut down gracefully and return."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    relay = Relay(settings)
    async with relay.running():
        # Start-up objects (modules, the model's wrappers) live forever: keep them out of
        # the collector's full passes, which otherwise pause the loop for 100+ ms under load.
        gc.freeze()
        sd_notify.notify("READY=1")
        interval = sd_notify.watchdog_interval_s()
        async with asyncio.TaskGroup() as tasks:
            if interval is not None:
                watchdog = tasks.create_task(_watchdog(interval))
            await stop.wait()
            log.info("relay.stopping")
            sd_notify.notify("STOPPING=1")
            if interval is not None:
                watchdog.cancel()


async def _watchdog(interval: float) -> None:
    # Pinging from the event loop proves the loop still turns, which is what matters.
    while True:
        sd_notify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
