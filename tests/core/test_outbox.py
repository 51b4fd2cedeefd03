"""Tests of the per-viewer outbox of slow viewers (SPEC §3.4)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from relay.core.outbox import Outbox


def frame(name: str, size: int = 10) -> bytes:
    """A frame of exactly ``size`` bytes, recognisable by its ``name`` prefix."""
    return name.encode().ljust(size, b".")[:size]


def partial(outbox: Outbox, seq: int, size: int = 10) -> bool:
    return outbox.push(frame(f"p{seq}", size), seq, coalesce=True)


def final(outbox: Outbox, seq: int, size: int = 10) -> bool:
    return outbox.push(frame(f"f{seq}", size), seq, coalesce=False)


def state(outbox: Outbox, name: str = "s", size: int = 10) -> bool:
    return outbox.push(frame(name, size), None, coalesce=False)


def drain(outbox: Outbox) -> list[bytes]:
    frames = []
    while (next_frame := outbox.pop()) is not None:
        frames.append(next_frame)
    assert outbox.pending_bytes == 0
    assert len(outbox) == 0
    return frames


# --- examples ------------------------------------------------------------------------


def test_empty() -> None:
    outbox = Outbox(limit=100)
    assert outbox.pop() is None
    assert outbox.pending_bytes == 0
    assert len(outbox) == 0


def test_finals_and_states_queue_in_order() -> None:
    outbox = Outbox(limit=100)
    final(outbox, 1)
    state(outbox, "s")
    final(outbox, 2)
    assert len(outbox) == 3
    assert outbox.pending_bytes == 30
    assert drain(outbox) == [frame("f1"), frame("s"), frame("f2")]


def test_partials_coalesce_to_the_newest() -> None:
    outbox = Outbox(limit=100)
    for seq in (1, 2, 3):
        partial(outbox, seq, size=10 + seq)
    assert len(outbox) == 1
    assert outbox.pending_bytes == 13
    assert drain(outbox) == [frame("p3", 13)]


def test_partial_comes_after_the_queued_finals() -> None:
    outbox = Outbox(limit=100)
    final(outbox, 1)
    final(outbox, 2)
    partial(outbox, 3)
    assert drain(outbox) == [frame("f1"), frame("f2"), frame("p3")]


def test_queued_final_makes_the_held_partial_stale() -> None:
    # Otherwise the partial (older seq) would be written after the final (newer seq).
    outbox = Outbox(limit=100)
    partial(outbox, 1)
    final(outbox, 2)
    assert outbox.pending_bytes == 10
    assert drain(outbox) == [frame("f2")]


def test_state_message_makes_the_held_partial_stale() -> None:
    outbox = Outbox(limit=100)
    partial(outbox, 1)
    state(outbox)
    assert drain(outbox) == [frame("s")]


def test_push_reports_the_byte_bound() -> None:
    outbox = Outbox(limit=25)
    assert final(outbox, 1)
    assert final(outbox, 2)
    assert partial(outbox, 3, size=5)  # exactly at the limit: still fine
    assert outbox.pending_bytes == 25
    assert not partial(outbox, 4, size=6)  # one byte over
    assert partial(outbox, 5, size=4)  # the newest partial replaced it: under again
    assert not final(outbox, 6)


def test_limit_zero_refuses_any_byte() -> None:
    outbox = Outbox(limit=0)
    assert outbox.push(b"", 1, coalesce=False)
    assert not outbox.push(b"x", 2, coalesce=False)


def test_pop_frees_bytes() -> None:
    outbox = Outbox(limit=15)
    final(outbox, 1)
    assert not final(outbox, 2)
    assert outbox.pop() == frame("f1")
    assert outbox.pending_bytes == 10
    assert final(outbox, 3, size=5)


def test_drop_through_forgets_replayed_frames() -> None:
    outbox = Outbox(limit=1000)
    final(outbox, 1)
    state(outbox, "s1")
    final(outbox, 2)
    final(outbox, 3)
    state(outbox, "s2")
    partial(outbox, 4, size=7)
    outbox.drop_through(2)
    assert outbox.pending_bytes == 37
    assert drain(outbox) == [frame("s1"), frame("f3"), frame("s2"), frame("p4", 7)]


def test_drop_through_drops_a_replayed_partial() -> None:
    outbox = Outbox(limit=1000)
    final(outbox, 5)
    partial(outbox, 6)
    outbox.drop_through(6)
    assert outbox.pending_bytes == 0
    assert drain(outbox) == []


def test_drop_through_below_everything_keeps_everything() -> None:
    outbox = Outbox(limit=1000)
    final(outbox, 5)
    partial(outbox, 6, size=3)
    outbox.drop_through(4)
    assert outbox.pending_bytes == 13
    assert drain(outbox) == [frame("f5"), frame("p6", 3)]


# --- a model -------------------------------------------------------------------------


@dataclass
class Model:
    """What the outbox should hold: queued (seq, frame) pairs and the newest partial."""

    limit: int
    queue: list[tuple[int | None, bytes]] = field(default_factory=list)
    partial: tuple[int, bytes] | None = None

    @property
    def pending_bytes(self) -> int:
        held = sum(len(f) for _, f in self.queue)
        return held + (len(self.partial[1]) if self.partial else 0)

    def frames(self) -> list[bytes]:
        return [f for _, f in self.queue] + ([self.partial[1]] if self.partial else [])

    def push(self, data: bytes, seq: int | None, *, coalesce: bool) -> bool:
        if coalesce:
            assert seq is not None
            self.partial = (seq, data)
        else:
            self.partial = None
            self.queue.append((seq, data))
        return self.pending_bytes <= self.limit

    def drop_through(self, seq: int) -> None:
        self.queue = [(s, f) for s, f in self.queue if s is None or s > seq]
        if self.partial is not None and self.partial[0] <= seq:
            self.partial = None

    def pop(self) -> bytes | None:
        if self.queue:
            return self.queue.pop(0)[1]
        if self.partial is not None:
            data, self.partial = self.partial[1], None
            return data
        return None


@dataclass(frozen=True)
class Push:
    kind: str  # "partial" | "final" | "state"
    size: int


pushes = st.builds(Push, st.sampled_from(["partial", "final", "state"]), st.integers(0, 40))


def apply(pushes: list[Push], limit: int) -> tuple[Outbox, Model, list[bool], list[bool]]:
    """Push frames numbered like a stream does: partials and finals take the next seq."""
    outbox, model = Outbox(limit), Model(limit)
    got, want = [], []
    seq = 0
    for i, push in enumerate(pushes):
        numbered: int | None = None
        if push.kind != "state":
            seq += 1
            numbered = seq
        data = frame(f"{push.kind[0]}{i}", push.size)
        coalesce = push.kind == "partial"
        got.append(outbox.push(data, numbered, coalesce=coalesce))
        want.append(model.push(data, numbered, coalesce=coalesce))
    return outbox, model, got, want


@given(st.lists(pushes, max_size=30), st.integers(0, 500))
def test_pop_order_is_push_order_with_the_newest_partial_last(
    pushed: list[Push], limit: int
) -> None:
    outbox, model, _, _ = apply(pushed, limit)
    assert len(outbox) == len(model.frames())
    assert drain(outbox) == model.frames()


@given(st.lists(pushes, max_size=30), st.integers(0, 500))
def test_push_refuses_exactly_past_the_limit(pushed: list[Push], limit: int) -> None:
    outbox, model, got, want = apply(pushed, limit)
    assert got == want
    assert outbox.pending_bytes == model.pending_bytes


@given(st.lists(pushes, max_size=30), st.integers(-1, 35))
def test_drop_through_removes_exactly_the_numbered_frames_up_to_seq(
    pushed: list[Push], through: int
) -> None:
    outbox, model, _, _ = apply(pushed, 10_000)
    outbox.drop_through(through)
    model.drop_through(through)
    assert outbox.pending_bytes == model.pending_bytes
    assert drain(outbox) == model.frames()


class OutboxMachine(RuleBasedStateMachine):
    """Any interleaving of pushes, pops and replays agrees with the model."""

    def __init__(self) -> None:
        super().__init__()
        self.limit = 60
        self.outbox = Outbox(self.limit)
        self.model = Model(self.limit)
        self.seq = 0
        self.count = 0

    def _push(self, size: int, *, numbered: bool, coalesce: bool) -> None:
        self.count += 1
        seq: int | None = None
        if numbered:
            self.seq += 1
            seq = self.seq
        data = frame(f"#{self.count}", size)
        assert self.outbox.push(data, seq, coalesce=coalesce) == self.model.push(
            data, seq, coalesce=coalesce
        )

    @rule(size=st.integers(0, 30))
    def push_partial(self, size: int) -> None:
        self._push(size, numbered=True, coalesce=True)

    @rule(size=st.integers(0, 30))
    def push_final(self, size: int) -> None:
        self._push(size, numbered=True, coalesce=False)

    @rule(size=st.integers(0, 30))
    def push_state(self, size: int) -> None:
        self._push(size, numbered=False, coalesce=False)

    @rule()
    def pop(self) -> None:
        assert self.outbox.pop() == self.model.pop()

    @precondition(lambda self: self.seq > 0)
    @rule(data=st.data())
    def drop_through(self, data: st.DataObject) -> None:
        through = data.draw(st.integers(0, self.seq), label="through")
        self.outbox.drop_through(through)
        self.model.drop_through(through)

    @invariant()
    def pending_bytes_is_the_sum_of_held_frames(self) -> None:
        assert self.outbox.pending_bytes == self.model.pending_bytes
        assert len(self.outbox) == len(self.model.frames())


TestOutboxMachine = OutboxMachine.TestCase
