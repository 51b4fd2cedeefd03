"""The caption path: tasks registered, recognizer events merged, captions published.

:class:`CaptionService` is the one place where a recognizer event becomes captions. Signed
callbacks (``ingest_callback``) and engines that push events directly (``ingest``) both end
here; the result goes to the store, whose listeners (the viewer fan-out) deliver it.

Per task it keeps, in this process, a :class:`~relay.core.merger.Merger` and a
:class:`~relay.core.task_state.TaskLife`; ``run()`` ticks the task timers, asks cloud
engines whether quiet tasks still run, and releases the engine's side of ended tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

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
    CloudError,
    EngineUnavailable,
    MalformedCallback,
    RelayError,
    SignatureRejected,
    StoreUnavailable,
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
RECHECK_S = 10.0  # ask the cloud again this long after it said an interrupted task runs
RELEASE_TIMEOUT_S = 30.0
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
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False  # relay asked the engine to stop: its completion is a stop


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
        self.engines = dict(engines or {})
        self._clock = clock
        self._live: dict[str, _Live] = {}  # by task_id
        self._stream_tasks: dict[str, str] = {}  # stream_id -> task_id of its live task
        # Recent audio-to-event delays of the stream's latest task, by kind (in-process
        # engines only), kept after the task ends for /v1/streams/{id}.
        self._latencies: dict[str, dict[str, deque[float]]] = {}
        # Background work (cloud checks, releases) is owned by run()'s task group.
        self._group: asyncio.TaskGroup | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._checking: set[str] = set()  # task ids with a cloud check out
        self._pending_tokens: set[str] = set()  # callback tokens of tasks being created

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
            engine = self.engines.get(request.engine)
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
            # A cloud may call back before create has returned: until the task is registered,
            # its callbacks get 503 (the sender retries) rather than 404 (lost).
            self._pending_tokens.add(token)
            try:
                task_id = await engine.start(spec, self._sink_for(request.stream_id))
            except BaseException:
                self._pending_tokens.discard(token)
                raise
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
            attached=request.task_id is not None,
        )
        try:
            await self._store.register_task(record)
        except BaseException:
            self._pending_tokens.discard(token)
            # Lost a race for the stream (or the store failed): release the engine's task.
            engine = self._engine_of(record)
            if engine is not None:
                await self._release(engine, record, stop=True)
            raise
        self._pending_tokens.discard(token)
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
        live = self._live.get(record.task_id) or self._track(self._new_live(record))
        engine = self._engine_of(record)
        if engine is not None:
            live.stopping = True
            try:
                await engine.stop(record.task_id)  # CloudError: answered 502, nothing changed
            except BaseException:
                live.stopping = False
                raise
            if engine.stop_grace_s > 0:
                # The cloud still delivers what was said before the stop: wait for its
                # completion callback (which ends the task as stopped) for a bounded time.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(engine.stop_grace_s):
                        await live.ended.wait()
        async with live.lock:
            now = self._clock()
            await self._apply(live, live.life.end(TaskInput.STOPPED, "stopped", now), now)
        return live.record

    def _engine_of(self, record: TaskRecord) -> Engine | None:
        """The engine that owns the record's task; None for attached tasks."""
        return None if record.attached else self.engines.get(record.engine)

    def _new_live(self, record: TaskRecord) -> _Live:
        engine = self._engine_of(record)
        interrupt_after_s = (engine.interrupt_after_s if engine else None) or (
            self._settings.interrupt_after_s
        )
        life = TaskLife(
            now=record.last_result_at or record.started_at,
            interrupt_after_s=interrupt_after_s,
            auto_terminate=record.auto_terminate,
            terminate_after_s=record.auto_terminate_delay_s,
            confirm_end=engine.confirms_end if engine else False,
            recheck_s=RECHECK_S,
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
            if token in self._pending_tokens:
                raise StoreUnavailable(
                    "the task of this callback URL is being registered; retry",
                    code="task_registering",
                )
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
                if live.stopping and caption.state is TaskState.TERMINATED:
                    inp, reason = TaskInput.STOPPED, "stopped"  # the end relay asked for
                else:
                    inp, reason = _END_INPUT[caption.state], caption.reason
                await self._apply(live, live.life.end(inp, reason, now), now)
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
        if live.life.ended and not live.ended.is_set():
            live.ended.set()
            self._live.pop(live.record.task_id, None)
            if self._stream_tasks.get(live.record.stream_id) == live.record.task_id:
                del self._stream_tasks[live.record.stream_id]
            engine = self._engine_of(live.record)
            if engine is not None:
                # relay ended it (auto-terminate, stop) or the engine did: free the engine's
                # side too, without holding up whoever ended it.
                self._spawn(self._release(engine, live.record, stop=not live.stopping))

    # --- timers ---------------------------------------------------------------------

    async def run(self) -> None:
        """Tick every task's timers until cancelled; own the background work."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                while True:
                    await asyncio.sleep(TICK_S)
                    await self.tick()
            finally:
                self._group = None

    async def tick(self) -> None:
        now = self._clock()
        for live in list(self._live.values()):
            check = live.life.next_check()
            # One question at a time per task; the answer may take a while.
            if check is not None and check <= now and live.record.task_id not in self._checking:
                self._checking.add(live.record.task_id)  # _confirm discards it
                self._spawn(self._confirm(live))
            deadline = live.life.next_deadline()
            if deadline is None or deadline > now:
                continue
            async with live.lock:
                await self._apply(live, live.life.tick(now), now)

    async def _confirm(self, live: _Live) -> None:
        """Ask the cloud whether a quiet task still runs; an ended one is terminated."""
        record = live.record
        engine = self._engine_of(record)
        assert engine is not None  # only cloud engines' tasks have checks
        try:
            try:
                running: bool | None = await engine.is_running(record.task_id)
            except CloudError as exc:
                log.warning(
                    "task.check_failed",
                    stream_id=record.stream_id,
                    task_id=record.task_id,
                    code=exc.code,
                )
                running = None
            log.info(
                "task.checked", stream_id=record.stream_id, task_id=record.task_id, running=running
            )
            async with live.lock:
                now = self._clock()
                await self._apply(live, live.life.checked(running, now), now)
        finally:
            self._checking.discard(record.task_id)

    async def _release(self, engine: Engine, record: TaskRecord, *, stop: bool) -> None:
        """Stop (unless already asked) and release the engine's task; log what fails."""
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                if stop:
                    await engine.stop(record.task_id)
                await engine.release(record.task_id)
        except (CloudError, TimeoutError) as exc:
            # The task has ended for viewers either way; ops see what is left on the cloud.
            log.warning(
                "task.release_failed",
                stream_id=record.stream_id,
                task_id=record.task_id,
                error=getattr(exc, "code", "timeout"),
            )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._group is None:  # not running (shutting down): nobody would await it
            work.close()
            return
        task = self._group.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- start-up and shutdown ----------------------------------------------------

    async def resume(self) -> int:
        """Take over the live tasks the store holds (left by a stop with ``keep``)."""
        resumed = 0
        for stream in await self._store.list_streams():
            record = stream.task
            if record is None or record.state.ended or record.task_id in self._live:
                continue
            self._track(self._new_live(record))
            resumed += 1
            log.info("task.resumed", stream_id=record.stream_id, task_id=record.task_id)
        return resumed

    async def shutdown(self, *, keep_cloud_tasks: bool, timeout_s: float) -> None:
        """Before relay exits: stop every task relay runs on a cloud, or leave them running
        (``keep_cloud_tasks``) for the next start to resume from the store.

        Bounded by ``timeout_s``: what has not stopped by then is logged and left running.
        """
        try:
            async with asyncio.timeout(timeout_s):
                await self._shutdown(keep_cloud_tasks)
        except TimeoutError:
            left = [live.record.task_id for live in self._live.values()]
            log.warning("relay.shutdown_timeout", phase="cloud tasks", tasks_left=left)

    async def _shutdown(self, keep_cloud_tasks: bool) -> None:
        stopping = []
        for live in list(self._live.values()):
            engine = self._engine_of(live.record)
            if engine is None or not engine.confirms_end:
                continue  # in-process engines end with the process
            if keep_cloud_tasks:
                log.info("task.kept", stream_id=live.record.stream_id, task_id=live.record.task_id)
            else:
                stopping.append(live.record.stream_id)
        async with asyncio.TaskGroup() as group:
            for stream_id in stopping:
                group.create_task(self._stop_quietly(stream_id))
        if self._background:  # the cloud-side deletes those stops started
            await asyncio.wait(self._background)

    async def _stop_quietly(self, stream_id: str) -> None:
        try:
            await self.stop_stream(stream_id)
        except RelayError as exc:
            log.warning("task.stop_failed", stream_id=stream_id, code=exc.code)

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
