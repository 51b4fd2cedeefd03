"""Helpers for the emulator tests: the official SDK pointed at the emulator, a callback receiver."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from alibabacloud_live20161101.client import Client
from alibabacloud_tea_openapi import utils_models

from relay.core import signature
from relay.core.callback import Callback, parse_callback
from relay.emulators.aliyun_live import AliyunLiveEmulator, EmulatorConfig
from relay.engines.local.recognizer import Recognizer

AK_ID = "LTAItestEmulator"
AK_SECRET = "test-secret-0123456789"
AUTH_KEY = "test-auth-key"


def sdk(port: int, *, secret: str = AK_SECRET, ak: str = AK_ID, v2: bool = False) -> Any:
    config = utils_models.Config(
        access_key_id=ak,
        access_key_secret=secret,
        region_id="cn-shanghai",
        endpoint=f"127.0.0.1:{port}",
        protocol="http",
        read_timeout=10_000,
        connect_timeout=5_000,
    )
    if v2:
        config.signature_algorithm = "v2"
    return Client(config)


@contextlib.asynccontextmanager
async def emulator(**overrides: Any) -> AsyncIterator[tuple[AliyunLiveEmulator, int]]:
    settings: dict[str, Any] = {
        "access_key_id": AK_ID,
        "access_key_secret": AK_SECRET,
        "preload": False,
        **overrides,
    }
    emu = AliyunLiveEmulator(EmulatorConfig(**settings))
    async with emu.running("127.0.0.1", 0) as port:
        yield emu, port


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    verdict: signature.Verdict
    callback: Callback

    @property
    def name(self) -> str:
        return type(self.callback.event).__name__


@dataclass
class Receiver:
    """Where the emulator posts callbacks: checks ASR-SIG, parses, records, answers 200."""

    auth_key: str = AUTH_KEY
    delay_s: float = 0.0  # per request, to see concurrency
    fail_first: int = 0  # answer 503 to this many requests first
    url: str = ""
    got: list[Received] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.fail_first > 0:
                self.fail_first -= 1
                return web.json_response({}, status=503)
            body = await request.read()
            verdict = signature.verify(
                request.headers.get("SIG-TIME"),
                request.headers.get("ASR-SIG"),
                callback_url=self.url,
                auth_key=self.auth_key,
                now=time.time(),
                max_skew_s=30,
            )
            self.got.append(
                Received(time.time(), dict(request.headers), body, verdict, parse_callback(body))
            )
            self.changed.set()
            return web.json_response({})
        finally:
            self.in_flight -= 1

    def names(self) -> list[str]:
        return [r.name for r in self.got]

    async def wait_for(self, predicate: Any, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def receiver(**options: Any) -> AsyncIterator[Receiver]:
    recv = Receiver(**options)
    app = web.Application()
    app.router.add_post("/asr/callback", recv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recv.url = f"http://127.0.0.1:{runner.addresses[0][1]}/asr/callback"
    try:
        yield recv
    finally:
        await runner.cleanup()


@pytest.fixture(scope="session")
def recognizer() -> Iterator[Recognizer]:
    """One model for every real-audio test of the session."""
    shared = Recognizer()
    yield shared
    shared.close()
