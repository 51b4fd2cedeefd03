"""The engine interface.

An engine starts a recognition task for a stream and stops it. Its results reach relay
either as signed HTTP callbacks (cloud engines) or through the :class:`TaskSink` it is
given (the local engine); both end in the same merger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.core.events import RecognizerEvent


class TaskSink(Protocol):
    """Where an in-process engine delivers what its task produces."""

    async def event(self, event: RecognizerEvent) -> None:
        """A recognizer event; TranscriptionCompleted / TaskFailed end the task."""

    async def alive(self) -> None:
        """Audio is arriving: the task is not interrupted, even if nobody speaks."""

    def latency(self, kind: str, seconds: float) -> None:
        """Audio-to-event delay of one emitted event (``kind``: partial or final)."""


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
    # No activity for this long marks a task interrupted; None: RELAY_INTERRUPT_AFTER_S.
    interrupt_after_s: float | None

    async def start(self, spec: TaskSpec, sink: TaskSink) -> str:
        """Start a task and return its id. Raise RelayError subclasses on refusal."""

    async def stop(self, task_id: str) -> None:
        """Stop the task and release it; must not raise if it already ended."""
