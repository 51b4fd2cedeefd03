"""ReportInterval: which recognizer events become callbacks, and when. Pure; time passed in.

* ``-1``: sentences only. Partials (``ResultChanged``) and ``SentenceBegin`` are dropped;
  ``TranscriptionStarted``, ``SentenceEnd`` and the terminal events pass.
* ``0``: every event passes, as it comes.
* ``N`` (1..500 ms): at most one partial per N ms per task. A partial that comes too soon is
  held, replacing any partial held before it (only the newest matters). The held partial is
  dropped when its own sentence's ``SentenceEnd`` arrives (the final supersedes it), released
  by :meth:`ReportPolicy.due` once its interval is up, or sent just ahead of a terminal event
  (``TranscriptionCompleted``, ``TaskFailed``: the task ends, so nothing may stay held). Other
  events pass it by: the interval holds between any two partials.

Calling contract: feed each event to :meth:`offer` and send what it returns; whenever
:meth:`wake_at` is not None, call :meth:`due` at (or after) that time and send what it returns.
"""

from __future__ import annotations

from relay.core.events import (
    RecognizerEvent,
    ResultChanged,
    SentenceBegin,
    SentenceEnd,
    TaskFailed,
    TranscriptionCompleted,
)


class ReportPolicy:
    def __init__(self, interval_ms: int) -> None:
        if not (interval_ms == -1 or 0 <= interval_ms <= 500):
            raise ValueError("ReportInterval must be -1 or 0..500")
        self.interval_s = interval_ms / 1000
        self.sentences_only = interval_ms == -1
        self._held: ResultChanged | None = None
        self._last_partial_at: float | None = None

    def offer(self, event: RecognizerEvent, now: float) -> list[RecognizerEvent]:
        if self.sentences_only:
            return [] if isinstance(event, ResultChanged | SentenceBegin) else [event]
        if isinstance(event, ResultChanged):
            return self._partial(event, now)
        held = self._held
        if held is None:
            return [event]
        if isinstance(event, SentenceEnd) and event.index == held.index:
            self._held = None  # the final supersedes it
            return [event]
        if isinstance(event, TranscriptionCompleted | TaskFailed):
            self._held = None
            self._last_partial_at = now
            return [held, event]
        return [event]

    def wake_at(self) -> float | None:
        """When :meth:`due` has a held partial to release; None when nothing is held."""
        if self._held is None or self._last_partial_at is None:
            return None
        return self._last_partial_at + self.interval_s

    def due(self, now: float) -> list[RecognizerEvent]:
        wake = self.wake_at()
        if wake is None or now < wake or self._held is None:
            return []
        held, self._held = self._held, None
        self._last_partial_at = now
        return [held]

    def flush(self) -> list[RecognizerEvent]:
        """The task ends without a terminal event: release the held partial, if any."""
        held, self._held = self._held, None
        return [] if held is None else [held]

    def _partial(self, event: ResultChanged, now: float) -> list[RecognizerEvent]:
        last = self._last_partial_at
        if self._held is None and (last is None or now - last >= self.interval_s):
            self._last_partial_at = now
            return [event]
        self._held = event  # the newest replaces any older one held
        return []
