"""Parse the body of an Alibaba Cloud Live real-time ASR callback into a recognizer event.

The body is JSON whose ``content`` field is a *string* holding the NLS SpeechTranscriber event
(``header`` + ``payload``). Parsing is strict about what relay needs (a task id, an event
header) and tolerant about the rest: the product's exact field set is partly undocumented,
notably translations, which are looked for under several plausible keys (see
docs/callbacks.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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

NLS_SUCCESS = 20000000
# Where a translated text may sit in a payload: a {lang: text} object, or a list of
# {"language"/"lang"/"target_language", "text"/"result"} objects.
_TRANSLATION_KEYS = ("translations", "translate_result", "translation", "translate_results")
_TRANSLATION_EVENTS = frozenset(
    {"TranslationResult", "TranslationResultChanged", "SentenceTranslate"}
)


class CallbackFormatError(ValueError):
    """The body is not a callback relay can read. ``code`` is the error code to answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Callback:
    task_id: str
    message_id: str | None
    language: str
    event: RecognizerEvent | None  # None: a well-formed event relay has no use for


def parse_callback(body: bytes) -> Callback:
    """Parse a callback body; raise :class:`CallbackFormatError` when it is malformed."""
    try:
        outer = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise CallbackFormatError("malformed_json", f"body is not JSON: {exc}") from None
    if not isinstance(outer, dict):
        raise CallbackFormatError("malformed_json", "body must be a JSON object")
    task_id = outer.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise CallbackFormatError("malformed_content", "task_id must be a non-empty string")
    content = outer.get("content")
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except (ValueError, RecursionError) as exc:
            raise CallbackFormatError("malformed_content", f"content is not JSON: {exc}") from None
    if not isinstance(content, dict):
        raise CallbackFormatError("malformed_content", "content must hold a JSON object")
    header = content.get("header")
    payload = content.get("payload", {})
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise CallbackFormatError("malformed_content", "content needs header and payload objects")
    message_id = header.get("message_id")
    language = outer.get("language")
    return Callback(
        task_id=task_id,
        message_id=str(message_id) if message_id not in (None, "") else None,
        language=language if isinstance(language, str) else "",
        event=_event(header, payload),
    )


def _event(header: Mapping[str, Any], payload: Mapping[str, Any]) -> RecognizerEvent | None:
    name = header.get("name")
    if not isinstance(name, str):
        raise CallbackFormatError("malformed_content", "header.name must be a string")
    status = _int(header, "status", NLS_SUCCESS, where="header")
    if name == "TaskFailed" or status != NLS_SUCCESS:
        text = header.get("status_text")
        return TaskFailed(status=status, reason=text if isinstance(text, str) else "")
    match name:
        case "TranscriptionStarted":
            return TranscriptionStarted()
        case "SentenceBegin":
            return SentenceBegin(index=_int(payload, "index"), time_ms=_int(payload, "time", 0))
        case "TranscriptionResultChanged":
            return ResultChanged(
                index=_int(payload, "index"),
                time_ms=_int(payload, "time", 0),
                text=_str(payload, "result"),
                fixed=_str(payload, "fixed_result"),
                unfixed=_str(payload, "unfixed_result"),
                words=_words(payload),
            )
        case "SentenceEnd":
            time_ms = _int(payload, "time", 0)
            return SentenceEnd(
                index=_int(payload, "index"),
                time_ms=time_ms,
                begin_ms=_int(payload, "begin_time", time_ms),
                text=_str(payload, "result"),
                words=_words(payload),
                translations=_translations(payload),
            )
        case "TranscriptionCompleted":
            return TranscriptionCompleted()
        case _ if name in _TRANSLATION_EVENTS:
            return Translated(index=_int(payload, "index"), translations=_translations(payload))
    return None


def _int(
    obj: Mapping[str, Any], key: str, default: int | None = None, *, where: str = "payload"
) -> int:
    value = obj.get(key, default)
    # bool is an int in Python; a recognizer never means True as a number.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CallbackFormatError("malformed_content", f"{where}.{key} must be a finite number")
    return int(value)


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CallbackFormatError("malformed_content", f"payload.{key} must be a string")
    return value


def _words(payload: Mapping[str, Any]) -> tuple[Word, ...]:
    raw = payload.get("words")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise CallbackFormatError("malformed_content", "payload.words must be a list")
    words = []
    for item in raw:
        if not isinstance(item, dict):
            raise CallbackFormatError("malformed_content", "payload.words[] must be objects")
        words.append(
            Word(
                text=_str(item, "text"),
                start_ms=_int(item, "startTime", 0, where="words[]"),
                end_ms=_int(item, "endTime", 0, where="words[]"),
            )
        )
    return tuple(words)


def _translations(payload: Mapping[str, Any]) -> dict[str, str]:
    for key in _TRANSLATION_KEYS:
        raw = payload.get(key)
        if isinstance(raw, dict):
            return {str(k): v for k, v in raw.items() if isinstance(v, str)}
        if isinstance(raw, list):
            found: dict[str, str] = {}
            for item in raw:
                if not isinstance(item, dict):
                    continue
                lang = item.get("language") or item.get("lang") or item.get("target_language")
                text = item.get("text", item.get("result"))
                if isinstance(lang, str) and isinstance(text, str):
                    found[lang] = text
            return found
    return {}
