"""Test support: a relay running in the test's loop, and a recognizer that signs callbacks.

Everything talks over real loopback sockets: aiohttp for HTTP, websockets for viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect

from relay import config
from relay.app import Relay
from relay.core import signature
from relay.store.base import Store


@dataclass
class Harness:
    relay: Relay
    http: str
    ws: str
    session: aiohttp.ClientSession

    async def attach(
        self, stream_id: str, *, auth_key: str = "test-auth-key", **extra: Any
    ) -> Recognizer:
        """Attach a task (engine aliyun + task_id) and return a recognizer for it."""
        task_id = f"asr-{stream_id}-{next(_ids)}"
        body = {
            "stream_id": stream_id,
            "engine": "aliyun",
            "task_id": task_id,
            "auth_key": auth_key,
        }
        async with self.session.post(f"{self.http}/v1/streams", json={**body, **extra}) as resp:
            assert resp.status == 201, await resp.text()
            created = await resp.json()
        return Recognizer(self.session, task_id, created["callback_url"], auth_key)

    def viewer(self, stream_id: str, query: str = "") -> Any:
        url = f"{self.ws}/v1/captions/{stream_id}" + (f"?{query}" if query else "")
        return connect(url, open_timeout=5, close_timeout=2)


_ids = itertools.count(1)


@contextlib.asynccontextmanager
async def running_relay(store: Store | None = None, **overrides: Any) -> AsyncIterator[Harness]:
    """A relay on free ports; ``store`` outlives it when given (a restart on one store)."""
    # Most tests never touch the model: load it on first use rather than at every start.
    settings = config.load(**{"http_port": 0, "ws_port": 0, "local_preload": False, **overrides})
    relay = Relay(settings, store=store)
    async with relay.running() as bound, aiohttp.ClientSession() as session:
        yield Harness(
            relay,
            f"http://127.0.0.1:{bound.http_port}",
            f"ws://127.0.0.1:{bound.ws_port}",
            session,
        )


@dataclass
class Recognizer:
    """Plays the cloud: builds contract-shaped callbacks and posts them, signed."""

    session: aiohttp.ClientSession
    task_id: str
    callback_url: str
    auth_key: str
    messages: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def body(
        self,
        name: str,
        payload: Mapping[str, Any],
        *,
        message_id: str | None = None,
        status: int = 20000000,
    ) -> bytes:
        header = {
            "namespace": "SpeechTranscriber",
            "name": name,
            "status": status,
            "status_text": "Success." if status == 20000000 else "Failed.",
            "task_id": "nls-1",
            "message_id": message_id or f"m{next(self.messages)}",
        }
        outer = {
            "task_id": self.task_id,
            "sdk_app_id": "",
            "channel_id": "",
            "rtc_user_id": "",
            "callback_time_stamp": int(time.time() * 1000),
            "language": "en",
            "content": json.dumps({"header": header, "payload": dict(payload)}),
        }
        return json.dumps(outer).encode()

    def headers(self, sig_time: str | None = None) -> dict[str, str]:
        sig_time = sig_time or str(int(time.time()))
        return {
            "SIG-TIME": sig_time,
            "ASR-SIG": signature.sign(sig_time, self.callback_url, self.auth_key),
            "Content-Type": "application/json",
        }

    async def post(self, body: bytes, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        async with self.session.post(
            self.callback_url, data=body, headers=self.headers() if headers is None else headers
        ) as resp:
            return resp.status, await resp.json()

    async def partial(self, index: int, text: str, time_ms: int, **kw: Any) -> tuple[int, Any]:
        payload = {
            "index": index,
            "time": time_ms,
            "result": text,
            "fixed_result": kw.pop("fixed", ""),
            "unfixed_result": kw.pop("unfixed", ""),
            "words": [],
            "confidence": 0.0,
        }
        return await self.post(self.body("TranscriptionResultChanged", payload, **kw))

    async def final(
        self, index: int, text: str, begin_ms: int, time_ms: int, **kw: Any
    ) -> tuple[int, Any]:
        payload: dict[str, Any] = {
            "index": index,
            "time": time_ms,
            "begin_time": begin_ms,
            "result": text,
            "confidence": 0.9,
            "words": kw.pop("words", []),
        }
        if "translations" in kw:
            payload["translations"] = kw.pop("translations")
        return await self.post(self.body("SentenceEnd", payload, **kw))


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        message = await ws.recv()
    decoded = json.loads(message)
    assert isinstance(decoded, dict)
    return decoded


async def recv_until(
    ws: ClientConnection, predicate: Any, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """Receive messages until one satisfies ``predicate``; return all received, in order."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            seen.append(message)
            if predicate(message):
                return seen


async def watch_until_ended(
    h: Harness, stream_id: str, query: str = "", timeout: float = 90
) -> list[dict[str, Any]]:
    """Everything one viewer sees until the stream's task terminates or fails."""
    seen: list[dict[str, Any]] = []
    async with h.viewer(stream_id, query) as ws, asyncio.timeout(timeout):
        while True:
            message = await recv_json(ws, timeout=timeout)
            seen.append(message)
            if message["type"] == "state" and message["state"] in ("terminated", "failed"):
                return seen
