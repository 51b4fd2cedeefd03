"""Recognizer events -> the exact callback body of contract §3/§5. Pure.

The outer JSON carries the task and a ``content`` *string* holding the NLS SpeechTranscriber
event (``header`` + ``payload``); :func:`relay.core.callback.parse_callback` is the inverse,
which the tests check as a round trip. Translations ride in the ``SentenceEnd`` payload as
``"translations": {"cn": "..."}`` [U: the product's own field is undocumented]; a
:class:`Translated` event apart from its sentence is sent as ``TranslationResult``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.core.callback import NLS_SUCCESS
from relay.core.events import (
    RecognizerEvent,
    ResultChanged,
    SentenceBegin,
    SentenceEnd,
    TaskFailed,
    TranscriptionCompleted,
    TranscriptionStarted,
    Translated,
    Word,
)

NAMESPACE = "SpeechTranscriber"


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What every callback of one task repeats."""

    task_id: str
    language: str
    nls_task_id: str  # 32 hex, the NLS session behind the task
    task_key: str  # e.g. tl_<uid>_<created ms>
    sdk_app_id: str = ""
    channel_id: str = ""
    rtc_user_id: str = ""


def message_id(ctx: TaskContext, seq: int) -> str:
    """32 hex digits, unique per callback; the last 8 are the task's callback number."""
    return f"{ctx.nls_task_id[:24]}{seq:08x}"


def pseudo_translate(text: str, targets: Iterable[str]) -> dict[str, str]:
    """No translation model exists offline: a clearly marked stand-in, ``[cn] text``."""
    return {lang: f"[{lang}] {text}" for lang in targets}


def encode(event: RecognizerEvent, ctx: TaskContext, *, msg_id: str, now_ms: int) -> bytes:
    name, payload, status, status_text = _content(event)
    header = {
        "nls_task_id": ctx.nls_task_id,
        "task_key": ctx.task_key,
        "namespace": NAMESPACE,
        "name": name,
        "task_id": ctx.nls_task_id,
        "message_id": msg_id,
        "status": status,
        "status_text": status_text,
    }
    outer = {
        "task_id": ctx.task_id,
        "sdk_app_id": ctx.sdk_app_id,
        "channel_id": ctx.channel_id,
        "rtc_user_id": ctx.rtc_user_id,
        "callback_time_stamp": now_ms,
        "language": ctx.language,
        "content": json.dumps({"header": header, "payload": payload}),
    }
    return json.dumps(outer).encode()


def _content(event: RecognizerEvent) -> tuple[str, dict[str, Any], int, str]:
    ok = NLS_SUCCESS, "Success."
    match event:
        case TranscriptionStarted():
            return "TranscriptionStarted", {}, *ok
        case SentenceBegin(index=index, time_ms=time_ms):
            return "SentenceBegin", {"index": index, "time": time_ms}, *ok
        case ResultChanged():
            payload = {
                "result": event.text,
                "confidence": 0.0,
                "words": _words(event.words),
                "index": event.index,
                "time": event.time_ms,
                "fixed_result": event.fixed,
                "unfixed_result": event.unfixed,
                "status": 0,
            }
            return "TranscriptionResultChanged", payload, *ok
        case SentenceEnd():
            payload = {
                "index": event.index,
                "time": event.time_ms,
                "begin_time": event.begin_ms,
                "result": event.text,
                "confidence": 0.9 if event.text else 0.0,  # tiny.en gives no calibrated value
                "words": _words(event.words),
            }
            if event.translations:
                payload["translations"] = dict(event.translations)
            return "SentenceEnd", payload, *ok
        case Translated(index=index, translations=translations):
            return "TranslationResult", {"index": index, "translations": dict(translations)}, *ok
        case TranscriptionCompleted():
            return "TranscriptionCompleted", {}, *ok
        case TaskFailed(status=status, reason=reason):
            return "TaskFailed", {}, status, reason
    raise TypeError(f"not a recognizer event: {event!r}")


def _words(words: Iterable[Word]) -> list[Mapping[str, Any]]:
    return [{"startTime": w.start_ms, "text": w.text, "endTime": w.end_ms} for w in words]
