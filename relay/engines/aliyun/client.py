"""The four CreateRtcAsrTask-family calls of Alibaba Cloud Live, through the official SDK.

A thin adapter over ``alibabacloud_live20161101.client.Client`` (its ``*_async`` methods):
every call is rate limited client-side (the API allows 20 calls/s per account), bounded by a
timeout, and any refusal becomes :class:`relay.errors.CloudError` carrying the cloud's own
code and message, which the HTTP layer answers as ``502``. Credentials live only in the SDK
client; nothing here logs them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
from alibabacloud_live20161101 import models as live_models
from alibabacloud_live20161101.client import Client
from alibabacloud_tea_openapi import utils_models as open_api_models
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException
from darabonba.runtime import RuntimeOptions
from Tea.exceptions import TeaException

from relay.core.rate import RateLimiter
from relay.errors import CloudError
from relay.metrics import Metrics

log = structlog.get_logger("relay.engines.aliyun")

T = TypeVar("T")
RET_SUCCESS = 2000
STATUS_RUNNING = 1  # QueryRtcAsrTasks ``status`` of a running task (the only value seen)
NOT_FOUND = "ConfigNotFound"


@dataclass(frozen=True, slots=True)
class ApiConfig:
    access_key_id: str
    access_key_secret: str
    region: str = "cn-shanghai"
    endpoint: str = ""  # "" = the SDK's own; "host:port" (HTTPS) or "http://host:port"
    signature_algorithm: str = ""  # "" = ACS3-HMAC-SHA256 (the SDK's default); "v2" = HMAC-SHA1
    timeout_s: float = 5.0
    rate_per_s: float = 15.0  # under the documented 20/s, leaving room for other clients


@dataclass(frozen=True, slots=True)
class CreateTask:
    """CreateRtcAsrTask's parameters (Mode live: ``stream_url``; rtc: the three ids)."""

    mode: str
    language: str
    callback_url: str
    auth_key: str
    stream_url: str | None = None
    sdk_app_id: str | None = None
    channel_id: str | None = None
    rtc_user_id: str | None = None
    target_languages: tuple[str, ...] = ()
    auto_terminate: bool = False
    auto_terminate_delay_s: int = 5
    report_interval_ms: int = 0


class LiveApi:
    """Create, query, stop and delete real-time ASR tasks."""

    def __init__(
        self,
        config: ApiConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._limiter = RateLimiter(config.rate_per_s, burst=max(1, int(config.rate_per_s // 2)))
        self._client = Client(_sdk_config(config))
        timeout_ms = int(config.timeout_s * 1000)
        # The SDK's own retry is off (retry_options=None): relay decides when to try again.
        self._runtime = RuntimeOptions(read_timeout=timeout_ms, connect_timeout=timeout_ms)

    async def create(self, task: CreateTask) -> str:
        request = live_models.CreateRtcAsrTaskRequest(
            mode=task.mode,
            language=task.language,
            callback_url=task.callback_url,
            auth_key=task.auth_key,
            stream_url=task.stream_url,
            sdkapp_id=task.sdk_app_id,
            channel_id=task.channel_id,
            rtc_user_id=task.rtc_user_id,
            translate_enabled=bool(task.target_languages) or None,
            target_languages=",".join(task.target_languages) or None,
            auto_terminate_enabled=task.auto_terminate,
            auto_terminate_delay=task.auto_terminate_delay_s if task.auto_terminate else None,
            report_interval=task.report_interval_ms,
            region_id=self._config.region,
        )
        body = await self._call(
            "CreateRtcAsrTask",
            lambda: self._client.create_rtc_asr_task_with_options_async(request, self._runtime),
        )
        task_id = getattr(body, "task_id", None)
        if not isinstance(task_id, str) or not task_id:
            raise CloudError("CreateRtcAsrTask returned no TaskId", code="cloud_bad_response")
        return task_id

    async def is_running(self, task_id: str) -> bool:
        """Whether the cloud still runs the task (a task it no longer knows does not)."""
        request = live_models.QueryRtcAsrTasksRequest(
            task_id=task_id, region_id=self._config.region
        )
        try:
            body = await self._call(
                "QueryRtcAsrTasks",
                lambda: self._client.query_rtc_asr_tasks_with_options_async(request, self._runtime),
            )
        except CloudError as exc:
            if exc.code == NOT_FOUND:
                return False
            raise
        tasks = getattr(body, "tasks", None) or {}
        found = tasks.get(task_id) if isinstance(tasks, dict) else None
        return isinstance(found, dict) and found.get("status") == STATUS_RUNNING

    async def stop(self, task_id: str) -> None:
        """StopRtcAsrTask; a task the cloud no longer knows counts as stopped."""
        request = live_models.StopRtcAsrTaskRequest(task_id=task_id, region_id=self._config.region)
        await self._tolerate_not_found(
            "StopRtcAsrTask",
            lambda: self._client.stop_rtc_asr_task_with_options_async(request, self._runtime),
        )

    async def delete(self, task_id: str) -> None:
        """DeleteRtcAsrTask; a task the cloud no longer knows counts as deleted."""
        request = live_models.DeleteRtcAsrTaskRequest(
            task_id=task_id, region_id=self._config.region
        )
        await self._tolerate_not_found(
            "DeleteRtcAsrTask",
            lambda: self._client.delete_rtc_asr_task_with_options_async(request, self._runtime),
        )

    async def _tolerate_not_found(self, action: str, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            await self._call(action, call)
        except CloudError as exc:
            if exc.code != NOT_FOUND:
                raise

    async def _call(self, action: str, call: Callable[[], Awaitable[Any]]) -> Any:
        wait = self._limiter.reserve(self._clock())
        if wait > 0:
            await asyncio.sleep(wait)
        started = self._clock()
        try:
            body = await self._answer(action, call)
        except CloudError as exc:
            self._metrics.cloud_calls.labels(action=action, result=exc.code).inc()
            raise
        finally:
            self._metrics.cloud_call_seconds.labels(action=action).observe(self._clock() - started)
        self._metrics.cloud_calls.labels(action=action, result="ok").inc()
        log.info(
            "aliyun.call",
            action=action,
            request_id=getattr(body, "request_id", None),
            seconds=round(self._clock() - started, 3),
        )
        return body

    async def _answer(self, action: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Make the call; every way it can fail becomes a CloudError."""
        try:
            async with asyncio.timeout(self._config.timeout_s):
                response = await call()
        except AlibabaCloudException as exc:
            raise _refused(action, exc) from None
        except TimeoutError:
            raise self._timed_out(action) from None
        except (TeaException, OSError) as exc:  # the SDK wraps connection errors
            if isinstance(getattr(exc, "inner_exception", None), TimeoutError):
                raise self._timed_out(action) from None  # the SDK's socket timeout came first
            raise CloudError(
                f"{action}: cannot reach Alibaba Cloud: {_cause(exc)}", code="cloud_unreachable"
            ) from None
        body = response.body
        ret_code = getattr(body, "ret_code", RET_SUCCESS)
        if ret_code not in (None, RET_SUCCESS):
            description = getattr(body, "description", "") or ""
            raise CloudError(
                f"{action}: {description} (RetCode {ret_code})", code=f"RetCode.{ret_code}"
            )
        return body

    def _timed_out(self, action: str) -> CloudError:
        return CloudError(
            f"{action}: no answer from Alibaba Cloud within {self._config.timeout_s:g} s",
            code="cloud_timeout",
        )


def _refused(action: str, exc: AlibabaCloudException) -> CloudError:
    code = exc.code or "cloud_error"
    message = exc.message or str(exc)
    log.warning(
        "aliyun.refused",
        action=action,
        code=code,
        status=exc.status_code,
        request_id=exc.request_id,
    )
    return CloudError(
        f"Alibaba Cloud refused {action}: {message} (RequestId {exc.request_id})",
        code=code,
        cloud_status=exc.status_code,
    )


def _cause(exc: BaseException) -> str:
    # The SDK's UnretryableException keeps the real error (aiohttp's) inside.
    inner = getattr(exc, "inner_exception", None)
    return repr(inner) if inner is not None else repr(exc)


def _sdk_config(config: ApiConfig) -> Any:
    sdk = open_api_models.Config(
        access_key_id=config.access_key_id,
        access_key_secret=config.access_key_secret,
        region_id=config.region,
    )
    if config.endpoint:
        if "://" in config.endpoint:
            parts = urlsplit(config.endpoint)
            sdk.endpoint, sdk.protocol = parts.netloc, parts.scheme
        else:
            sdk.endpoint = config.endpoint
    if config.signature_algorithm:
        sdk.signature_algorithm = config.signature_algorithm
    return sdk
