"""The store interface and the records it keeps.

A store holds the stream/task registry, each stream's caption log (numbered by ``seq``), the
callback dedupe window and per-stream counters, and carries published caption events to
every listener, across relay instances when the implementation is shared (Redis).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.core.events import CaptionEvent, Published, TaskState

COUNTERS = ("callbacks", "partials", "finals", "rejected")


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One recognition task of one stream, as registered."""

    task_id: str
    stream_id: str
    engine: str
    callback_token: str  # the unguessable last segment of the task's callback URL
    callback_url: str  # exactly as registered with the cloud: the signature covers it
    auth_key: str = field(repr=False)
    state: TaskState
    started_at: float
    reason: str = ""
    language: str = "en"
    translate: tuple[str, ...] = ()
    auto_terminate: bool = False
    auto_terminate_delay_s: float = 5.0
    report_interval_ms: int = 0
    source: Mapping[str, Any] | None = None
    attached: bool = False  # created elsewhere: relay never stops or queries it
    last_result_at: float | None = None
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class StreamRecord:
    stream_id: str
    task: TaskRecord | None
    seq: int
    counters: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Replay:
    """What a resuming viewer needs: finals after its seq, then the current partial."""

    finals: list[Published]
    partial: Published | None
    seq: int
    state: TaskState | None


Listener = Callable[[Published], None]


class Store(Protocol):
    """Every method may raise :class:`relay.errors.StoreUnavailable`."""

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Flush what is pending and release connections."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store can take writes now."""

    async def register_task(self, task: TaskRecord) -> None:
        """Make ``task`` the stream's current task.

        Raises StreamBusy if the stream's current task has not ended. Atomic across instances.
        """

    async def update_task(self, task: TaskRecord) -> None:
        """Replace the stored record of ``task`` (same task_id)."""

    async def get_stream(self, stream_id: str) -> StreamRecord | None: ...

    async def list_streams(self) -> list[StreamRecord]: ...

    async def task_by_token(self, token: str) -> TaskRecord | None: ...

    async def first_delivery(self, task_id: str, message_id: str, *, ttl_s: float) -> bool:
        """True the first time this (task, message) is seen within ``ttl_s``; else False."""

    async def count(self, stream_id: str, name: str, amount: int = 1) -> None:
        """Add to one of the stream's COUNTERS."""

    async def publish(self, stream_id: str, event: CaptionEvent) -> Published:
        """Number ``event`` within its stream, keep it, and hand it to every listener.

        Partials and finals get the next seq; finals go to the caption log (capped, oldest
        dropped first); the newest partial is kept for replay. State changes take the
        stream's current seq. When this returns the event is stored.
        """

    async def replay(self, stream_id: str, since: int | None) -> Replay:
        """Finals with seq > ``since`` (none when None) and the current partial."""

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with each published event, in seq order per stream."""
