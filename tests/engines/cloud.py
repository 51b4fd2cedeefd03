"""The emulated Alibaba Cloud Live for engine tests, and relay settings that point at it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from relay.emulators.aliyun_live import (
    DEV_ACCESS_KEY_ID,
    DEV_ACCESS_KEY_SECRET,
    AliyunLiveEmulator,
    Faults,
)
from relay.engines.local.recognizer import Recognizer
from tests.emulators.support import emulator


@contextlib.asynccontextmanager
async def cloud(
    *, speech: bool, faults: Faults | None = None
) -> AsyncIterator[tuple[AliyunLiveEmulator, int]]:
    """The emulator on a free loopback port; with ``speech`` it loads the model to transcribe."""
    recognizer = Recognizer(None, cpu_threads=2) if speech else None
    try:
        async with emulator(
            access_key_id=DEV_ACCESS_KEY_ID,
            access_key_secret=DEV_ACCESS_KEY_SECRET,
            recognizer=recognizer,
            preload=speech,
            faults=faults or Faults(),
        ) as pair:
            yield pair
    finally:
        if recognizer is not None:
            recognizer.close()


def relay_settings(port: int, **overrides: Any) -> dict[str, Any]:
    """Settings for a relay whose Alibaba engine calls the emulator on ``port``."""
    return {
        "aliyun_access_key_id": DEV_ACCESS_KEY_ID,
        "aliyun_access_key_secret": DEV_ACCESS_KEY_SECRET,
        "aliyun_endpoint": f"http://127.0.0.1:{port}",
        **overrides,
    }
