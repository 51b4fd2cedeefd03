"""One viewer connection: a ``websockets`` server connection that can take prepared frames.

Server-to-client frames are not masked and relay negotiates no compression, so a caption
event's frame bytes are the same for every viewer of a language: the hub builds them once
and :meth:`ViewerConnection.offer` writes them straight to the transport. When the socket
cannot take more (the transport paused writing, or a replay is in progress) frames wait in
an :class:`~relay.core.outbox.Outbox` and are written when the transport resumes.
"""

from __future__ import annotations

from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from relay.core.outbox import Outbox

CLOSE_SLOW = 1013  # "try again later": the viewer fell too far behind


def text_frame(payload: bytes) -> bytes:
    """The wire bytes of one unmasked, uncompressed text frame."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


class ViewerConnection(ServerConnection):
    """Set by the fan-out server after the handshake: what it watches, ``outbox_limit``.

    ``ready`` is true exactly when a frame may go straight to the socket: the protocol is
    open, the transport is not paused, nothing waits in the outbox and no replay is being
    written. The hub's delivery loop reads only that flag, so it is kept up to date at every
    place the conditions change (asyncio's flow-control callbacks, and ``send_data``, which
    websockets calls after every protocol step that may leave the OPEN state).
    """

    # Slots keep the instance dict under CPython's shared-key limit: ~1.2 KiB per viewer.
    __slots__ = ("lang", "outbox", "outbox_limit", "overflowed", "ready", "stream_id", "syncing")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_id = ""
        self.lang: str | None = None  # None: the source language
        self.outbox: Outbox | None = None  # None: nothing waits (the common case)
        self.outbox_limit = 1 << 20
        self.syncing = False  # a replay is being written; live frames wait
        self.overflowed = False
        self.ready = False

    def offer(self, frame: bytes, seq: int | None, coalesce: bool) -> bool:
        """Write or hold one prepared frame; False when the viewer is over its bound.

        Never blocks and never raises for a closing connection (the frame is dropped).
        The hub writes to ``ready`` viewers itself and calls this for the others.
        """
        if self.ready:
            self.transport.write(frame)
            return True
        if self.protocol.state is not State.OPEN or self.overflowed:
            return True
        if self.outbox is None:
            self.outbox = Outbox(self.outbox_limit)
        if not self.outbox.push(frame, seq, coalesce=coalesce):
            self.overflowed = True
            self.outbox = None  # free it now; the viewer is being closed
            return False
        return True

    def start_sync(self) -> None:
        """A replay is about to be written: hold live frames until :meth:`end_sync`."""
        self.syncing = True
        self._update_ready()

    def end_sync(self, replayed_through: int) -> None:
        """The replay up to ``replayed_through`` was written: release the live frames."""
        self.syncing = False
        if self.outbox is not None:
            self.outbox.drop_through(replayed_through)
        self._flush()

    def write_now(self, frame: bytes) -> None:
        """Write a frame ahead of the policy (hello and replay, in the handler's order)."""
        if self.protocol.state is State.OPEN:
            self.transport.write(frame)

    # --- keeping `ready` true to the connection's state ---------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self.ready = False

    def resume_writing(self) -> None:
        super().resume_writing()
        self._flush()

    def send_data(self) -> None:
        super().send_data()
        if self.ready and self.protocol.state is not State.OPEN:
            self.ready = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ready = False
        super().connection_lost(exc)

    def _update_ready(self) -> None:
        self.ready = (
            self.outbox is None
            and not self.paused
            and not self.syncing
            and not self.overflowed
            and self.protocol.state is State.OPEN
        )

    def _flush(self) -> None:
        outbox = self.outbox
        if outbox is not None and not self.syncing:
            while not self.paused and self.protocol.state is State.OPEN:
                frame = outbox.pop()
                if frame is None:
                    self.outbox = None
                    break
                self.transport.write(frame)
        self._update_ready()
