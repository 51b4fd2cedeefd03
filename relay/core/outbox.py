"""What waits in user space for one viewer that cannot take more output right now.

Policy (SPEC §3.4): partials coalesce, only the newest is kept; finals and state messages
queue in order up to a byte bound, past which the viewer must be closed (it can resume
with ``since``). A queued final or state message makes a held partial stale, so the held
partial is always newer than everything queued and :meth:`pop` keeps ``seq`` order.
"""

from __future__ import annotations

from collections import deque


class Outbox:
    __slots__ = ("_partial", "_partial_seq", "_queue", "limit", "pending_bytes")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending_bytes = 0
        self._queue: deque[tuple[int | None, bytes]] = deque()
        self._partial: bytes | None = None
        self._partial_seq = 0

    def __len__(self) -> int:
        return len(self._queue) + (self._partial is not None)

    def push(self, frame: bytes, seq: int | None, *, coalesce: bool) -> bool:
        """Hold ``frame``; return False once more than ``limit`` bytes wait.

        ``coalesce`` frames (partials) replace the held one; others queue. ``seq`` is the
        event's stream seq, or None for unnumbered messages (state changes).
        """
        if coalesce:
            self._drop_partial()
            self._partial, self._partial_seq = frame, seq or 0
        else:
            self._drop_partial()
            self._queue.append((seq, frame))
        self.pending_bytes += len(frame)
        return self.pending_bytes <= self.limit

    def drop_through(self, seq: int) -> None:
        """Forget numbered frames with seq <= ``seq`` (a replay already sent them)."""
        self._queue = deque((s, f) for s, f in self._queue if s is None or s > seq)
        self.pending_bytes = sum(len(f) for _, f in self._queue)
        if self._partial is not None:
            if self._partial_seq <= seq:
                self._partial = None
            else:
                self.pending_bytes += len(self._partial)

    def pop(self) -> bytes | None:
        """The next frame to write, oldest first; None when nothing waits."""
        if self._queue:
            frame = self._queue.popleft()[1]
        elif self._partial is not None:
            frame, self._partial = self._partial, None
        else:
            return None
        self.pending_bytes -= len(frame)
        return frame

    def _drop_partial(self) -> None:
        if self._partial is not None:
            self.pending_bytes -= len(self._partial)
            self._partial = None
