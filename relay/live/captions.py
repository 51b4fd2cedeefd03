"""The caption path: tasks registered, recognizer events merged, captions published.

:class:`CaptionService` is the one place where a recognizer event becomes captions. Signed
callbacks (``ingest_callback``) and engines that push events directly (``ingest``) both end
here; the result goes to the store, whose listeners (the viewer fan-out) deliver it.

Per task it keeps, in this process, a :class:`~relay.core.merger.Merger` and a
:class:`~relay.core.task_state.TaskLife`; ``run()`` ticks the task timers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from relay.config import PublicUrls, Settings
from relay.core import signature
from relay.core.callback import CallbackFormatError, parse_callback
from relay.core.events import (
    CaptionEvent,
    Final,
    Partial,
    RecognizerEvent,
    StateChanged,
    TaskState,
)
from relay.core.merger import Merger
from relay.core.task_state import TaskInput, TaskLife, Transition
from relay.engines.base import Engine, TaskSink, TaskSpec
from relay.errors import (
    EngineUnavailable,
    MalformedCallback,
    SignatureRejected,
    StreamBusy,
    StreamNotFound,
    TaskEnded,
    UnknownCallback,
)
from relay.metrics import Metrics
from relay.store.base import Store, TaskRecord

log = structlog.get_logger("relay.live")

TICK_S = 0.25
LATENCY_WINDOW = 500
_END_INPUT = {TaskState.TERMINATED: TaskInput.COMPLETED, TaskState.FAILED: TaskInput.FAILED}


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A validated request to caption a stream (create, or attach when ``task_id`` is set)."""

    stream_id: str
    engine: str
    source: Mapping[str, object] = field(default_factory=dict)
    language: str = "en"
    translate: tuple[str, ...] = ()
    auto_terminate: bool = False
    auto_terminate_delay_s: float = 5.0
    report_interval_ms: int = 0
    task_id: str | None = None
    auth_key: str | None = field(default=None, repr=False)


@dataclass(slots=True)
class _Live:
    """What this process holds for a task it is serving."""

    record: TaskRecord
    merger: Merger
    life: TaskLife
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Sink:
    """The TaskSink handed to an in-process engine for one stream."""

    def __init__(self, service: CaptionService, stream_id: str) -> None:
        self._service = service
        self._stream_id = stream_id

    async def event(self, event: RecognizerEvent) -> None:
        live = self._service._live_of_stream(self._stream_id)
        if live is not None:
            await self._service._ingest(live.record, event)

    async def alive(self) -> None:
        live = self._service._live_of_stream(self._stream_id)
        if live is not None:
            await self._service._alive(live)

    def latency(self, kind: str, seconds: float) -> None:
        self._service._metrics.engine_latency.labels(kind=kind).observe(seconds)
        by_kind = self._service._latencies.setdefault(self._stream_id, {})
        by_kind.setdefault(kind, deque(maxlen=LATENCY_WINDOW)).append(seconds)


class CaptionService:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        settings: Settings,
        urls: PublicUrls,
        *,
        engines: Mapping[str, Engine] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._settings = settings
        self._urls = urls
        self._engines = dict(engines or {})
        self._clock = clock
        self._live: dict[str, _Live] = {}  # by task_id
        self._stream_tasks: dict[str, str] = {}  # stream_id -> task_id of its live task
        # Recent audio-to-event delays of the stream's latest task, by kind (in-process
        # engines only), kept after the task ends for /v1/streams/{id}.
        self._latencies: dict[str, dict[str, deque[float]]] = {}

    # --- control -------------------------------------------------------------------

    async def start_stream(self, request: StreamRequest) -> TaskRecord:
        """Create (or attach) the stream's task and register it; StreamBusy if it has one."""
        token = secrets.token_urlsafe(32)
        callback_url = f"{self._urls.http}/v1/callbacks/aliyun/{token}"
        now = self._clock()
        if request.task_id is not None:
            if request.auth_key is None:
                raise EngineUnavailable("attach needs auth_key (or RELAY_ALIYUN_AUTH_KEY)")
            task_id, auth_key = request.task_id, request.auth_key
        else:
            engine = self._engines.get(request.engine)
            if engine is None:
                raise EngineUnavailable(f"engine {request.engine!r} is not available")
            # Refuse a busy stream before the engine spends anything on it.
            current = await self._store.get_stream(request.stream_id)
            if current is not None and current.task is not None and not current.task.state.ended:
                raise StreamBusy(f"stream {request.stream_id!r} is already captioned")
            auth_key = secrets.token_hex(16)
            spec = TaskSpec(
                stream_id=request.stream_id,
                source=request.source,
                language=request.language,
                callback_url=callback_url,
                auth_key=auth_key,
                translate=request.translate,
                auto_terminate=request.auto_terminate,
                auto_terminate_delay_s=request.auto_terminate_delay_s,
                report_interval_ms=request.report_interval_ms,
            )
            task_id = await engine.start(spec, self._sink_for(request.stream_id))
        record = TaskRecord(
            task_id=task_id,
            stream_id=request.stream_id,
            engine=request.engine,
            callback_token=token,
            callback_url=callback_url,
            auth_key=auth_key,
            state=TaskState.STARTING,
            started_at=now,
            language=request.language,
            translate=request.translate,
            auto_terminate=request.auto_terminate,
            auto_terminate_delay_s=request.auto_terminate_delay_s,
            report_interval_ms=request.report_interval_ms,
            source=dict(request.source),
        )
        try:
            await self._store.register_task(record)
        except BaseException:
            # Lost a race for the stream (or the store failed): release the engine's task.
            engine = self._engines.get(record.engine)
            if request.task_id is None and engine is not None:
                await engine.stop(task_id)
            raise
        self._latencies.pop(record.stream_id, None)
        self._track(self._new_live(record))
        log.info(
            "task.registered", stream_id=record.stream_id, task_id=task_id, engine=record.engine
        )
        self._metrics.task_transitions.labels(to=TaskState.STARTING).inc()
        await self._store.publish(record.stream_id, StateChanged(TaskState.STARTING))
        return record

    async def stop_stream(self, stream_id: str) -> TaskRecord:
        """Stop the stream's task (idempotent); viewers get a ``state`` message."""
        stream = await self._store.get_stream(stream_id)
        if stream is None or stream.task is None:
            raise StreamNotFound(f"no stream {stream_id!r}")
        record = stream.task
        if record.state.ended:
            return record
        engine = self._engines.get(record.engine)
        if engine is not None:
            await engine.stop(record.task_id)
        live = self._live.get(record.task_id) or self._new_live(record)
        async with live.lock:
            now = self._clock()
            await self._apply(live, live.life.end(TaskInput.STOPPED, "stopped", now), now)
        return live.record

    def _new_live(self, record: TaskRecord) -> _Live:
        engine = self._engines.get(record.engine)
        interrupt_after_s = (engine.interrupt_after_s if engine else None) or (
            self._settings.interrupt_after_s
        )
        life = TaskLife(
            now=record.last_result_at or record.started_at,
            interrupt_after_s=interrupt_after_s,
            auto_terminate=record.auto_terminate,
            terminate_after_s=record.auto_terminate_delay_s,
        )
        return _Live(record, Merger(), life)

    # --- ingestion ------------------------------------------------------------------

    async def ingest_callback(
        self, token: str, sig_time: str | None, asr_sig: str | None, body: bytes
    ) -> bool:
        """Verify, parse and merge one callback. Return False for a redelivery.

        Raises UnknownCallback, SignatureRejected or MalformedCallback; each is counted by
        the caller. The order matters: nothing about the body is read before the signature
        checks out.
        """
        record = await self._store.task_by_token(token)
        if record is None:
            raise UnknownCallback("no task has this callback URL")
        verdict = signature.verify(
            sig_time,
            asr_sig,
            callback_url=record.callback_url,
            auth_key=record.auth_key,
            now=self._clock(),
            max_skew_s=self._settings.sig_max_skew_s,
        )
        if verdict is not signature.Verdict.OK:
            await self._store.count(record.stream_id, "rejected")
            raise SignatureRejected(_SIGNATURE_MESSAGES[verdict], code=verdict.value, record=record)
        if record.state.ended:
            raise TaskEnded(f"task {record.task_id} has {record.state}", record=record)
        try:
            callback = parse_callback(body)
        except CallbackFormatError as exc:
            await self._store.count(record.stream_id, "rejected")
            raise MalformedCallback(str(exc), code=exc.code, record=record) from None
        if callback.task_id != record.task_id:
            await self._store.count(record.stream_id, "rejected")
            raise MalformedCallback(
                "task_id does not match the task of this callback URL", record=record
            )
        if callback.message_id is not None and not await self._store.first_delivery(
            record.task_id, callback.message_id, ttl_s=2 * self._settings.sig_max_skew_s
        ):
            return False
        await self._store.count(record.stream_id, "callbacks")
        if callback.event is not None:
            await self._ingest(record, callback.event)
        return True

    def _sink_for(self, stream_id: str) -> TaskSink:
        # The engine starts delivering before it has returned the task id: route by stream.
        return _Sink(self, stream_id)

    def _live_of_stream(self, stream_id: str) -> _Live | None:
        task_id = self._stream_tasks.get(stream_id)
        return self._live.get(task_id) if task_id is not None else None

    async def _alive(self, live: _Live) -> None:
        async with live.lock:
            now = self._clock()
            await self._apply(live, live.life.activity(now), now)

    def _track(self, live: _Live) -> _Live:
        self._live[live.record.task_id] = live
        self._stream_tasks[live.record.stream_id] = live.record.task_id
        return live

    async def _ingest(self, record: TaskRecord, event: RecognizerEvent) -> None:
        live = self._live.get(record.task_id)
        if live is None:  # registered by another instance, or before a restart
            live = self._track(self._new_live(record))
        async with live.lock:
            if live.life.ended:
                return
            now = self._clock()
            transitions = live.life.activity(now)
            captions = live.merger.receive(event)
            live.record = dataclasses.replace(live.record, last_result_at=now)
            await self._apply(live, transitions, now)
            await self._publish(live, captions, now)

    async def _publish(self, live: _Live, captions: list[CaptionEvent], now: float) -> None:
        stream_id = live.record.stream_id
        partials = finals = 0
        for caption in captions:
            if isinstance(caption, StateChanged):  # the recognizer ended the task
                inp = _END_INPUT[caption.state]
                await self._apply(live, live.life.end(inp, caption.reason, now), now)
                continue
            await self._store.publish(stream_id, caption)
            if isinstance(caption, Partial):
                partials += 1
            elif isinstance(caption, Final):
                finals += 1
            self._metrics.captions.labels(type=type(caption).__name__.lower()).inc()
        if partials:
            await self._store.count(stream_id, "partials", partials)
        if finals:
            await self._store.count(stream_id, "finals", finals)
        await self._store.update_task(live.record)

    async def _apply(self, live: _Live, transitions: list[Transition], now: float) -> None:
        """Record state transitions, tell viewers, and forget ended tasks."""
        for t in transitions:
            live.record = dataclasses.replace(
                live.record,
                state=t.new,
                reason=t.reason,
                ended_at=now if t.new.ended else None,
            )
            await self._store.update_task(live.record)
            await self._store.publish(live.record.stream_id, StateChanged(t.new, t.reason))
            self._metrics.task_transitions.labels(to=t.new).inc()
            log.info(
                "task.state",
                stream_id=live.record.stream_id,
                task_id=live.record.task_id,
                old=t.old,
                new=t.new,
                reason=t.reason,
            )
        if live.life.ended:
            self._live.pop(live.record.task_id, None)
            if self._stream_tasks.get(live.record.stream_id) == live.record.task_id:
                del self._stream_tasks[live.record.stream_id]

    # --- timers ---------------------------------------------------------------------

    async def run(self) -> None:
        """Tick every task's timers until cancelled."""
        while True:
            await asyncio.sleep(TICK_S)
            await self.tick()

    async def tick(self) -> None:
        now = self._clock()
        for live in list(self._live.values()):
            deadline = live.life.next_deadline()
            if deadline is None or deadline > now:
                continue
            async with live.lock:
                await self._apply(live, live.life.tick(now), now)
            engine = self._engines.get(live.record.engine)
            if live.life.ended and engine is not None:
                # relay ended it (auto-terminate): release the engine's task too.
                await engine.stop(live.record.task_id)

    def latency(self, stream_id: str) -> dict[str, dict[str, float]] | None:
        """p50/p95 audio-to-event delay (ms) of the stream's latest task, by event kind."""
        by_kind = self._latencies.get(stream_id)
        if not by_kind:
            return None
        out = {}
        for kind, values in by_kind.items():
            ordered = sorted(values)
            out[kind] = {
                "p50_ms": round(1000 * ordered[len(ordered) // 2], 1),
                "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 1),
                "count": float(len(ordered)),
            }
        return out

    def task_states(self) -> dict[str, int]:
        counts = dict.fromkeys((str(s) for s in TaskState), 0)
        for live in self._live.values():
            counts[str(live.life.state)] += 1
        return counts


_SIGNATURE_MESSAGES = {
    signature.Verdict.MISSING: "SIG-TIME and ASR-SIG headers are required",
    signature.Verdict.BAD: "ASR-SIG does not match",
    signature.Verdict.STALE: "SIG-TIME is outside the accepted window",
}
