"""Typed application keys: what the composition root hands to the HTTP handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.config import PublicUrls, Settings
from relay.live.captions import CaptionService
from relay.metrics import Metrics
from relay.store.base import Store

SETTINGS = web.AppKey("settings", Settings)
URLS = web.AppKey("urls", PublicUrls)
SERVICE = web.AppKey("service", CaptionService)
STORE = web.AppKey("store", Store)
METRICS = web.AppKey("metrics", Metrics)
# How many viewers watch a stream on this instance (the fan-out owns viewers).
ViewerCount = Callable[[str], int]
ReadyCheck = Callable[[], Awaitable[None]]
VIEWER_COUNT: web.AppKey[ViewerCount] = web.AppKey("viewer_count")
# Readiness checks beyond the store: name -> coroutine that raises when not ready.
READY_CHECKS: web.AppKey[dict[str, ReadyCheck]] = web.AppKey("ready_checks")
