"""The embedded engine: ffmpeg audio -> faster-whisper hypotheses -> streaming policy -> events.

Per stream, two tasks share a rolling audio window:

* the **reader** pulls 16 kHz PCM from ffmpeg as it comes (never waiting on the model), tells
  the sink that audio is alive, and reconnects with backoff when a network source drops;
* the **stepper** wakes every ``step_s`` of new audio, asks the VAD whether anything was said,
  transcribes the window if so (on the recognizer's thread pool, shared by all streams), feeds
  the hypothesis to the pure :class:`~relay.core.streaming.StreamingPolicy`, and sends the
  events it returns. Each step covers all audio up to now, so when the machine falls behind a
  step simply covers more: latency stays bounded instead of queueing.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
import structlog
from structlog.contextvars import bound_contextvars

from relay.core.events import (
    RecognizerEvent,
    ResultChanged,
    SentenceEnd,
    TaskFailed,
    TranscriptionCompleted,
)
from relay.core.streaming import StreamingPolicy
from relay.engines.base import TaskSink, TaskSpec
from relay.engines.local.recognizer import Recognizer
from relay.engines.local.source import (
    NETWORK_SCHEMES,
    SAMPLE_RATE,
    FfmpegSource,
    SourceError,
    SourceSpec,
)
from relay.engines.local.vad import SpeechDetector
from relay.errors import InvalidRequest
from relay.metrics import Metrics

log = structlog.get_logger("relay.engines.local")

# NLS-style status codes for the TaskFailed events this engine emits.
STATUS_SOURCE_FAILED = 41050001
STATUS_INTERNAL = 51050001


@dataclass(frozen=True, slots=True)
class LocalEngineConfig:
    ffmpeg: str
    step_s: float = 0.5
    reconnect_window_s: float = 10.0  # without auto-terminate: how long to retry a lost source
    alive_every_s: float = 0.5
    stop_grace_s: float = 3.0  # on stop: time to turn what was said into finals
    preload: bool = True  # load the model when the engine starts, not on first use


@dataclass(slots=True)
class _Window:
    """The audio not yet committed, and when each piece of it arrived."""

    start: float = 0.0  # stream time of samples[0]
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # (stream time at the end of a chunk, wall time it was read): audio time -> arrival
    arrivals: list[tuple[float, float]] = field(default_factory=list)
    ended: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def end(self) -> float:
        return self.start + len(self.samples) / SAMPLE_RATE

    def append(self, pcm: bytes, wall: float) -> None:
        chunk = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0
        self.samples = np.concatenate((self.samples, chunk))
        self.arrivals.append((self.end, wall))
        self.changed.set()

    def trim(self, before: float) -> None:
        drop = round((before - self.start) * SAMPLE_RATE)
        if drop > 0:
            drop = min(drop, len(self.samples))
            self.samples = self.samples[drop:]
            self.start += drop / SAMPLE_RATE
            keep = bisect.bisect_left(self.arrivals, (self.start, 0.0))
            del self.arrivals[: max(0, keep - 1)]

    def arrived_at(self, audio_time: float) -> float | None:
        i = bisect.bisect_left(self.arrivals, (audio_time, 0.0))
        return self.arrivals[i][1] if i < len(self.arrivals) else None


class LocalEngine:
    name = "local"
    interrupt_after_s: float | None = 3.0  # audio flows continuously; a 3 s gap is an outage
    confirms_end = False  # relay sees every end: it owns the task
    stop_grace_s = 0.0  # stop() itself waits until what was said is final

    def __init__(
        self,
        recognizer: Recognizer,
        config: LocalEngineConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Read by each stream's run (below); set once.
        self.recognizer = recognizer
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self._group: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[str, _StreamRun] = {}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Own the per-stream tasks: they live inside this context and end with it."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            if self.config.preload:
                group.create_task(self.recognizer.load())
            try:
                yield
            finally:
                self._group = None
                for task in self._tasks.values():
                    task.cancel()

    async def ready(self) -> None:
        if not self.recognizer.loaded:
            raise OSError("speech model not loaded yet")

    async def start(self, spec: TaskSpec, sink: TaskSink) -> str:
        url = spec.source.get("url")
        if not isinstance(url, str):
            raise InvalidRequest("source.url is required for engine 'local'")
        source = SourceSpec(url=url, realtime=bool(spec.source.get("realtime", False)))
        try:
            FfmpegSource(source, ffmpeg_exe=self.config.ffmpeg)  # validates the URL now
        except SourceError as exc:
            raise InvalidRequest(f"source.url: {exc}") from None
        if self._group is None:
            raise RuntimeError("LocalEngine.start() outside running()")
        task_id = f"local-{uuid.uuid4()}"
        run = _StreamRun(task_id, spec, source, sink, self)
        task = self._group.create_task(run.run(), name=f"local:{spec.stream_id}")
        self._tasks[task_id], self._runs[task_id] = task, run

        def forget(_: object) -> None:
            self._tasks.pop(task_id, None)
            self._runs.pop(task_id, None)

        task.add_done_callback(forget)
        return task_id

    async def stop(self, task_id: str) -> None:
        """Stop reading, let the stepper finalize what was said, then end the task.

        What the speaker said before the stop still becomes finals (within
        ``stop_grace_s``); nothing more is read.
        """
        task, run = self._tasks.get(task_id), self._runs.get(task_id)
        if task is None or run is None:
            return
        run.request_stop()
        try:
            async with asyncio.timeout(self.config.stop_grace_s):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            # wait(), not `await task`: the run's CancelledError is expected and stays in the
            # task, while a cancellation of our caller still propagates.
            await asyncio.wait([task])

    async def release(self, task_id: str) -> None:
        await self.stop(task_id)  # a task relay ended by its timer still reads its source

    async def is_running(self, task_id: str) -> bool:
        return task_id in self._tasks


class _StreamRun:
    def __init__(
        self, task_id: str, spec: TaskSpec, source: SourceSpec, sink: TaskSink, engine: LocalEngine
    ) -> None:
        self.task_id = task_id
        self.spec = spec
        self.source = source
        self.sink = sink
        self.engine = engine
        self.window = _Window()
        self.policy = StreamingPolicy()
        self.vad = SpeechDetector()
        self.failure: str | None = None
        self.stopping = False
        self._reader: asyncio.Task[None] | None = None

    def request_stop(self) -> None:
        self.stopping = True
        if self._reader is not None:
            self._reader.cancel()  # its finally marks the window ended: the stepper finishes

    async def run(self) -> None:
        with bound_contextvars(stream_id=self.spec.stream_id, task_id=self.task_id):
            log.info("local.started", url=self.source.url, realtime=self.source.realtime)
            crash: BaseException | None = None
            try:
                async with asyncio.TaskGroup() as group:
                    self._reader = group.create_task(self._read())
                    group.create_task(self._step())
            except* Exception as errors:  # never let one stream take the engine down
                crash = errors.exceptions[0]
            if crash is not None:
                log.error("local.crashed", exc_info=crash)
                await self._emit([TaskFailed(STATUS_INTERNAL, f"internal error: {crash!r}")])
            elif self.stopping:
                pass  # stopped from outside, which records the end itself
            elif self.failure is not None:
                await self._emit([TaskFailed(STATUS_SOURCE_FAILED, self.failure)])
            else:
                await self._emit([TranscriptionCompleted()])
            log.info("local.ended", failure=self.failure)

    # --- reader -----------------------------------------------------------------------

    async def _read(self) -> None:
        config = self.engine.config
        network = self.source.url.split(":", 1)[0] in NETWORK_SCHEMES
        window_s = (
            self.spec.auto_terminate_delay_s
            if self.spec.auto_terminate
            else config.reconnect_window_s
        )
        backoff = 0.25
        lost_at: float | None = None
        try:
            while True:
                got_audio, reason = await self._read_once()
                if got_audio:
                    lost_at, backoff = None, 0.25
                if not network:  # a file: its end completes the task, an error fails it
                    self.failure = reason
                    return
                now = time.monotonic()
                lost_at = lost_at or now
                if now - lost_at >= window_s:
                    self.failure = reason or "source ended and did not come back"
                    return
                log.warning("local.source_lost", reason=reason, retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        finally:
            self.window.ended = True
            self.window.changed.set()

    async def _read_once(self) -> tuple[bool, str | None]:
        """Read until ffmpeg stops. Return (any audio read, failure reason or None)."""
        config = self.engine.config
        got_audio = False
        last_alive = 0.0
        try:
            async with FfmpegSource(self.source, ffmpeg_exe=config.ffmpeg) as ffmpeg:
                async for pcm in ffmpeg.chunks():
                    got_audio = True
                    wall = self.engine.clock()
                    self.window.append(pcm, wall)
                    if wall - last_alive >= config.alive_every_s:
                        last_alive = wall
                        await self.sink.alive()
                code = await ffmpeg.wait()
                if code != 0:
                    tail = ffmpeg.stderr_tail[-1] if ffmpeg.stderr_tail else "no output"
                    return got_audio, f"ffmpeg exited with {code}: {tail}"
        except SourceError as exc:
            return got_audio, str(exc)
        return got_audio, None

    # --- stepper ----------------------------------------------------------------------

    async def _step(self) -> None:
        window, policy = self.window, self.policy
        step_s = self.engine.config.step_s
        stepped_to = 0.0
        while True:
            while not window.ended and window.end - stepped_to < step_s:
                window.changed.clear()
                await window.changed.wait()
            end = window.end
            if end > stepped_to:
                await self._advance(stepped_to, end)
                stepped_to = end
            if window.ended:
                await self._emit(policy.finish(end))
                return

    async def _advance(self, since: float, end: float) -> None:
        """One step: the audio up to ``end`` is in the window; ``since`` was seen before."""
        window, policy = self.window, self.policy
        offset = window.start
        audio = window.samples[: round((end - offset) * SAMPLE_RATE)]
        new_from = max(0, round((since - offset) * SAMPLE_RATE))
        speech = await asyncio.to_thread(self.vad.speech_spans, audio[new_from:], since)
        events: list[RecognizerEvent] = []
        if speech or self.vad.speaking:
            hyp = await self.engine.recognizer.transcribe(
                audio, offset_s=offset, prompt=policy.prompt
            )
            events += policy.receive(hyp)
        else:
            self.engine.metrics.local_steps_skipped.inc()
        silent_from = self.vad.silent_since
        if silent_from is not None and silent_from < end:
            events += policy.silence(silent_from, end)
        log.debug(
            "local.step",
            since=since,
            end=end,
            window_start=offset,
            speech=bool(speech),
            events=len(events),
        )
        await self._emit(events)
        window.trim(policy.window_start)

    async def _emit(self, events: list[RecognizerEvent]) -> None:
        now = self.engine.clock()
        for event in events:
            if isinstance(event, ResultChanged | SentenceEnd):
                arrived = self.window.arrived_at(event.time_ms / 1000)
                if arrived is not None:
                    kind = "partial" if isinstance(event, ResultChanged) else "final"
                    self.sink.latency(kind, max(0.0, now - arrived))
            await self.sink.event(event)
