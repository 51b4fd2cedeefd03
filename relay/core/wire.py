"""Viewer wire format: caption events to the JSON text of SPEC §3.4.

Encoding is the per-event cost of fan-out, so it runs once per event and language, never
once per viewer: :func:`encode` returns bytes that every viewer of that language shares.
"""

from __future__ import annotations

import json
from typing import Any

from relay.core.events import Final, Partial, Published, StateChanged, TaskState

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

IDLE = "idle"  # the `state` a hello reports while the stream has no task


def encode(published: Published, lang: str | None = None) -> bytes:
    """The JSON text frame payload for one published event, as seen by a ``lang`` viewer."""
    # "replace": a lone surrogate (valid JSON escape, invalid UTF-8) becomes "?" rather than
    # failing the frame for every viewer.
    return _dumps(to_message(published, lang)).encode("utf-8", "replace")


def to_message(published: Published, lang: str | None = None) -> dict[str, Any]:
    event, stream_id, seq = published.event, published.stream_id, published.seq
    match event:
        case Partial():
            return {
                "type": "partial",
                "stream_id": stream_id,
                "seq": seq,
                "index": event.index,
                "text": event.text,
                "stable": event.stable,
                "start_ms": event.start_ms,
                "end_ms": event.end_ms,
            }
        case Final():
            text = event.translations.get(lang, event.text) if lang else event.text
            return {
                "type": "final",
                "stream_id": stream_id,
                "seq": seq,
                "index": event.index,
                "text": text,
                "start_ms": event.start_ms,
                "end_ms": event.end_ms,
                "words": [
                    {"text": w.text, "start_ms": w.start_ms, "end_ms": w.end_ms}
                    for w in event.words
                ],
                "translations": dict(event.translations),
            }
        case StateChanged():
            return {
                "type": "state",
                "stream_id": stream_id,
                "state": str(event.state),
                "reason": event.reason,
            }


def encode_hello(stream_id: str, state: TaskState | None, seq: int) -> bytes:
    message = {"type": "hello", "stream_id": stream_id, "state": str(state or IDLE), "seq": seq}
    return _dumps(message).encode("utf-8", "replace")


def translates_to(published: Published, lang: str) -> bool:
    """Whether a ``lang`` viewer sees other bytes for this event than the default."""
    return isinstance(published.event, Final) and lang in published.event.translations
