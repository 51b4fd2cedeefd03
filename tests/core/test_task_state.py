"""Tests for relay.core.task_state: the transition table and the timers of one task."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from relay.core.events import TaskState
from relay.core.task_state import (
    END_INPUTS,
    TRANSITIONS,
    InvalidTransition,
    TaskInput,
    TaskLife,
    Transition,
    next_state,
)

S = TaskState
I = TaskInput  # noqa: E741


def expected_next(state: TaskState, inp: TaskInput) -> TaskState | None:
    """The spec's rules, written independently of the table; None means illegal."""
    if state.ended:
        return None
    if inp in (I.COMPLETED, I.STOPPED):
        return S.TERMINATED
    if inp is I.FAILED:
        return S.FAILED
    if inp is I.ACTIVITY:
        return S.RUNNING
    if inp is I.SILENCE:
        return S.INTERRUPTED if state in (S.STARTING, S.RUNNING) else None
    assert inp in (I.AUTO_TERMINATE, I.CLOUD_ENDED)
    return S.TERMINATED if state is S.INTERRUPTED else None


# --- the table -----------------------------------------------------------------------


@pytest.mark.parametrize("state", list(TaskState))
@pytest.mark.parametrize("inp", list(TaskInput))
def test_every_state_and_input(state: TaskState, inp: TaskInput) -> None:
    expected = expected_next(state, inp)
    if expected is None:
        assert (state, inp) not in TRANSITIONS
        with pytest.raises(InvalidTransition) as excinfo:
            next_state(state, inp)
        assert excinfo.value.state is state
        assert excinfo.value.input is inp
        assert state.value in str(excinfo.value)
        assert inp.value in str(excinfo.value)
    else:
        assert TRANSITIONS[(state, inp)] is expected
        assert next_state(state, inp) is expected


def test_table_has_only_legal_pairs() -> None:
    legal = {(s, i) for s in TaskState for i in TaskInput if expected_next(s, i) is not None}
    assert set(TRANSITIONS) == legal


def test_final_states_have_no_way_out() -> None:
    assert not [pair for pair in TRANSITIONS if pair[0].ended]


def test_the_only_self_loop_is_running_on_activity() -> None:
    loops = [pair for pair, new in TRANSITIONS.items() if pair[0] is new]
    assert loops == [(S.RUNNING, I.ACTIVITY)]


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[(S.FAILED, I.ACTIVITY)] = S.RUNNING  # type: ignore[index]


def test_invalid_transition_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"'terminated' \(a final state\).*'activity'"):
        next_state(S.TERMINATED, I.ACTIVITY)


# --- TaskLife examples ---------------------------------------------------------------


def make(
    *, now: float = 100.0, auto_terminate: bool = True, terminate_after_s: float = 30.0
) -> TaskLife:
    return TaskLife(
        now=now,
        interrupt_after_s=10.0,
        auto_terminate=auto_terminate,
        terminate_after_s=terminate_after_s,
    )


def test_new_task_is_starting() -> None:
    life = make()
    assert life.state is S.STARTING
    assert life.reason == ""
    assert life.last_activity is None
    assert not life.ended
    assert life.next_deadline() == math.nextafter(110.0, math.inf)


def test_first_activity_starts_running_and_more_is_no_transition() -> None:
    life = make()
    assert life.activity(101.0) == [Transition(S.STARTING, S.RUNNING, "activity", 101.0)]
    assert life.state is S.RUNNING
    assert life.reason == "activity"
    assert life.last_activity == 101.0
    assert life.activity(105.0) == []
    assert life.last_activity == 105.0
    assert life.next_deadline() == math.nextafter(115.0, math.inf)


def test_starting_without_activity_is_interrupted_after_the_limit() -> None:
    life = make()
    assert life.tick(110.0) == []  # exactly the limit: not longer than expected yet
    assert life.tick(110.5) == [Transition(S.STARTING, S.INTERRUPTED, "no_activity", 110.0)]
    assert life.reason == "no_activity"


def test_interrupt_counts_from_the_last_activity() -> None:
    life = make()
    life.activity(101.0)
    life.activity(108.0)
    assert life.tick(115.0) == []
    assert life.tick(118.5) == [Transition(S.RUNNING, S.INTERRUPTED, "no_activity", 118.0)]


def test_activity_resumes_an_interrupted_task() -> None:
    life = make()
    life.activity(100.0)
    assert life.tick(111.0) == [Transition(S.RUNNING, S.INTERRUPTED, "no_activity", 110.0)]
    assert life.next_deadline() == 140.0  # interrupted at 110, terminated 30 s later
    assert life.activity(120.0) == [Transition(S.INTERRUPTED, S.RUNNING, "activity", 120.0)]
    assert life.tick(129.0) == []  # the interrupt timer restarted at 120
    assert life.next_deadline() == math.nextafter(130.0, math.inf)
    assert life.tick(141.0) == [Transition(S.RUNNING, S.INTERRUPTED, "no_activity", 130.0)]


def test_auto_terminate_after_the_delay() -> None:
    life = make()
    life.activity(100.0)
    life.tick(111.0)
    assert life.tick(139.9) == []
    assert life.tick(140.0) == [Transition(S.INTERRUPTED, S.TERMINATED, "auto_terminate", 140.0)]
    assert life.ended
    assert life.state is S.TERMINATED
    assert life.reason == "auto_terminate"
    assert life.next_deadline() is None


def test_without_auto_terminate_an_interrupted_task_waits_forever() -> None:
    life = make(auto_terminate=False)
    life.tick(111.0)
    assert life.state is S.INTERRUPTED
    assert life.next_deadline() is None
    assert life.tick(1e9) == []
    assert life.activity(1e9 + 1) == [Transition(S.INTERRUPTED, S.RUNNING, "activity", 1e9 + 1)]


def test_a_late_tick_returns_both_transitions_at_their_deadlines() -> None:
    life = make()
    life.activity(100.0)
    assert life.tick(500.0) == [
        Transition(S.RUNNING, S.INTERRUPTED, "no_activity", 110.0),
        Transition(S.INTERRUPTED, S.TERMINATED, "auto_terminate", 140.0),
    ]
    assert life.state is S.TERMINATED


def test_zero_terminate_delay_terminates_with_the_interrupt() -> None:
    life = make(terminate_after_s=0.0)
    assert life.tick(110.5) == [
        Transition(S.STARTING, S.INTERRUPTED, "no_activity", 110.0),
        Transition(S.INTERRUPTED, S.TERMINATED, "auto_terminate", 110.0),
    ]


def test_late_activity_first_applies_the_deadline_it_missed() -> None:
    life = make()
    life.activity(100.0)
    assert life.activity(115.0) == [
        Transition(S.RUNNING, S.INTERRUPTED, "no_activity", 110.0),
        Transition(S.INTERRUPTED, S.RUNNING, "activity", 115.0),
    ]


def test_activity_after_auto_terminate_is_ignored_even_without_a_tick() -> None:
    life = make()
    life.activity(100.0)
    assert life.activity(200.0) == [
        Transition(S.RUNNING, S.INTERRUPTED, "no_activity", 110.0),
        Transition(S.INTERRUPTED, S.TERMINATED, "auto_terminate", 140.0),
    ]
    assert life.last_activity == 100.0


@pytest.mark.parametrize(
    ("inp", "new"),
    [(I.COMPLETED, S.TERMINATED), (I.STOPPED, S.TERMINATED), (I.FAILED, S.FAILED)],
)
@pytest.mark.parametrize("interrupted", [False, True])
def test_end_from_any_live_state(inp: TaskInput, new: TaskState, interrupted: bool) -> None:
    life = make()
    life.activity(101.0)
    if interrupted:
        life.tick(112.0)
    old = life.state
    assert old is (S.INTERRUPTED if interrupted else S.RUNNING)
    assert life.end(inp, "why", 113.0 if interrupted else 105.0) == [
        Transition(old, new, "why", 113.0 if interrupted else 105.0)
    ]
    assert life.state is new
    assert life.reason == "why"
    assert life.ended
    assert life.next_deadline() is None


def test_end_while_starting() -> None:
    life = make()
    assert life.end(I.STOPPED, "api_delete", 100.0) == [
        Transition(S.STARTING, S.TERMINATED, "api_delete", 100.0)
    ]


def test_everything_is_ignored_after_end() -> None:
    life = make()
    life.activity(101.0)
    life.end(I.FAILED, "status 41010101", 102.0)
    assert life.activity(103.0) == []
    assert life.tick(1e6) == []
    assert life.end(I.STOPPED, "unpublish", 1e6) == []
    assert life.end(I.COMPLETED, "done", 1e6) == []
    assert life.state is S.FAILED
    assert life.reason == "status 41010101"
    assert life.last_activity == 101.0


@pytest.mark.parametrize("inp", [I.ACTIVITY, I.SILENCE, I.AUTO_TERMINATE])
def test_end_rejects_inputs_that_do_not_end(inp: TaskInput) -> None:
    life = make()
    with pytest.raises(ValueError, match="end\\(\\) takes"):
        life.end(inp, "x", 101.0)
    assert life.state is S.STARTING


def test_time_going_backwards_counts_as_no_time_passed() -> None:
    life = make()
    life.activity(105.0)
    assert life.activity(50.0) == []
    assert life.last_activity == 105.0  # the clock is at 105, not 50
    assert life.tick(0.0) == []
    assert life.tick(115.5) == [Transition(S.RUNNING, S.INTERRUPTED, "no_activity", 115.0)]
    assert life.activity(1.0) == [Transition(S.INTERRUPTED, S.RUNNING, "activity", 115.5)]
    assert life.end(I.COMPLETED, "eof", -7.0) == [Transition(S.RUNNING, S.TERMINATED, "eof", 115.5)]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_time_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        make(now=bad)
    life = make()
    with pytest.raises(ValueError, match="finite"):
        life.tick(bad)
    with pytest.raises(ValueError, match="finite"):
        life.activity(bad)
    with pytest.raises(ValueError, match="finite"):
        life.end(I.STOPPED, "x", bad)
    assert life.state is S.STARTING


@pytest.mark.parametrize("field", ["interrupt_after_s", "terminate_after_s", "recheck_s"])
@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_delays_are_rejected(field: str, bad: float) -> None:
    delays = {"interrupt_after_s": 10.0, "terminate_after_s": 30.0, "recheck_s": 5.0}
    delays[field] = bad
    with pytest.raises(ValueError, match=field):
        TaskLife(
            now=0.0,
            auto_terminate=True,
            interrupt_after_s=delays["interrupt_after_s"],
            terminate_after_s=delays["terminate_after_s"],
            recheck_s=delays["recheck_s"],
        )


# --- properties ----------------------------------------------------------------------

times = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
delays = st.floats(min_value=0.0, max_value=60.0, allow_nan=False, allow_infinity=False)
steps = st.one_of(
    st.just(0.0),
    st.floats(min_value=-20.0, max_value=80.0, allow_nan=False, allow_infinity=False),
)


class TaskLifeMachine(RuleBasedStateMachine):
    """Random activity / tick / end calls at times that mostly go forward."""

    life: TaskLife
    clock: float  # the latest time fed in
    last_at: float  # the `at` of the latest transition

    @initialize(
        now=times,
        interrupt_after_s=delays,
        auto_terminate=st.booleans(),
        terminate=delays,
        confirm_end=st.booleans(),
        recheck=st.floats(min_value=0.5, max_value=30.0),
    )
    def create(
        self,
        now: float,
        interrupt_after_s: float,
        auto_terminate: bool,
        terminate: float,
        confirm_end: bool,
        recheck: float,
    ) -> None:
        self.life = TaskLife(
            now=now,
            interrupt_after_s=interrupt_after_s,
            auto_terminate=auto_terminate,
            terminate_after_s=terminate,
            confirm_end=confirm_end,
            recheck_s=recheck,
        )
        self.confirm_end = confirm_end
        self.clock = now
        self.last_at = now

    def feed(self, now: float) -> float:
        """Advance the test's clock as the contract says; return the effective time."""
        self.clock = max(self.clock, now)
        return self.clock

    def check(self, before: TaskState, out: list[Transition], now: float) -> None:
        if before.ended:
            assert out == []  # ended is absorbing
        state = before
        for t in out:
            assert t.old is state  # transitions chain
            assert t.new is not t.old
            assert any(TRANSITIONS.get((t.old, i)) is t.new for i in TaskInput)
            assert self.last_at <= t.at <= now
            self.last_at = t.at
            state = t.new
        assert self.life.state is state
        if out:
            assert self.life.reason == out[-1].reason

    @rule(dt=steps)
    def activity(self, dt: float) -> None:
        before = self.life.state
        raw = self.clock + dt
        now = self.feed(raw)
        out = self.life.activity(raw)
        self.check(before, out, now)
        if not self.life.ended:
            assert self.life.state is S.RUNNING
            assert self.life.last_activity == now

    @rule(dt=steps)
    def tick(self, dt: float) -> None:
        before = self.life.state
        deadline = self.life.next_deadline()
        raw = self.clock + dt
        now = self.feed(raw)
        out = self.life.tick(raw)
        self.check(before, out, now)
        if deadline is None or now < deadline:
            assert out == []  # next_deadline is honoured
        else:
            assert out  # and it is not later than needed

    @precondition(lambda self: self.life.next_deadline() is not None)
    @rule()
    def tick_around_the_deadline(self) -> None:
        deadline = self.life.next_deadline()
        assert deadline is not None
        before = self.life.state
        assert self.life.tick(math.nextafter(deadline, -math.inf)) == []
        out = self.life.tick(deadline)
        self.check(before, out, self.feed(deadline))
        assert out

    @rule(inp=st.sampled_from(sorted(END_INPUTS)), reason=st.text(max_size=8), dt=steps)
    def end(self, inp: TaskInput, reason: str, dt: float) -> None:
        before = self.life.state
        raw = self.clock + dt
        now = self.feed(raw)
        out = self.life.end(inp, reason, raw)
        self.check(before, out, now)
        assert self.life.ended
        if not before.ended and out and out[-1].reason != "auto_terminate":
            assert out[-1] == Transition(out[-1].old, next_state(out[-1].old, inp), reason, now)

    @rule(running=st.sampled_from([True, False, None]), dt=steps)
    def cloud_answers(self, running: bool | None, dt: float) -> None:
        before = self.life.state
        asked = self.life.next_check()
        raw = self.clock + dt
        now = self.feed(raw)
        out = self.life.checked(running, raw)
        self.check(before, out, now)
        if not self.confirm_end or before.ended:
            # Only the deadlines that passed by `now` can act: the answer is ignored.
            assert all(t.reason in ("no_activity", "auto_terminate") for t in out)
        if asked is not None and running is False:
            assert self.life.state is S.TERMINATED
        if running is not False and self.confirm_end and self.life.state is S.INTERRUPTED:
            check = self.life.next_check()
            assert check is not None and check > now

    @invariant()
    def timers_match_the_mode(self) -> None:
        life = self.life
        if not self.confirm_end:
            assert life.next_check() is None
        elif life.state is S.INTERRUPTED:
            assert life.next_check() is not None
            assert life.next_deadline() is None  # never ended by relay's own timer
        else:
            assert life.next_check() is None

    @invariant()
    def consistent(self) -> None:
        life = self.life
        assert life.state in TaskState
        assert life.ended == life.state.ended
        deadline = life.next_deadline()
        if life.ended:
            assert deadline is None
        elif life.state is not S.INTERRUPTED:
            assert deadline is not None
        if deadline is not None:
            assert deadline > self.clock  # nothing overdue is left behind


TestTaskLifeMachine = TaskLifeMachine.TestCase
TestTaskLifeMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


@given(
    start=times,
    interrupt_after_s=delays,
    terminate_after_s=delays,
    ops=st.lists(st.tuples(st.sampled_from(["activity", "tick", "end"]), steps), max_size=30),
)
def test_one_late_tick_equals_many_small_ones(
    start: float,
    interrupt_after_s: float,
    terminate_after_s: float,
    ops: list[tuple[str, float]],
) -> None:
    """Ticking in between other calls never changes the transitions, only their split."""

    def run(tick_between: bool) -> list[Transition]:
        life = TaskLife(
            now=start,
            interrupt_after_s=interrupt_after_s,
            auto_terminate=True,
            terminate_after_s=terminate_after_s,
        )
        out: list[Transition] = []
        now = start
        for op, dt in ops:
            if tick_between:
                out += life.tick(now + dt / 2)
            now += dt
            if op == "activity":
                out += life.activity(now)
            elif op == "tick":
                out += life.tick(now)
            else:
                out += life.end(I.STOPPED, "stop", now)
        return out

    assert run(tick_between=False) == run(tick_between=True)


# --- cloud tasks: relay asks the cloud instead of ending them itself -------------------


def cloud_life(*, auto_terminate: bool = True) -> TaskLife:
    return TaskLife(
        now=0.0,
        interrupt_after_s=10.0,
        auto_terminate=auto_terminate,
        terminate_after_s=5.0,
        confirm_end=True,
        recheck_s=20.0,
    )


def test_a_cloud_task_is_not_terminated_by_the_timer() -> None:
    life = cloud_life()
    assert life.next_check() is None
    [t] = life.tick(11.0)
    assert t.new is S.INTERRUPTED and t.at == 10.0
    assert life.next_deadline() is None
    assert life.next_check() == 15.0  # interrupted at 10, auto-terminate delay 5
    assert life.tick(1000.0) == []
    assert life.state is S.INTERRUPTED


def test_the_cloud_confirms_the_end() -> None:
    life = cloud_life()
    life.tick(11.0)
    [t] = life.checked(False, 15.0)
    assert (t.old, t.new, t.reason, t.at) == (S.INTERRUPTED, S.TERMINATED, "auto_terminate", 15.0)
    assert life.ended and life.next_check() is None


def test_a_task_the_cloud_still_runs_is_asked_again_later() -> None:
    life = cloud_life()
    life.tick(11.0)
    assert life.checked(True, 15.5) == []
    assert life.next_check() == 35.5
    assert life.activity(20.0)[0].new is S.RUNNING
    assert life.next_check() is None


def test_no_answer_is_asked_again_later() -> None:
    life = cloud_life()
    life.tick(11.0)
    assert life.checked(None, 15.0) == []
    assert life.state is S.INTERRUPTED and life.next_check() == 35.0


def test_without_auto_terminate_the_cloud_is_asked_at_the_recheck_interval() -> None:
    life = cloud_life(auto_terminate=False)
    life.tick(11.0)
    assert life.next_check() == 30.0
    [t] = life.checked(False, 30.0)
    assert t.reason == "ended_by_cloud" and t.new is S.TERMINATED


def test_an_answer_for_a_task_that_resumed_is_ignored() -> None:
    life = cloud_life()
    life.tick(11.0)
    life.activity(12.0)
    assert life.checked(False, 15.0) == []
    assert life.state is S.RUNNING


def test_recheck_must_be_positive() -> None:
    with pytest.raises(ValueError, match="recheck_s"):
        TaskLife(now=0, interrupt_after_s=1, auto_terminate=True, terminate_after_s=1, recheck_s=0)
