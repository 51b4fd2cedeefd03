"""The engine interface.

An engine starts a recognition task for a stream and stops it. Its results reach relay
either as signed HTTP callbacks (cloud engines) or through the :class:`TaskSink` it is
given (the local engine); both end in the same merger.

Calling contract, for one task: ``start()`` once; then, when relay wants it to end,
``stop()`` (results may still arrive for ``stop_grace_s``); and once the task has ended for
any reason, ``release()``. A cloud engine (``confirms_end``) ends tasks on its own without
telling relay; relay asks ``is_running()`` when a task has gone quiet.
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
    # True: the engine ends tasks without telling relay; relay asks is_running() instead
    # of ending an interrupted task by its own timer.
    confirms_end: bool
    # After stop(), results may still arrive for this long (cloud callbacks in flight).
    stop_grace_s: float

    async def start(self, spec: TaskSpec, sink: TaskSink) -> str:
        """Start a task and return its id. Raise RelayError subclasses on refusal."""

    async def stop(self, task_id: str) -> None:
        """Ask the task to stop. Must not raise if it already ended; CloudError if refused."""

    async def release(self, task_id: str) -> None:
        """Free what the task holds once it has ended. Must not raise if already freed."""

    async def is_running(self, task_id: str) -> bool:
        """Whether the task still runs; CloudError when that cannot be known now."""
