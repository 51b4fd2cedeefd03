"""The emulator object: the task table, the local engine, the per-task runs; start and stop.

:meth:`AliyunLiveEmulator.running` starts, in order, a client session for callbacks, the
local engine, a task group for the runs and the HTTP server, and cleans up in reverse. The
four API actions are plain methods (:meth:`create`, :meth:`query`, :meth:`stop`,
:meth:`delete`) raising :class:`~relay.emulators.signing.PopError`; ``server.py`` is only
the HTTP around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import aiohttp
import structlog

from relay.core.events import RecognizerEvent
from relay.emulators.aliyun_live import nls
from relay.emulators.aliyun_live.delivery import CallbackSender, DeliveryConfig
from relay.emulators.aliyun_live.faults import FaultPlan, Faults
from relay.emulators.aliyun_live.runner import TaskRun
from relay.emulators.aliyun_live.tasks import CreateParams, Op, Status, Task, TaskTable
from relay.emulators.signing import PopError
from relay.engines.base import TaskSpec
from relay.engines.local.engine import STATUS_SOURCE_FAILED, LocalEngine, LocalEngineConfig
from relay.engines.local.recognizer import Recognizer
from relay.engines.local.source import default_ffmpeg
from relay.errors import InvalidRequest
from relay.metrics import Metrics

log = structlog.get_logger("relay.emulators.aliyun_live")

# The documented development pair (docs/emulator-aliyun-live.md): never a real credential.
DEV_ACCESS_KEY_ID = "LTAIrelayEmulatorDev"
DEV_ACCESS_KEY_SECRET = "relay-emulator-dev-secret"  # noqa: S105 (a public dev value)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer the next ``times`` calls of an action with this error (fault injection)."""

    code: str
    status: int = 400
    times: int = 1
    message: str = "Refused by the emulator (fault injection)."


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    access_key_id: str = DEV_ACCESS_KEY_ID
    access_key_secret: str = field(default=DEV_ACCESS_KEY_SECRET, repr=False)
    recognizer: Recognizer | None = None  # share one already loaded; None: build our own
    ffmpeg: str | None = None  # None: the packaged one
    preload: bool = True  # load the model at start (only when something will transcribe)
    rtc_sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    faults: Faults = field(default_factory=Faults)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    rate_per_s: float = 20.0  # the documented QPS limit per action per account
    max_skew_s: float = 15 * 60
    reconnect_window_s: float = 10.0  # network source lost, no auto-terminate: retry this long
    stop_grace_s: float = 3.0  # StopRtcAsrTask: time to turn what was said into finals
    clock: Callable[[], float] = time.time


class AliyunLiveEmulator:
    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.table = TaskTable()
        self.faults = self.config.faults
        self.refusals: dict[str, Refusal] = {}
        self._runs: dict[str, TaskRun] = {}
        self._numbers = itertools.count()
        self._engine: LocalEngine | None = None
        self._session: aiohttp.ClientSession | None = None
        self._group: asyncio.TaskGroup | None = None
        self._background: set[asyncio.Task[None]] = set()

    # --- lifecycle ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
        """Serve on ``host:port`` (0: a free port) and yield the bound port."""
        from relay.emulators.aliyun_live.server import serve  # the HTTP side needs us first

        config = self.config
        own = config.recognizer is None
        recognizer = config.recognizer if config.recognizer is not None else Recognizer()
        engine_config = LocalEngineConfig(
            ffmpeg=config.ffmpeg or default_ffmpeg(),
            reconnect_window_s=config.reconnect_window_s,
            stop_grace_s=config.stop_grace_s,
            preload=config.preload,
        )
        engine = LocalEngine(recognizer, engine_config, Metrics(), clock=config.clock)
        try:
            async with (
                aiohttp.ClientSession() as session,
                engine.running(),
                asyncio.TaskGroup() as group,
            ):
                self._session, self._engine, self._group = session, engine, group
                try:
                    async with serve(self, host, port) as bound:
                        log.info("emulator.listening", host=host, port=bound)
                        yield bound
                finally:
                    self._group = None
                    for task in self._background:
                        task.cancel()
        finally:
            self._session = self._engine = None
            self._runs.clear()
            if own:
                recognizer.close()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._group is None:
            coro.close()
            raise RuntimeError("the emulator is not running")
        task = self._group.create_task(_guarded(coro, name), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- faults -------------------------------------------------------------------------

    def set_faults(self, faults: Faults) -> None:
        """Apply to every callback from now on, running tasks included."""
        self.faults = faults
        for run in self._runs.values():
            run.plan.configure(faults)

    def refuse(self, action: str, refusal: Refusal | None) -> None:
        if refusal is None or refusal.times <= 0:
            self.refusals.pop(action, None)
        else:
            self.refusals[action] = refusal

    def take_refusal(self, action: str) -> Refusal | None:
        refusal = self.refusals.get(action)
        if refusal is not None:
            left = refusal.times - 1
            self.refuse(action, Refusal(refusal.code, refusal.status, left, refusal.message))
        return refusal

    # --- the API actions ----------------------------------------------------------------

    async def create(self, params: CreateParams) -> Task:
        if self._session is None or self._engine is None:
            raise RuntimeError("the emulator is not running")
        now = self.config.clock()
        task = self.table.create(params, now)
        ctx = nls.TaskContext(
            task_id=task.task_id,
            language=params.language,
            nls_task_id=secrets.token_hex(16),
            task_key=f"tl_{task.ali_uid}_{int(now * 1000)}",
            sdk_app_id=params.sdk_app_id,
            channel_id=params.channel_id,
            rtc_user_id=params.rtc_user_id,
        )
        sender = CallbackSender(
            self._session,
            params.callback_url,
            params.auth_key,
            self.config.delivery,
            clock=self.config.clock,
        )
        run = TaskRun(
            ctx,
            params,
            sender,
            FaultPlan.seeded(self.faults, next(self._numbers)),
            on_interrupted=self._interrupted,
            on_ended=self._ended,
            clock=self.config.clock,
        )
        self._runs[task.task_id] = run
        self._spawn(run.run(), f"asr:{task.task_id}")
        log.info("task.created", task_id=task.task_id, mode=params.mode, language=params.language)
        url = (
            params.stream_url
            if params.mode == "live"
            else self.config.rtc_sources.get(params.channel_id)
        )
        if url:
            await self._start_engine(run, url)
        return task

    async def _start_engine(self, run: TaskRun, url: str) -> None:
        assert self._engine is not None
        p = run.params
        spec = TaskSpec(
            stream_id=run.task_id,
            source={"url": url, "realtime": url.startswith("file:")},
            language=p.language,
            callback_url=p.callback_url,
            auth_key=p.auth_key,
            translate=p.target_languages,
            auto_terminate=p.auto_terminate_enabled,
            auto_terminate_delay_s=p.auto_terminate_delay_s,
            report_interval_ms=p.report_interval_ms,
        )
        try:
            run.engine_task_id = await self._engine.start(spec, run)
        except InvalidRequest as exc:  # unreadable before any audio: the cloud's TaskFailed
            run.fail(STATUS_SOURCE_FAILED, exc.message)

    def query(self, task_id: str | None) -> dict[str, dict[str, Any]]:
        return self.table.query(task_id)

    def stop(self, task_id: str) -> None:
        before, _ = self.table.apply(task_id, Op.STOP, self.config.clock())
        if before.status is Status.RUNNING:
            self._stop_run(task_id)

    def delete(self, task_id: str) -> None:
        before, _ = self.table.apply(task_id, Op.DELETE, self.config.clock())
        if before.status is Status.RUNNING:
            self._stop_run(task_id)
        self._runs.pop(task_id, None)

    def _stop_run(self, task_id: str) -> None:
        run = self._runs.get(task_id)
        if run is not None:
            self._spawn(self._finish(run), f"asr-stop:{task_id}")

    async def _finish(self, run: TaskRun) -> None:
        if run.engine_task_id is not None and self._engine is not None:
            await self._engine.stop(run.engine_task_id)  # its last finals reach the run first
        run.finish()

    # --- what runs report ---------------------------------------------------------------

    def _interrupted(self, run: TaskRun, since: float) -> None:
        if run.params.auto_terminate_enabled:
            self._spawn(
                self._auto_terminate(run, since + run.params.auto_terminate_delay_s),
                f"asr-auto-terminate:{run.task_id}",
            )

    async def _auto_terminate(self, run: TaskRun, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.config.clock()))
        if run.interrupted_since is None:
            return  # audio came back
        log.info("task.auto_terminated", task_id=run.task_id)
        run.terminate()

    def _ended(self, run: TaskRun) -> None:
        """A run ended (failure, auto-terminate, stop): the table shows status 2."""
        with contextlib.suppress(PopError):  # already deleted
            self.table.apply(run.task_id, Op.TERMINATE, self.config.clock())

    # --- debugging and scripting --------------------------------------------------------

    def inject(self, task_id: str, events: list[RecognizerEvent]) -> None:
        """Feed scripted recognizer events to a running task, as if it had heard them."""
        task = self.table.get(task_id)
        run = self._runs.get(task_id)
        if run is None or task.status is not Status.RUNNING:
            raise PopError("InvalidParameter", f"task {task_id} is not running")
        run.inject(events)

    def snapshot_of(self, task_id: str) -> dict[str, Any]:
        """:meth:`snapshot` of one task; PopError ConfigNotFound once it is deleted."""
        self.table.get(task_id)
        return next(t for t in self.snapshot() if t["taskId"] == task_id)

    def snapshot(self) -> list[dict[str, Any]]:
        shown = []
        for task in self.table.all():
            run = self._runs.get(task.task_id)
            p = task.params
            shown.append(
                {
                    **task.shape(),
                    "translateEnabled": p.translate_enabled,
                    "targetLanguages": list(p.target_languages),
                    "autoTerminateEnabled": p.auto_terminate_enabled,
                    "channelId": p.channel_id,
                    "signed": bool(p.auth_key),  # never the key itself
                    "run": run.snapshot() if run is not None else None,
                }
            )
        return shown


async def _guarded(coro: Coroutine[Any, Any, None], name: str) -> None:
    """One task's bug is logged and ends that task only, never the emulator."""
    try:
        await coro
    except Exception:
        log.exception("emulator.task_crashed", task=name)
