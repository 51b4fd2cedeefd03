"""One emulated task at run time: engine events -> ReportInterval -> faults -> sender.

:class:`TaskRun` is the local engine's :class:`~relay.engines.base.TaskSink`. It turns the
engine's view (a file that ended, a source that failed) into the cloud's [U, our model]:

* the first audio sends ``TranscriptionStarted``;
* the source ending or being lost makes the stream *interrupted*: nothing is sent, and
  ``on_interrupted`` tells the owner (which auto-terminates, silently, if asked to);
* a source that fails before any audio sends ``TaskFailed`` and ends the task;
* :meth:`finish` (StopRtcAsrTask) sends what is left, then ``TranscriptionCompleted``.

With TranslateEnabled every ``SentenceEnd`` gets a pseudo-translation per target language.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from relay.core.events import (
    RecognizerEvent,
    SentenceEnd,
    TaskFailed,
    TranscriptionCompleted,
    TranscriptionStarted,
)
from relay.emulators.aliyun_live import nls
from relay.emulators.aliyun_live.delivery import CallbackSender, Outgoing
from relay.emulators.aliyun_live.faults import Batch, FaultPlan
from relay.emulators.aliyun_live.report import ReportPolicy
from relay.emulators.aliyun_live.tasks import CreateParams
from relay.engines.local.engine import STATUS_INTERNAL, STATUS_SOURCE_FAILED

log = structlog.get_logger("relay.emulators.aliyun_live")

IDLE_FLUSH_S = 1.0  # a burst or reorder hold is released after this long without callbacks


@dataclass(frozen=True, slots=True)
class _End:
    """Inbox marker: no more events; send ``terminal`` (if any) last."""

    terminal: RecognizerEvent | None


class TaskRun:
    def __init__(
        self,
        ctx: nls.TaskContext,
        params: CreateParams,
        sender: CallbackSender,
        plan: FaultPlan[Outgoing],
        *,
        on_interrupted: Callable[[TaskRun, float], None],
        on_ended: Callable[[TaskRun], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx = ctx
        self.params = params
        self.sender = sender
        self.plan = plan
        self.policy = ReportPolicy(params.report_interval_ms)
        self.engine_task_id: str | None = None
        self.audio_seen = False
        self.last_audio_at: float | None = None
        self.interrupted_since: float | None = None
        self.events_in = 0
        self.callbacks = 0
        # Every sentence sent, before faults: what a receiver must end up with, once each.
        self.sentences: list[dict[str, Any]] = []
        self._on_interrupted = on_interrupted
        self._on_ended = on_ended
        self._clock = clock
        self._inbox: asyncio.Queue[RecognizerEvent | _End] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._ended = False

    @property
    def task_id(self) -> str:
        return self.ctx.task_id

    # --- TaskSink (called by the local engine) -------------------------------------------

    async def event(self, event: RecognizerEvent) -> None:
        if self._ended:
            return
        if isinstance(event, TranscriptionCompleted):
            self._interrupted("source ended")
        elif isinstance(event, TaskFailed):
            if event.status == STATUS_SOURCE_FAILED and self.audio_seen:
                self._interrupted(event.reason)
            else:
                self.fail(event.status, event.reason)
        else:
            self._inbox.put_nowait(event)

    async def alive(self) -> None:
        now = self._clock()
        if not self.audio_seen:
            self.audio_seen = True
            self._inbox.put_nowait(TranscriptionStarted())
        self.last_audio_at, self.interrupted_since = now, None

    def latency(self, kind: str, seconds: float) -> None:
        pass  # the cloud reports no latency; relay measures its own

    # --- control ------------------------------------------------------------------------

    def inject(self, events: list[RecognizerEvent]) -> None:
        """Scripted events (admin API), as if the recognizer had produced them."""
        for event in events:
            self._inbox.put_nowait(event)

    def fail(self, status: int, reason: str) -> None:
        log.warning("task.failed", task_id=self.task_id, status=status, reason=reason)
        self._end(TaskFailed(status or STATUS_INTERNAL, reason))

    def finish(self) -> None:
        """StopRtcAsrTask: what is queued goes out, then TranscriptionCompleted."""
        self._end(TranscriptionCompleted())

    def terminate(self) -> None:
        """Auto-terminate: what is queued goes out; no callback announces the end."""
        self._end(None)

    def _end(self, terminal: RecognizerEvent | None) -> None:
        if not self._ended:
            self._ended = True
            self._inbox.put_nowait(_End(terminal))
            self._on_ended(self)

    def _interrupted(self, reason: str) -> None:
        since = self.last_audio_at if self.last_audio_at is not None else self._clock()
        self.interrupted_since = since
        log.info("task.interrupted", task_id=self.task_id, reason=reason)
        self._on_interrupted(self, since)

    # --- the pump -----------------------------------------------------------------------

    async def run(self) -> None:
        """Move events to the sender until the task ends and every callback is sent."""
        with bound_contextvars(task_id=self.task_id):
            async with asyncio.TaskGroup() as group:
                group.create_task(self.sender.run())
                await self._pump()
            log.info("task.callbacks_done", callbacks=self.callbacks, **self.sender.stats.as_json())

    async def _pump(self) -> None:
        last_callback = self._clock()
        while True:
            wakes = [self.policy.wake_at()]
            if self.plan.holding:
                wakes.append(last_callback + IDLE_FLUSH_S)
            wake = min((w for w in wakes if w is not None), default=None)
            try:
                async with asyncio.timeout(
                    None if wake is None else max(0.0, wake - self._clock())
                ):
                    item = await self._inbox.get()
            except TimeoutError:
                now = self._clock()
                self._send(self.policy.due(now))
                if self.plan.holding and now - last_callback >= IDLE_FLUSH_S:
                    self._release(self.plan.flush())
                continue
            last_callback = self._clock()
            if isinstance(item, _End):
                if item.terminal is not None:
                    self._send(self.policy.offer(item.terminal, last_callback))
                else:
                    self._send(self.policy.flush())
                self._release(self.plan.flush())
                self.sender.close()
                return
            self.events_in += 1
            self._send(self.policy.offer(self._translated(item), last_callback))

    def _translated(self, event: RecognizerEvent) -> RecognizerEvent:
        p = self.params
        if isinstance(event, SentenceEnd) and p.translate_enabled and not event.translations:
            return replace(event, translations=nls.pseudo_translate(event.text, p.target_languages))
        return event

    def _send(self, events: list[RecognizerEvent]) -> None:
        now = self._clock()
        for event in events:
            msg_id = nls.message_id(self.ctx, next(self._ids))
            body = nls.encode(event, self.ctx, msg_id=msg_id, now_ms=int(now * 1000))
            terminal = isinstance(event, TranscriptionCompleted | TaskFailed)
            if isinstance(event, SentenceEnd):
                self.sentences.append({"index": event.index, "text": event.text})
            out = Outgoing(body, msg_id, type(event).__name__)
            self.callbacks += 1
            self._release(self.plan.offer(out, terminal=terminal))

    def _release(self, batches: list[Batch[Outgoing]]) -> None:
        delay_s = self.plan.faults.delay_ms / 1000
        for batch in batches:
            self.sender.put(batch, self._clock() + delay_s)

    def snapshot(self) -> dict[str, Any]:
        return {
            "audio_seen": self.audio_seen,
            "interrupted_since": self.interrupted_since,
            "events_in": self.events_in,
            "callbacks": self.callbacks,
            "sentences": list(self.sentences),
            "delivery": {**self.sender.stats.as_json(), "reordered": self.plan.reordered},
        }
