"""Audiences: who watches which stream, and delivery of published events to them.

The store calls :meth:`Hub.on_published` for every published event. Events of a stream are
batched until the loop is free (``call_soon``), so a burst of partials collapses into the
newest one; each remaining event is encoded once per language in use, framed once, and the
same bytes are offered to every viewer. Nothing here awaits: one slow viewer cannot hold
up the others (its frames wait in its own outbox, see viewer.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog

from relay.core import wire
from relay.core.events import Partial, Published, StateChanged
from relay.fanout.viewer import CLOSE_SLOW, ViewerConnection, text_frame
from relay.metrics import Metrics

log = structlog.get_logger("relay.fanout")

PACE_AFTER_S = 0.002  # flushes shorter than this are not paced


@dataclass(slots=True)
class _Audience:
    # Viewers by requested language (None: the source language).
    groups: dict[str | None, set[ViewerConnection]] = field(default_factory=dict)
    pending: list[Published] = field(default_factory=list)
    scheduled: bool = False
    not_before: float = 0.0  # loop time before which the next flush must not start

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups.values())


class Hub:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._audiences: dict[str, _Audience] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._total = 0

    # --- membership -----------------------------------------------------------------

    def join(self, viewer: ViewerConnection) -> None:
        audience = self._audiences.setdefault(viewer.stream_id, _Audience())
        audience.groups.setdefault(viewer.lang, set()).add(viewer)
        self._total += 1
        self._metrics.viewers.set(self._total)

    def leave(self, viewer: ViewerConnection) -> None:
        """Remove a viewer; safe to call more than once."""
        stream_id, lang = viewer.stream_id, viewer.lang
        audience = self._audiences.get(stream_id)
        group = audience.groups.get(lang) if audience else None
        if audience is None or group is None or viewer not in group:
            return
        group.discard(viewer)
        self._total -= 1
        self._metrics.viewers.set(self._total)
        if not group:
            del audience.groups[lang]
        if not audience.groups and not audience.pending:
            del self._audiences[stream_id]

    def count(self, stream_id: str) -> int:
        audience = self._audiences.get(stream_id)
        return len(audience) if audience else 0

    @property
    def total(self) -> int:
        return self._total

    # --- delivery -------------------------------------------------------------------

    def on_published(self, published: Published) -> None:
        audience = self._audiences.get(published.stream_id)
        if audience is None:
            return
        audience.pending.append(published)
        if not audience.scheduled:
            audience.scheduled = True
            loop = asyncio.get_running_loop()
            delay = audience.not_before - loop.time()
            if delay > 0:
                loop.call_later(delay, self._flush, published.stream_id)
            else:
                loop.call_soon(self._flush, published.stream_id)

    def _flush(self, stream_id: str) -> None:
        audience = self._audiences.get(stream_id)
        if audience is None:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        batch, audience.pending, audience.scheduled = audience.pending, [], False
        for published in _coalesce(batch, self._metrics):
            self._deliver(audience, published)
        if not audience.groups:
            self._audiences.pop(stream_id, None)
            return
        # Pace big audiences: after a flush that took T, leave the loop T for everything
        # else (reading callbacks) before the next one. Events meanwhile batch up, and a
        # batch keeps only its newest partial, so a backlog turns into skipped partials
        # instead of growing latency.
        took = loop.time() - started
        audience.not_before = loop.time() + took if took > PACE_AFTER_S else 0.0

    def _deliver(self, audience: _Audience, published: Published) -> None:
        event = published.event
        coalesce = isinstance(event, Partial)
        seq = None if isinstance(event, StateChanged) else published.seq
        shared = text_frame(wire.encode(published))
        delivered = 0
        slow: list[ViewerConnection] = []
        for lang, viewers in audience.groups.items():
            frame = shared
            if lang is not None and wire.translates_to(published, lang):
                frame = text_frame(wire.encode(published, lang))
            for viewer in viewers:  # the hot loop: one flag test and one write per viewer
                if viewer.ready:
                    viewer.transport.write(frame)
                elif not viewer.offer(frame, seq, coalesce):
                    slow.append(viewer)
            delivered += len(viewers)
        self._metrics.deliveries.inc(delivered)
        for viewer in slow:
            self._close_slow(viewer)

    def _close_slow(self, viewer: ViewerConnection) -> None:
        # Leave now, not when the closing handshake ends: a viewer that never reads would
        # hold its place (and count) for the whole close timeout.
        self.leave(viewer)
        self._metrics.viewer_disconnects.labels(reason="slow").inc()
        log.warning(
            "viewer.too_slow", stream_id=viewer.stream_id, remote=str(viewer.remote_address)
        )
        task = asyncio.get_running_loop().create_task(
            viewer.close(CLOSE_SLOW, "too far behind; reconnect with since=")
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _coalesce(batch: list[Published], metrics: Metrics) -> list[Published]:
    """Drop every partial that a later partial in the same batch supersedes."""
    if len(batch) < 2:
        return batch
    last_partial = max((i for i, p in enumerate(batch) if isinstance(p.event, Partial)), default=-1)
    kept = [p for i, p in enumerate(batch) if i >= last_partial or not isinstance(p.event, Partial)]
    if dropped := len(batch) - len(kept):
        metrics.coalesced.inc(dropped)
    return kept
