"""How a stream request becomes CreateRtcAsrTask parameters (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.engines.aliyun.engine import create_task_params
from relay.engines.base import TaskSpec
from relay.errors import InvalidRequest


def spec(source: dict[str, Any], **extra: Any) -> TaskSpec:
    return TaskSpec(
        stream_id="s",
        source=source,
        language=extra.pop("language", "en"),
        callback_url="https://relay.example/v1/callbacks/aliyun/tok",
        auth_key="k",
        **extra,
    )


def test_a_live_stream() -> None:
    task = create_task_params(
        spec(
            {"mode": "live", "url": "rtmp://live.example/app/s"},
            translate=("cn", "ja"),
            auto_terminate=True,
            auto_terminate_delay_s=2.6,
            report_interval_ms=-1,
        )
    )
    assert task.mode == "live" and task.stream_url == "rtmp://live.example/app/s"
    assert task.target_languages == ("cn", "ja")
    assert task.auto_terminate and task.auto_terminate_delay_s == 3
    assert task.report_interval_ms == -1
    assert task.callback_url.endswith("/tok") and task.auth_key == "k"


def test_a_url_without_mode_is_live() -> None:
    assert create_task_params(spec({"url": "https://cdn.example/s.flv"})).mode == "live"


def test_an_rtc_channel() -> None:
    source = {"mode": "rtc", "sdk_app_id": "app", "channel_id": "ch", "rtc_user_id": "u1"}
    task = create_task_params(spec(source))
    assert (task.mode, task.sdk_app_id, task.channel_id, task.rtc_user_id) == (
        "rtc",
        "app",
        "ch",
        "u1",
    )
    assert task.stream_url is None


@pytest.mark.parametrize(
    ("source", "extra", "field"),
    [
        ({"mode": "rtc", "sdk_app_id": "a", "channel_id": "c"}, {}, "source.rtc_user_id"),
        ({"mode": "live"}, {}, "source.url"),
        ({"mode": "live", "url": "ftp://x/y"}, {}, "source.url"),
        ({}, {}, "source.mode"),
        ({"url": "rtmp://x/a/b"}, {"language": "de"}, "language"),
        ({"url": "rtmp://x/a/b"}, {"translate": ("fr",)}, "translate"),
    ],
)
def test_invalid_requests_name_the_field(
    source: dict[str, Any], extra: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequest, match=f"^{field}:"):
        create_task_params(spec(source, **extra))
