"""The Engine contract (relay/engines/base.py), run against every engine.

local: relay's own ffmpeg + faster-whisper on a file of silence, read at 1x. aliyun: the
official SDK against `relay emulate aliyun-live`, a Mode rtc task (silent there).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from relay.core.events import RecognizerEvent
from relay.emulators.aliyun_live import DEV_ACCESS_KEY_ID, DEV_ACCESS_KEY_SECRET
from relay.engines.aliyun.client import ApiConfig, LiveApi
from relay.engines.aliyun.engine import AliyunEngine
from relay.engines.base import Engine, TaskSpec
from relay.engines.local.engine import LocalEngine, LocalEngineConfig
from relay.engines.local.recognizer import Recognizer
from relay.engines.local.source import default_ffmpeg
from relay.errors import InvalidRequest
from relay.metrics import Metrics
from tests.audio import make_wav
from tests.engines.cloud import cloud

Source = dict[str, Any]


class Sink:
    """A TaskSink that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[RecognizerEvent] = []

    async def event(self, event: RecognizerEvent) -> None:
        self.events.append(event)

    async def alive(self) -> None:
        pass

    def latency(self, kind: str, seconds: float) -> None:
        pass


@contextlib.asynccontextmanager
async def local(tmp: Path) -> AsyncIterator[tuple[Engine, Source]]:
    silence = make_wav(tmp / "silence.wav", "anullsrc=r=16000:cl=mono", 60)
    recognizer = Recognizer(None, cpu_threads=1)
    engine = LocalEngine(
        recognizer, LocalEngineConfig(ffmpeg=default_ffmpeg(), preload=False), Metrics()
    )
    try:
        async with engine.running():
            yield engine, {"url": silence.as_uri(), "realtime": True}
    finally:
        recognizer.close()


@contextlib.asynccontextmanager
async def aliyun(tmp: Path) -> AsyncIterator[tuple[Engine, Source]]:
    async with cloud(speech=False) as (_, port):
        config = ApiConfig(
            access_key_id=DEV_ACCESS_KEY_ID,
            access_key_secret=DEV_ACCESS_KEY_SECRET,
            endpoint=f"http://127.0.0.1:{port}",
        )
        source = {"mode": "rtc", "sdk_app_id": "app", "channel_id": "ch", "rtc_user_id": "u"}
        yield AliyunEngine(LiveApi(config, Metrics())), source


ENGINES: dict[str, Callable[[Path], contextlib.AbstractAsyncContextManager[Any]]] = {
    "local": local,
    "aliyun": aliyun,
}


@pytest.fixture(params=sorted(ENGINES))
async def engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Engine, Source]]:
    async with ENGINES[request.param](tmp_path) as pair:
        yield pair


def spec(source: Source, stream_id: str = "s1") -> TaskSpec:
    return TaskSpec(
        stream_id=stream_id,
        source=source,
        language="en",
        callback_url="http://127.0.0.1:9/v1/callbacks/aliyun/token",
        auth_key="key",
    )


async def eventually_stopped(engine: Engine, task_id: str, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while await engine.is_running(task_id):
            await asyncio.sleep(0.1)


def test_the_engine_describes_itself(engine: tuple[Engine, Source]) -> None:
    e, _ = engine
    assert e.name in ("local", "aliyun")
    assert isinstance(e.confirms_end, bool)
    assert e.stop_grace_s >= 0
    assert e.interrupt_after_s is None or e.interrupt_after_s > 0


async def test_start_gives_a_new_running_task_each_time(engine: tuple[Engine, Source]) -> None:
    e, source = engine
    first = await e.start(spec(source, "s1"), Sink())
    second = await e.start(spec(source, "s2"), Sink())
    assert first and second and first != second
    assert await e.is_running(first) and await e.is_running(second)
    for task_id in (first, second):
        await e.stop(task_id)
        await e.release(task_id)


async def test_stop_ends_the_task_and_stop_and_release_are_idempotent(
    engine: tuple[Engine, Source],
) -> None:
    e, source = engine
    task_id = await e.start(spec(source), Sink())
    await e.stop(task_id)
    await eventually_stopped(e, task_id)
    await e.stop(task_id)
    await e.release(task_id)
    await e.release(task_id)
    assert not await e.is_running(task_id)


async def test_a_task_never_started_is_no_error(engine: tuple[Engine, Source]) -> None:
    e, _ = engine
    assert not await e.is_running("asr-00000000-0000-4000-8000-000000000000")
    await e.stop("asr-00000000-0000-4000-8000-000000000000")
    await e.release("asr-00000000-0000-4000-8000-000000000000")


async def test_a_source_the_engine_cannot_use_is_an_invalid_request(
    engine: tuple[Engine, Source],
) -> None:
    e, _ = engine
    with pytest.raises(InvalidRequest, match=r"^source\."):
        await e.start(spec({"url": "gopher://example/x"}), Sink())
