"""The embedded store: everything in this process, nothing survives a restart."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from relay.core.events import CaptionEvent, Final, Partial, Published, StateChanged
from relay.errors import StreamBusy
from relay.store.base import COUNTERS, Listener, Replay, StreamRecord, TaskRecord


@dataclass(slots=True)
class _Stream:
    stream_id: str
    log: deque[Published]
    task_id: str | None = None
    seq: int = 0
    partial: Published | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))


class MemoryStore:
    def __init__(self, *, caption_log_max: int = 2000) -> None:
        self._log_max = caption_log_max
        self._streams: dict[str, _Stream] = {}
        self._tasks: dict[str, TaskRecord] = {}
        self._tokens: dict[str, str] = {}
        # (task, message) -> expiry, keyed by a 64-bit hash: at thousands of callbacks a
        # second over a 600 s window, keeping the strings would cost hundreds of MiB.
        self._seen: dict[int, float] = {}
        self._seen_order: deque[tuple[float, int]] = deque()
        self._listeners: list[Listener] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    def _stream(self, stream_id: str) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream(stream_id, deque(maxlen=self._log_max))
        return stream

    async def register_task(self, task: TaskRecord) -> None:
        stream = self._stream(task.stream_id)
        current = self._tasks.get(stream.task_id) if stream.task_id else None
        if current is not None and not current.state.ended:
            raise StreamBusy(f"stream {task.stream_id!r} is already captioned by {current.task_id}")
        stream.task_id = task.task_id
        self._tasks[task.task_id] = task
        self._tokens[task.callback_token] = task.task_id

    async def update_task(self, task: TaskRecord) -> None:
        self._tasks[task.task_id] = task

    def _record(self, stream: _Stream) -> StreamRecord:
        task = self._tasks.get(stream.task_id) if stream.task_id else None
        return StreamRecord(stream.stream_id, task, stream.seq, dict(stream.counters))

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        stream = self._streams.get(stream_id)
        return self._record(stream) if stream is not None else None

    async def list_streams(self) -> list[StreamRecord]:
        return [self._record(s) for s in self._streams.values()]

    async def task_by_token(self, token: str) -> TaskRecord | None:
        task_id = self._tokens.get(token)
        return self._tasks.get(task_id) if task_id else None

    async def first_delivery(self, task_id: str, message_id: str, *, ttl_s: float) -> bool:
        now = time.monotonic()
        while self._seen_order and self._seen_order[0][0] <= now:
            _, old = self._seen_order.popleft()
            if self._seen.get(old, now + 1) <= now:
                del self._seen[old]
        key = hash((task_id, message_id))
        if self._seen.get(key, 0.0) > now:
            return False
        self._seen[key] = now + ttl_s
        self._seen_order.append((now + ttl_s, key))
        return True

    async def count(self, stream_id: str, name: str, amount: int = 1) -> None:
        counters = self._stream(stream_id).counters
        counters[name] = counters.get(name, 0) + amount

    async def publish(self, stream_id: str, event: CaptionEvent) -> Published:
        stream = self._stream(stream_id)
        if isinstance(event, StateChanged):
            published = Published(stream_id, stream.seq, event)
            if event.state.ended:
                stream.partial = None
        else:
            stream.seq += 1
            published = Published(stream_id, stream.seq, event)
            if isinstance(event, Partial):
                stream.partial = published
            else:
                stream.log.append(published)
                if stream.partial is not None and _index(stream.partial) <= event.index:
                    stream.partial = None
        for listener in self._listeners:
            listener(published)
        return published

    async def replay(self, stream_id: str, since: int | None) -> Replay:
        stream = self._streams.get(stream_id)
        if stream is None:
            return Replay([], None, 0, None)
        finals = [] if since is None else [p for p in stream.log if p.seq > since]
        task = self._tasks.get(stream.task_id) if stream.task_id else None
        return Replay(finals, stream.partial, stream.seq, task.state if task else None)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)


def _index(published: Published) -> int:
    assert isinstance(published.event, Partial | Final)
    return published.event.index
