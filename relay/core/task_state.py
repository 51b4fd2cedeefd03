"""The life of one caption task: its states, the table of transitions, and its timers.

Everything that decides how a task changes state lives in this file (as h11's ``_state.py``
does for HTTP). ``TRANSITIONS`` is the only authority on which changes are legal;
:func:`next_state` reads it and raises :class:`InvalidTransition` for anything else.

::

    starting --activity--> running <--activity-- interrupted --auto_terminate--> terminated
       |                      |                      ^
       +-------silence--------+-------silence--------+
    any state not ended --completed / stopped--> terminated,  --failed--> failed
    interrupted --cloud_ended--> terminated   (a cloud engine confirmed the task is gone)

A cloud task is not ended by relay's own timer: relay cannot know whether the cloud still
runs it. With ``confirm_end`` the timer only says when to ask (:meth:`TaskLife.next_check`);
the caller asks the cloud and reports the answer with :meth:`TaskLife.checked`.

:class:`TaskLife` drives that table from the timers of one task. It is pure: no clock, no
I/O. Every call takes the time as ``now`` (seconds, any monotonic origin) and returns the
:class:`Transition` objects it made, oldest first, for the caller to log, count and
publish. Between calls the caller sleeps until :meth:`TaskLife.next_deadline` (or until
the next result arrives) and then calls :meth:`TaskLife.tick` (or
:meth:`TaskLife.activity`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from relay.core.events import TaskState

__all__ = [
    "END_INPUTS",
    "TRANSITIONS",
    "InvalidTransition",
    "TaskInput",
    "TaskLife",
    "Transition",
    "next_state",
]


class TaskInput(StrEnum):
    """What can happen to a task."""

    ACTIVITY = "activity"  # a result or audio arrived
    SILENCE = "silence"  # nothing for longer than expected
    AUTO_TERMINATE = "auto_terminate"  # interrupted for the auto-terminate delay
    COMPLETED = "completed"  # recognizer says transcription completed / end of input
    FAILED = "failed"  # recognizer or engine failed
    STOPPED = "stopped"  # ops stopped it (DELETE) or the stream unpublished
    CLOUD_ENDED = "cloud_ended"  # asked while interrupted, the cloud says the task is gone


_S = TaskState
_I = TaskInput

#: Every legal ``(state, input) -> new state``. A pair that is missing is illegal.
#: ``(running, activity) -> running`` is a self-loop: legal, but not a change of state.
TRANSITIONS: Mapping[tuple[TaskState, TaskInput], TaskState] = MappingProxyType(
    {
        (_S.STARTING, _I.ACTIVITY): _S.RUNNING,
        (_S.STARTING, _I.SILENCE): _S.INTERRUPTED,
        (_S.STARTING, _I.COMPLETED): _S.TERMINATED,
        (_S.STARTING, _I.STOPPED): _S.TERMINATED,
        (_S.STARTING, _I.FAILED): _S.FAILED,
        (_S.RUNNING, _I.ACTIVITY): _S.RUNNING,
        (_S.RUNNING, _I.SILENCE): _S.INTERRUPTED,
        (_S.RUNNING, _I.COMPLETED): _S.TERMINATED,
        (_S.RUNNING, _I.STOPPED): _S.TERMINATED,
        (_S.RUNNING, _I.FAILED): _S.FAILED,
        (_S.INTERRUPTED, _I.ACTIVITY): _S.RUNNING,
        (_S.INTERRUPTED, _I.AUTO_TERMINATE): _S.TERMINATED,
        (_S.INTERRUPTED, _I.COMPLETED): _S.TERMINATED,
        (_S.INTERRUPTED, _I.STOPPED): _S.TERMINATED,
        (_S.INTERRUPTED, _I.FAILED): _S.FAILED,
        (_S.INTERRUPTED, _I.CLOUD_ENDED): _S.TERMINATED,
        # terminated and failed are final: no entries.
    }
)

#: The inputs :meth:`TaskLife.end` accepts.
END_INPUTS: frozenset[TaskInput] = frozenset({_I.COMPLETED, _I.FAILED, _I.STOPPED})

# Reasons TaskLife gives to the transitions it makes by itself.
_REASON_ACTIVITY = "activity"
_REASON_NO_ACTIVITY = "no_activity"
_REASON_AUTO_TERMINATE = "auto_terminate"
_REASON_ENDED_BY_CLOUD = "ended_by_cloud"


class InvalidTransition(ValueError):
    """``inp`` is not legal in ``state`` (the pair is not in :data:`TRANSITIONS`)."""

    def __init__(self, state: TaskState, inp: TaskInput) -> None:
        self.state = state
        self.input = inp
        final = " (a final state)" if state.ended else ""
        super().__init__(f"task state {state.value!r}{final} has no transition on {inp.value!r}")


def next_state(state: TaskState, inp: TaskInput) -> TaskState:
    """Return the state that ``inp`` leads to from ``state``.

    Raises :class:`InvalidTransition` if the pair is not in :data:`TRANSITIONS`. A
    self-loop returns ``state`` itself.
    """
    try:
        return TRANSITIONS[(state, inp)]
    except KeyError:
        raise InvalidTransition(state, inp) from None


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of state: ``old -> new`` because of ``reason``, at time ``at``."""

    old: TaskState
    new: TaskState
    reason: str
    at: float


def _check_time(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _check_delay(name: str, value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return value


class TaskLife:
    """The state and timers of one task, fed with the time.

    * A task that is ``starting`` or ``running`` and has had no activity for more than
      ``interrupt_after_s`` (since its last activity, or since creation if none) becomes
      ``interrupted`` (reason ``"no_activity"``).
    * With ``auto_terminate``, a task ``interrupted`` for ``terminate_after_s`` or more
      becomes ``terminated`` (reason ``"auto_terminate"``).
    * Activity moves a ``starting`` or ``interrupted`` task to ``running``.
    * :meth:`end` moves any task that has not ended to ``terminated`` or ``failed``.
      ``terminated`` and ``failed`` are final: every later call returns ``[]``.
    * With ``confirm_end`` (cloud tasks) an ``interrupted`` task is never terminated by the
      timer. Instead :meth:`next_check` gives the time to ask the cloud: ``terminate_after_s``
      after the interruption with ``auto_terminate``, else ``recheck_s`` after it, and
      ``recheck_s`` after every answer that the task still runs. :meth:`checked` takes the
      answer; "gone" terminates the task (reason ``"auto_terminate"`` with auto-terminate,
      ``"ended_by_cloud"`` without).

    Calling contract: every method takes ``now``; each first applies the deadlines that
    passed before ``now`` (as :meth:`tick` would), so results do not depend on whether the
    caller ticked first. Transitions made by a deadline carry ``at`` = the moment the
    deadline passed, not ``now``. A ``now`` earlier than one already seen counts as no time
    passed. Time must be finite (``ValueError`` otherwise). Call :meth:`tick` at
    :meth:`next_deadline`; calling it earlier changes nothing.
    """

    __slots__ = (
        "_auto_terminate",
        "_check_at",
        "_confirm_end",
        "_created",
        "_interrupt_after_s",
        "_last_activity",
        "_now",
        "_reason",
        "_recheck_s",
        "_since",
        "_state",
        "_terminate_after_s",
    )

    def __init__(
        self,
        *,
        now: float,
        interrupt_after_s: float,
        auto_terminate: bool,
        terminate_after_s: float,
        confirm_end: bool = False,
        recheck_s: float = 10.0,
    ) -> None:
        self._created = _check_time("now", now)
        self._now = now
        self._interrupt_after_s = _check_delay("interrupt_after_s", interrupt_after_s)
        self._auto_terminate = auto_terminate
        self._terminate_after_s = _check_delay("terminate_after_s", terminate_after_s)
        self._confirm_end = confirm_end
        if not (math.isfinite(recheck_s) and recheck_s > 0):
            raise ValueError(f"recheck_s must be finite and > 0, got {recheck_s!r}")
        self._recheck_s = recheck_s
        self._check_at: float | None = None
        self._state = TaskState.STARTING
        self._reason = ""
        self._since = now
        self._last_activity: float | None = None

    def __repr__(self) -> str:
        return f"<TaskLife {self._state.value} reason={self._reason!r} since={self._since}>"

    @property
    def state(self) -> TaskState:
        return self._state

    @property
    def reason(self) -> str:
        """The reason of the last transition; ``""`` while still ``starting``."""
        return self._reason

    @property
    def last_activity(self) -> float | None:
        """The time of the last :meth:`activity` that was not ignored, or ``None``."""
        return self._last_activity

    @property
    def ended(self) -> bool:
        """True once ``terminated`` or ``failed``; nothing changes after that."""
        return self._state.ended

    def activity(self, now: float) -> list[Transition]:
        """Record a result or audio at ``now``.

        Returns ``starting -> running`` or ``interrupted -> running`` (after any deadline
        that passed before ``now``); ``[]`` when already running, and ``[]`` (the activity
        ignored) once ended.
        """
        now = self._advance(now)
        out = self._catch_up(now)
        if self.ended:
            return out
        self._last_activity = now
        if self._state is not TaskState.RUNNING:
            out.append(self._move(TaskInput.ACTIVITY, _REASON_ACTIVITY, now))
        return out

    def tick(self, now: float) -> list[Transition]:
        """Apply the deadlines that passed by ``now``; return the transitions, oldest first.

        A late tick past both deadlines returns ``-> interrupted`` then ``-> terminated``.
        """
        return self._catch_up(self._advance(now))

    def end(self, inp: TaskInput, reason: str, now: float) -> list[Transition]:
        """End the task with ``inp`` (completed, failed or stopped) and ``reason``.

        Returns the transitions made (after any deadline that passed before ``now``), or
        ``[]`` if the task had already ended. ``ValueError`` if ``inp`` is not in
        :data:`END_INPUTS`.
        """
        if inp not in END_INPUTS:
            raise ValueError(f"end() takes one of completed, failed, stopped, not {inp.value!r}")
        now = self._advance(now)
        out = self._catch_up(now)
        if not self.ended:
            out.append(self._move(inp, reason, now))
        return out

    def next_check(self) -> float | None:
        """When to ask the cloud whether an interrupted task still runs (``confirm_end``).

        ``None`` unless the task is interrupted and ``confirm_end`` is set. Ask at or after
        this time, then report the answer with :meth:`checked`.
        """
        return self._check_at if self._state is TaskState.INTERRUPTED else None

    def checked(self, running: bool | None, now: float) -> list[Transition]:
        """The cloud's answer, asked at :meth:`next_check`: does the task still run?

        ``running=False`` terminates an interrupted task; ``True``, or ``None`` (no answer:
        the call failed), schedules the next check ``recheck_s`` later. Ignored (``[]``)
        unless the task is interrupted: a result that arrived while the question was out
        has already resumed it.
        """
        now = self._advance(now)
        out = self._catch_up(now)
        if self._state is not TaskState.INTERRUPTED or not self._confirm_end:
            return out
        if running is None or running:
            self._check_at = now + self._recheck_s
            return out
        reason = _REASON_AUTO_TERMINATE if self._auto_terminate else _REASON_ENDED_BY_CLOUD
        out.append(self._move(TaskInput.CLOUD_ENDED, reason, now))
        return out

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`tick` will change the state.

        ``None`` when ended or when nothing is pending (interrupted without auto-terminate).
        A tick before this time returns ``[]``; a tick at or after it returns at least one
        transition (unless activity or :meth:`end` came first).
        """
        if self._state in (TaskState.STARTING, TaskState.RUNNING):
            # Interrupted only when the silence is strictly longer than the limit.
            return math.nextafter(self._interrupt_deadline(), math.inf)
        if self._state is TaskState.INTERRUPTED and self._timer_terminates:
            return self._terminate_deadline()
        return None

    # --- internals ---------------------------------------------------------------------

    def _advance(self, now: float) -> float:
        """Return the effective time: ``now``, or the latest time seen if it is later."""
        _check_time("now", now)
        if now > self._now:
            self._now = now
        return self._now

    def _interrupt_deadline(self) -> float:
        base = self._created if self._last_activity is None else self._last_activity
        return base + self._interrupt_after_s

    @property
    def _timer_terminates(self) -> bool:
        return self._auto_terminate and not self._confirm_end

    def _terminate_deadline(self) -> float:
        return self._since + self._terminate_after_s

    def _catch_up(self, now: float) -> list[Transition]:
        out: list[Transition] = []
        if self._state in (TaskState.STARTING, TaskState.RUNNING):
            deadline = self._interrupt_deadline()
            if now > deadline:
                out.append(self._move(TaskInput.SILENCE, _REASON_NO_ACTIVITY, deadline))
        if self._state is TaskState.INTERRUPTED and self._timer_terminates:
            deadline = self._terminate_deadline()
            if now >= deadline:
                out.append(self._move(TaskInput.AUTO_TERMINATE, _REASON_AUTO_TERMINATE, deadline))
        return out

    def _move(self, inp: TaskInput, reason: str, at: float) -> Transition:
        old = self._state
        new = next_state(old, inp)
        self._state = new
        self._reason = reason
        self._since = at
        if new is TaskState.INTERRUPTED and self._confirm_end:
            wait = self._terminate_after_s if self._auto_terminate else self._recheck_s
            self._check_at = at + wait
        return Transition(old=old, new=new, reason=reason, at=at)
