"""The caption merger: one task's recognizer events in, caption events out.

Sans-I/O: no clock, no I/O, no awaiting. The caller feeds every recognizer event of one
task to :meth:`Merger.receive` in the order it arrived and publishes what comes back.
Callbacks travel over HTTP and may arrive late, twice or out of order, so the merger
decides from the events alone what viewers should see:

* A sentence is final once: the first ``SentenceEnd`` of an index wins, and later
  events only add translations in languages it does not have yet.
* Partials only move forward, ordered by ``(index, time_ms)``; a partial of an index at
  or below a final index is stale, since the recognizer has moved past that sentence.
* Receiving again any event already received emits nothing and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import assert_never

from relay.core.events import (
    CaptionEvent,
    Final,
    Partial,
    RecognizerEvent,
    ResultChanged,
    SentenceBegin,
    SentenceEnd,
    StateChanged,
    TaskFailed,
    TaskState,
    TranscriptionCompleted,
    TranscriptionStarted,
    Translated,
)

__all__ = ["KEEP_FINALS", "Merger"]

KEEP_FINALS = 1000  # finals held per task; older ones are forgotten (their index is not)


class Merger:
    """Merges one task's recognizer events into caption events.

    Create one per task and feed it every event of that task with :meth:`receive`.
    Not thread-safe; it never blocks, so call it straight from the event loop.
    """

    __slots__ = (
        "_begins",
        "_ended",
        "_finals",
        "_finals_view",
        "_forgotten",
        "_last_final",
        "_newest",
        "_partial",
        "_pending",
    )

    def __init__(self) -> None:
        self._finals: dict[int, Final] = {}
        self._finals_view: Mapping[int, Final] = MappingProxyType(self._finals)
        self._forgotten = -1  # finals at or below this index were dropped from memory
        self._partial: Partial | None = None
        self._ended: StateChanged | None = None
        # (index, time_ms) of the newest hypothesis accepted: partials are ordered by it
        # rather than by the held partial alone, which a final may have dropped.
        self._newest: tuple[int, int] | None = None
        # Highest final index: no partial at or below it is shown any more.
        self._last_final: int | None = None
        # SentenceBegin times, kept only for indexes that may still get a partial.
        self._begins: dict[int, int] = {}
        # Translations that arrived before their sentence was final.
        self._pending: dict[int, dict[str, str]] = {}

    @property
    def partial(self) -> Partial | None:
        """The current partial sentence, if any."""
        return self._partial

    @property
    def finals(self) -> Mapping[int, Final]:
        """Finalized sentences by index (a read-only live view)."""
        return self._finals_view

    @property
    def ended(self) -> StateChanged | None:
        """How the task ended, once it has; ``None`` while it runs."""
        return self._ended

    def receive(self, event: RecognizerEvent) -> list[CaptionEvent]:
        """Take in one recognizer event; return what viewers should see now, in order.

        Never raises for stale, duplicate or out-of-order events: they are merged or
        dropped. Once the task has ended every event is ignored and ``[]`` returned.
        """
        if self._ended is not None:
            return []
        match event:
            case TranscriptionStarted():
                return []
            case SentenceBegin():
                self._sentence_begin(event)
                return []
            case ResultChanged():
                return self._result_changed(event)
            case SentenceEnd():
                return self._sentence_end(event)
            case Translated():
                return self._translated(event.index, event.translations)
            case TranscriptionCompleted():
                return self._end(StateChanged(TaskState.TERMINATED, "completed"))
            case TaskFailed():
                reason = f"{event.status} {event.reason}".strip()
                return self._end(StateChanged(TaskState.FAILED, reason))
            case _:
                assert_never(event)

    # --- events ------------------------------------------------------------------------

    def _sentence_begin(self, event: SentenceBegin) -> None:
        horizon = self._horizon()
        if horizon is None or event.index >= horizon:
            # A sentence begins once: keeping the first time makes redelivery a no-op.
            self._begins.setdefault(event.index, event.time_ms)

    def _result_changed(self, event: ResultChanged) -> list[CaptionEvent]:
        if self._last_final is not None and event.index <= self._last_final:
            return []
        # An equal key is dropped too: it is a redelivery, or an ambiguous second
        # hypothesis for the same audio, and taking it would let a redelivered older one
        # flip the caption back.
        key = (event.index, event.time_ms)
        if self._newest is not None and key <= self._newest:
            return []
        moved_on = self._newest is None or event.index > self._newest[0]
        self._newest = key
        if moved_on:
            self._prune_begins()

        held = self._partial
        start_ms = self._begins.get(event.index)
        if start_ms is None:
            if event.words:
                start_ms = event.words[0].start_ms
            elif held is not None and held.index == event.index:
                start_ms = held.start_ms
            else:
                start_ms = event.time_ms
        end_ms = event.time_ms
        if event.words:
            end_ms = max(end_ms, event.words[-1].end_ms)
        partial = Partial(
            index=event.index,
            text=event.text or event.fixed + event.unfixed,
            stable=event.fixed,
            start_ms=start_ms,
            end_ms=end_ms,
        )
        if partial == held:
            return []
        self._partial = partial
        return [partial]

    def _sentence_end(self, event: SentenceEnd) -> list[CaptionEvent]:
        if event.index <= self._forgotten:
            return []  # final long ago; only its index is remembered (see _forget)
        final = self._finals.get(event.index)
        if final is not None:
            # First final wins; a duplicate may only bring translations it lacked.
            return self._add_translations(final, event.translations)
        # Translations that came first win, as they would had the final been here.
        translations = self._pending.pop(event.index, {})
        for lang, text in event.translations.items():
            translations.setdefault(lang, text)
        final = Final(
            index=event.index,
            text=event.text,
            start_ms=event.begin_ms,
            end_ms=event.time_ms,
            words=event.words,
            translations=MappingProxyType(translations),
        )
        self._finals[event.index] = final
        if self._last_final is None or event.index > self._last_final:
            self._last_final = event.index
            self._prune_begins()
        if self._partial is not None and self._partial.index <= event.index:
            # Viewers replace the partial by the final of its index: no event needed.
            self._partial = None
        if len(self._finals) > KEEP_FINALS + KEEP_FINALS // 4:
            self._forget()
        return [final]

    def _forget(self) -> None:
        """Keep the newest KEEP_FINALS finals: a task may run for days.

        Older sentences are past any redelivery or translation worth waiting for; their
        indexes stay known through ``_forgotten``, so a late copy is still dropped.
        """
        ordered = sorted(self._finals)
        for index in ordered[: len(ordered) - KEEP_FINALS]:
            del self._finals[index]
            self._pending.pop(index, None)
        self._forgotten = max(self._forgotten, ordered[len(ordered) - KEEP_FINALS - 1])

    def _translated(self, index: int, translations: Mapping[str, str]) -> list[CaptionEvent]:
        if index <= self._forgotten:
            return []
        final = self._finals.get(index)
        if final is not None:
            return self._add_translations(final, translations)
        if translations:
            pending = self._pending.setdefault(index, {})
            for lang, text in translations.items():
                pending.setdefault(lang, text)
        return []

    def _end(self, state: StateChanged) -> list[CaptionEvent]:
        self._ended = state
        return [state]

    # --- helpers -----------------------------------------------------------------------

    def _add_translations(self, final: Final, new: Mapping[str, str]) -> list[CaptionEvent]:
        """Add languages ``final`` lacks; emit the updated final if there were any.

        A language already present is kept: a final never changes what it showed, and a
        redelivered older translation cannot overwrite a newer one.
        """
        merged = dict(final.translations)
        for lang, text in new.items():
            merged.setdefault(lang, text)
        if len(merged) == len(final.translations):
            return []
        updated = replace(final, translations=MappingProxyType(merged))
        self._finals[final.index] = updated
        return [updated]

    def _horizon(self) -> int | None:
        """The lowest index that may still get a partial, or ``None`` if any may."""
        lows = []
        if self._last_final is not None:
            lows.append(self._last_final + 1)
        if self._newest is not None:
            lows.append(self._newest[0])
        return max(lows, default=None)

    def _prune_begins(self) -> None:
        # Begin times only feed partials; forget those of sentences past the horizon so
        # an hours-long task keeps a handful of them.
        horizon = self._horizon()
        if horizon is not None and any(index < horizon for index in self._begins):
            self._begins = {i: t for i, t in self._begins.items() if i >= horizon}
