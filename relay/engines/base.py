"""The engine interface.

An engine starts a recognition task for a stream and stops it. Its results reach relay
either as signed HTTP callbacks (cloud engines) or through the :class:`EventSink` it is
given (the local engine); both end in the same merger.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.core.events import RecognizerEvent

EventSink = Callable[[RecognizerEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a stream asked for; the engine turns it into a running task."""

    stream_id: str
    source: Mapping[str, Any]
    language: str
    callback_url: str
    auth_key: str = field(repr=False)
    translate: tuple[str, ...] = ()
    auto_terminate: bool = False
    auto_terminate_delay_s: float = 5.0
    report_interval_ms: int = 0


class Engine(Protocol):
    name: str

    async def start(self, spec: TaskSpec, sink: EventSink) -> str:
        """Start a task and return its id. Raise RelayError subclasses on refusal."""

    async def stop(self, task_id: str) -> None:
        """Stop the task and release it; must not raise if it already ended."""
