"""Request and response bodies of the control API, validated with pydantic.

The same models generate the OpenAPI schemas (web/openapi.py), so the document cannot
drift from what the handlers accept.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """``local``: ``url`` (+ ``realtime``). ``aliyun``: ``mode`` live + ``url``, or rtc ids."""

    url: str | None = None
    realtime: bool = False
    mode: Literal["live", "rtc"] | None = None
    sdk_app_id: str | None = None
    channel_id: str | None = None
    rtc_user_id: str | None = None


class AutoTerminate(_Strict):
    enabled: bool = False
    delay_s: float = Field(default=5, ge=1, le=10)


class CreateStream(_Strict):
    stream_id: str = Field(pattern=STREAM_ID_PATTERN)
    engine: Literal["local", "aliyun"] | None = None
    source: Source | None = None
    language: str = Field(default="en", min_length=1, max_length=16)
    translate: list[str] = Field(default_factory=list, max_length=8)
    auto_terminate: AutoTerminate = AutoTerminate()
    report_interval_ms: int = Field(default=0, ge=-1, le=500)
    task_id: str | None = Field(default=None, min_length=1, max_length=128)
    auth_key: str | None = Field(default=None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _attach_or_create(self) -> CreateStream:
        if self.task_id is not None:
            if self.engine != "aliyun":
                raise ValueError("attaching a task_id needs engine 'aliyun'")
        elif self.auth_key is not None:
            raise ValueError("auth_key is only for attaching an existing task_id")
        elif self.source is None:
            raise ValueError("source is required unless attaching a task_id")
        return self


class StreamCreated(_Strict):
    stream_id: str
    task_id: str
    state: str
    callback_url: str
    viewer_url: str
    overlay_url: str


class Counters(_Strict):
    callbacks: int
    partials: int
    finals: int
    viewers: int
    rejected: int


class LatencyFigures(_Strict):
    p50_ms: float
    p95_ms: float
    count: float


class StreamInfo(_Strict):
    stream_id: str
    state: str
    reason: str
    engine: str | None
    task_id: str | None
    seq: int
    started_at: str | None
    last_result_at: str | None
    ended_at: str | None
    counters: Counters
    # In-process engines: audio-to-event delay by kind ("partial", "final"); null otherwise.
    latency: dict[str, LatencyFigures] | None = None
    viewer_url: str
    overlay_url: str


class StreamList(_Strict):
    streams: list[StreamInfo]


class HookAnswer(_Strict):
    captions: Literal["started", "failed", "stopped", "none"]
    task_id: str | None = None
    error: str | None = None


class ErrorDetail(_Strict):
    code: str
    message: str


class ErrorBody(_Strict):
    error: ErrorDetail


class Ok(_Strict):
    status: Literal["ok"] = "ok"


class NotReady(_Strict):
    status: Literal["unavailable"] = "unavailable"
    checks: dict[str, str]
