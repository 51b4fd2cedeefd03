"""Alibaba Cloud Live real-time ASR as a relay engine (``engine: aliyun``).

The cloud pulls the stream (Mode ``live``) or joins the ARTC channel (Mode ``rtc``) and POSTs
signed results to the task's own callback URL; this engine only creates, stops, deletes and
queries tasks. Results therefore never pass through the sink it is given.

The cloud ends tasks by itself (auto-terminate after the stream stops) without a callback,
so ``confirms_end`` is set: relay notices the silence, marks the task interrupted, and asks
:meth:`AliyunEngine.is_running` before calling it terminated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from relay.engines.aliyun.client import CreateTask, LiveApi
from relay.engines.base import TaskSink, TaskSpec
from relay.errors import InvalidRequest

log = structlog.get_logger("relay.engines.aliyun")

LANGUAGES = ("cn", "en", "ja", "yue", "fspk")  # CreateRtcAsrTask ``Language``
TARGET_LANGUAGES = ("cn", "en", "ja")  # ``TargetLanguages``
STREAM_SCHEMES = ("rtmp", "rtmps", "http", "https", "file")  # file: the emulator only


class AliyunEngine:
    name = "aliyun"
    interrupt_after_s: float | None = None  # RELAY_INTERRUPT_AFTER_S: speakers pause
    confirms_end = True

    def __init__(self, api: LiveApi, *, stop_grace_s: float = 5.0) -> None:
        self.api = api
        self.stop_grace_s = stop_grace_s

    async def start(self, spec: TaskSpec, sink: TaskSink) -> str:
        task = create_task_params(spec)
        task_id = await self.api.create(task)
        log.info(
            "aliyun.task_created",
            stream_id=spec.stream_id,
            task_id=task_id,
            mode=task.mode,
            language=task.language,
        )
        return task_id

    async def stop(self, task_id: str) -> None:
        await self.api.stop(task_id)

    async def release(self, task_id: str) -> None:
        await self.api.delete(task_id)

    async def is_running(self, task_id: str) -> bool:
        return await self.api.is_running(task_id)


def create_task_params(spec: TaskSpec) -> CreateTask:
    """Map a stream request onto CreateRtcAsrTask; InvalidRequest names the bad field."""
    source = spec.source
    mode = source.get("mode") or ("live" if source.get("url") else None)
    if spec.language not in LANGUAGES:
        raise InvalidRequest(f"language: engine 'aliyun' takes one of {', '.join(LANGUAGES)}")
    for target in spec.translate:
        if target not in TARGET_LANGUAGES:
            raise InvalidRequest(
                f"translate: engine 'aliyun' translates to {', '.join(TARGET_LANGUAGES)}"
            )
    common: dict[str, Any] = {
        "language": spec.language,
        "callback_url": spec.callback_url,
        "auth_key": spec.auth_key,
        "target_languages": spec.translate,
        "auto_terminate": spec.auto_terminate,
        "auto_terminate_delay_s": max(1, min(10, round(spec.auto_terminate_delay_s))),
        "report_interval_ms": spec.report_interval_ms,
    }
    if mode == "live":
        url = source.get("url")
        if not isinstance(url, str) or url.split(":", 1)[0].lower() not in STREAM_SCHEMES:
            raise InvalidRequest("source.url: mode 'live' needs an rtmp:// or http(s):// URL")
        return CreateTask(mode="live", stream_url=url, **common)
    if mode == "rtc":
        return CreateTask(
            mode="rtc",
            sdk_app_id=_required(source, "sdk_app_id"),
            channel_id=_required(source, "channel_id"),
            rtc_user_id=_required(source, "rtc_user_id"),
            **common,
        )
    raise InvalidRequest("source.mode: 'live' (with url) or 'rtc' (with the channel ids)")


def _required(source: Mapping[str, Any], key: str) -> str:
    value = source.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"source.{key}: required for mode 'rtc'")
    return value
