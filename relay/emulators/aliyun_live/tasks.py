"""The emulated ASR tasks: parameter validation, the state table, the response shapes. Pure.

Everything that decides a task's state lives in this file, and the transitions in one table
(:data:`TRANSITIONS`), after h11's ``_state.py``::

    CreateRtcAsrTask -> RUNNING (status 1)
    RUNNING --StopRtcAsrTask / auto-terminate / failure--> STOPPED (status 2)   [U] value 2
    RUNNING | STOPPED --DeleteRtcAsrTask--> gone (then every call: ConfigNotFound)

Stopping a stopped task is accepted and changes nothing [U]. Time is passed in.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from enum import IntEnum, StrEnum
from typing import Any

from relay.emulators.signing import PopError

LANGUAGES = frozenset({"cn", "en", "ja", "yue", "fspk"})
TARGET_LANGUAGES = frozenset({"cn", "en", "ja"})
DEFAULT_AUTO_TERMINATE_DELAY_S = 10  # [U] not documented; the Query example shows "10"
_CST = timezone(timedelta(hours=8))  # the API reports times in China Standard Time


class Status(IntEnum):
    RUNNING = 1
    STOPPED = 2  # [U]: only 1 is documented


class Op(StrEnum):
    STOP = "stop"  # StopRtcAsrTask
    TERMINATE = "terminate"  # the emulator itself: auto-terminate, source failure
    DELETE = "delete"  # DeleteRtcAsrTask


GONE = None  # the state after delete
TRANSITIONS: Mapping[tuple[Status, Op], Status | None] = {
    (Status.RUNNING, Op.STOP): Status.STOPPED,
    (Status.RUNNING, Op.TERMINATE): Status.STOPPED,
    (Status.RUNNING, Op.DELETE): GONE,
    (Status.STOPPED, Op.STOP): Status.STOPPED,
    (Status.STOPPED, Op.TERMINATE): Status.STOPPED,
    (Status.STOPPED, Op.DELETE): GONE,
}


@dataclass(frozen=True, slots=True)
class CreateParams:
    mode: str
    language: str
    callback_url: str
    stream_url: str = ""
    sdk_app_id: str = ""
    channel_id: str = ""
    rtc_user_id: str = ""
    auth_key: str = ""
    translate_enabled: bool = False
    target_languages: tuple[str, ...] = ()
    auto_terminate_enabled: bool = False
    auto_terminate_delay_s: int = DEFAULT_AUTO_TERMINATE_DELAY_S
    report_interval_ms: int = 0


@dataclass(frozen=True, slots=True)
class Task:
    task_id: str
    params: CreateParams
    status: Status
    created_at: float
    updated_at: float
    ali_uid: str

    def shape(self) -> dict[str, Any]:
        """The task as QueryRtcAsrTasks shows it (contract §2: camelCase, some strings)."""
        p = self.params
        return {
            "createdAt": iso8601(self.created_at),
            "updatedAt": iso8601(self.updated_at),
            "mode": p.mode,
            "taskId": self.task_id,
            "language": p.language,
            "callbackUrl": p.callback_url,
            "autoTerminateDelay": str(p.auto_terminate_delay_s),
            "streamUrl": p.stream_url,
            "status": int(self.status),
            "reportInterval": str(p.report_interval_ms),
            "aliUid": self.ali_uid,
            "tag": "",
        }


def iso8601(epoch_s: float) -> str:
    return datetime.fromtimestamp(int(epoch_s), _CST).isoformat()


def parse_create(params: Mapping[str, str]) -> CreateParams:
    """Validate CreateRtcAsrTask's parameters; raise PopError naming the first bad one."""
    mode = _required(params, "Mode")
    if mode not in ("live", "rtc"):
        raise _invalid("Mode", "must be live or rtc")
    language = _required(params, "Language")
    if language not in LANGUAGES:
        raise _invalid("Language", f"must be one of {', '.join(sorted(LANGUAGES))}")
    callback_url = _required(params, "CallbackURL")
    if not callback_url.lower().startswith(("http://", "https://")):
        raise _invalid("CallbackURL", "must be an http(s) URL")
    stream_url = params.get("StreamURL", "")
    if mode == "live":
        stream_url = _required(params, "StreamURL")
        if not stream_url.lower().startswith(("rtmp://", "rtmps://", "http://", "https://",
                                              "file://")):  # fmt: skip
            raise _invalid("StreamURL", "must be an rtmp, http(s) or file URL")
    rtc = {name: params.get(name, "") for name in ("SDKAppID", "ChannelID", "RtcUserId")}
    if mode == "rtc":
        for name in rtc:
            _required(params, name)
        if "," in rtc["RtcUserId"]:
            raise _invalid("RtcUserId", "must be exactly one user id")
    targets = tuple(t.strip() for t in params.get("TargetLanguages", "").split(",") if t.strip())
    if any(t not in TARGET_LANGUAGES for t in targets):
        raise _invalid("TargetLanguages", "must be among cn, en, ja")
    translate = _bool(params, "TranslateEnabled")
    if translate and not targets:
        raise PopError("MissingParameter", "TargetLanguages is required when TranslateEnabled.")
    delay = _int(params, "AutoTerminateDelay", DEFAULT_AUTO_TERMINATE_DELAY_S)
    if not 1 <= delay <= 10:
        raise _invalid("AutoTerminateDelay", "must be 1..10 seconds")
    interval = _int(params, "ReportInterval", 0)
    if not (interval == -1 or 0 <= interval <= 500):
        raise _invalid("ReportInterval", "must be -1 or 0..500 milliseconds")
    return CreateParams(
        mode=mode,
        language=language,
        callback_url=callback_url,
        stream_url=stream_url,
        sdk_app_id=rtc["SDKAppID"],
        channel_id=rtc["ChannelID"],
        rtc_user_id=rtc["RtcUserId"],
        auth_key=params.get("AuthKey", ""),
        translate_enabled=translate,
        target_languages=targets,
        auto_terminate_enabled=_bool(params, "AutoTerminateEnabled"),
        auto_terminate_delay_s=delay,
        report_interval_ms=interval,
    )


class TaskTable:
    """Every task of the emulator, by id. Callers map PopError to the HTTP answer."""

    def __init__(self, ali_uid: str = "1000000000000000") -> None:
        self.ali_uid = ali_uid
        self._tasks: dict[str, Task] = {}

    def create(self, params: CreateParams, now: float, task_id: str | None = None) -> Task:
        task_id = task_id or f"asr-{uuid.uuid4()}"
        task = Task(task_id, params, Status.RUNNING, now, now, self.ali_uid)
        self._tasks[task_id] = task
        return task

    def get(self, task_id: str) -> Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise PopError("ConfigNotFound", f"task {task_id} not found")
        return task

    def apply(self, task_id: str, op: Op, now: float) -> tuple[Task, Task | None]:
        """Apply ``op``; return (the task before, after or None once deleted)."""
        before = self.get(task_id)
        to = TRANSITIONS[(before.status, op)]
        if to is GONE:
            del self._tasks[task_id]
            return before, None
        after = before if to == before.status else replace(before, status=to, updated_at=now)
        self._tasks[task_id] = after
        return before, after

    def query(self, task_id: str | None) -> dict[str, dict[str, Any]]:
        """QueryRtcAsrTasks' ``Tasks``: one task by id, or all running ones."""
        if task_id:
            return {task_id: self.get(task_id).shape()}
        return {t.task_id: t.shape() for t in self._tasks.values() if t.status is Status.RUNNING}

    def all(self) -> list[Task]:
        return list(self._tasks.values())


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name, "")
    if not value:
        raise PopError("MissingParameter", f"The input parameter {name} that is mandatory "
                       "for processing this request is not supplied.")  # fmt: skip
    return value


def _invalid(name: str, why: str) -> PopError:
    return PopError("InvalidParameter", f"The specified parameter {name} is invalid: {why}.")


def _bool(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name, "").strip().lower()
    if value in ("", "false"):
        return False
    if value == "true":
        return True
    raise _invalid(name, "must be true or false")


def _int(params: Mapping[str, str], name: str, default: int) -> int:
    value = params.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise _invalid(name, "must be an integer") from None
