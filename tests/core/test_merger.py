"""Tests of the caption merger: one example per rule, then properties and a state machine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
)

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
    Word,
)
from relay.core.merger import Merger


def feed(merger: Merger, *events: RecognizerEvent) -> list[CaptionEvent]:
    """Everything ``merger`` emits for ``events``, concatenated."""
    out: list[CaptionEvent] = []
    for event in events:
        out.extend(merger.receive(event))
    return out


def rc(index: int, time_ms: int, text: str, *, words: tuple[Word, ...] = ()) -> ResultChanged:
    return ResultChanged(index, time_ms, text, words=words)


def end(
    index: int,
    time_ms: int,
    text: str,
    begin_ms: int = 0,
    translations: Mapping[str, str] | None = None,
) -> SentenceEnd:
    return SentenceEnd(index, time_ms, begin_ms, text, translations=translations or {})


# --- start, begin --------------------------------------------------------------------


def test_started_and_sentence_begin_emit_nothing() -> None:
    m = Merger()
    assert feed(m, TranscriptionStarted(), SentenceBegin(1, 100)) == []
    assert m.partial is None
    assert dict(m.finals) == {}
    assert m.ended is None


# --- partials ------------------------------------------------------------------------


def test_partial_carries_text_and_stable_prefix() -> None:
    m = Merger()
    out = m.receive(ResultChanged(1, 500, "hello wor", fixed="hello ", unfixed="wor"))
    assert out == [Partial(1, "hello wor", "hello ", 500, 500)]
    assert m.partial == out[0]


def test_partial_text_falls_back_to_fixed_plus_unfixed() -> None:
    m = Merger()
    out = m.receive(ResultChanged(1, 500, "", fixed="hello ", unfixed="wor"))
    assert out == [Partial(1, "hello wor", "hello ", 500, 500)]


def test_partial_start_is_the_sentence_begin_time() -> None:
    m = Merger()
    words = (Word("hi", 300, 400),)
    out = feed(m, SentenceBegin(1, 200), rc(1, 500, "hi", words=words))
    assert out == [Partial(1, "hi", "", 200, 500)]


def test_sentence_begin_after_a_partial_sets_the_next_partials_start() -> None:
    m = Merger()
    feed(m, rc(1, 500, "hi", words=(Word("hi", 300, 400),)))
    assert feed(m, SentenceBegin(1, 200), rc(1, 700, "hi you")) == [
        Partial(1, "hi you", "", 200, 700)
    ]


def test_first_sentence_begin_of_an_index_wins() -> None:
    m = Merger()
    out = feed(m, SentenceBegin(1, 200), SentenceBegin(1, 100), rc(1, 500, "hi"))
    assert out == [Partial(1, "hi", "", 200, 500)]


def test_partial_start_is_the_first_word_without_sentence_begin() -> None:
    m = Merger()
    words = (Word("hi", 300, 400), Word("there", 400, 450))
    assert m.receive(rc(1, 500, "hi there", words=words)) == [Partial(1, "hi there", "", 300, 500)]


def test_partial_start_is_kept_from_the_held_partial_of_that_index() -> None:
    m = Merger()
    feed(m, rc(1, 500, "hi", words=(Word("hi", 300, 400),)))
    assert m.receive(rc(1, 700, "hi you")) == [Partial(1, "hi you", "", 300, 700)]


def test_partial_start_is_its_time_as_a_last_resort() -> None:
    m = Merger()
    feed(m, rc(1, 500, "hi"))
    # The held partial is of another index: its start says nothing about this one.
    assert m.receive(rc(2, 900, "so")) == [Partial(2, "so", "", 900, 900)]


def test_partial_end_is_the_last_word_end_when_later() -> None:
    m = Merger()
    words = (Word("hi", 300, 400), Word("there", 400, 650))
    assert m.receive(rc(1, 500, "hi there", words=words)) == [Partial(1, "hi there", "", 300, 650)]
    ends_earlier = (Word("hi", 300, 400),)
    assert m.receive(rc(1, 600, "hi", words=ends_earlier)) == [Partial(1, "hi", "", 300, 600)]


def test_identical_consecutive_partials_emit_nothing() -> None:
    m = Merger()
    words = (Word("hi", 300, 900),)
    first = m.receive(rc(1, 500, "hi", words=words))
    # Newer audio, but the same caption: nothing to tell viewers.
    assert m.receive(rc(1, 600, "hi", words=words)) == []
    assert [m.partial] == first


def test_redelivered_partial_changes_nothing() -> None:
    m = Merger()
    event = rc(1, 500, "hi")
    first = m.receive(event)
    assert m.receive(event) == []
    assert [m.partial] == first


def test_older_partial_of_the_same_index_is_dropped() -> None:
    m = Merger()
    newer = m.receive(rc(1, 800, "hello there"))
    assert m.receive(rc(1, 500, "hello")) == []
    assert [m.partial] == newer


def test_partial_of_the_same_time_is_dropped() -> None:
    m = Merger()
    first = m.receive(rc(1, 800, "hello"))
    assert m.receive(rc(1, 800, "yellow")) == []
    assert [m.partial] == first


def test_partial_of_a_lower_index_is_dropped() -> None:
    m = Merger()
    newer = m.receive(rc(2, 100, "second"))
    assert m.receive(rc(1, 900, "first")) == []
    assert [m.partial] == newer


def test_partial_of_a_higher_index_replaces_the_held_one() -> None:
    m = Merger()
    feed(m, rc(1, 900, "first"))
    assert m.receive(rc(2, 100, "second")) == [Partial(2, "second", "", 100, 100)]


def test_partial_after_its_final_is_dropped() -> None:
    m = Merger()
    feed(m, rc(1, 500, "hel"), end(1, 800, "hello"))
    assert m.receive(rc(1, 900, "hello there")) == []
    assert m.partial is None


def test_partial_below_a_final_index_is_dropped() -> None:
    m = Merger()
    feed(m, end(2, 800, "second"))
    # Sentence 1 is not final yet, but the recognizer has already ended sentence 2.
    assert m.receive(rc(1, 500, "first")) == []
    assert m.partial is None


def test_partial_dropped_by_a_final_does_not_come_back() -> None:
    m = Merger()
    stale = rc(1, 500, "first")
    feed(m, stale, end(2, 800, "second"))
    assert m.receive(stale) == []
    assert m.partial is None


def test_partial_above_the_last_final_is_shown() -> None:
    m = Merger()
    feed(m, end(1, 800, "first"))
    assert m.receive(rc(2, 900, "sec")) == [Partial(2, "sec", "", 900, 900)]


# --- finals --------------------------------------------------------------------------


def test_final_is_recorded_and_emitted() -> None:
    m = Merger()
    words = (Word("hello", 100, 300), Word("there", 300, 700))
    event = SentenceEnd(1, 800, 100, "hello there", words, {"fr": "salut"})
    out = m.receive(event)
    expected = Final(1, "hello there", 100, 800, words, {"fr": "salut"})
    assert out == [expected]
    assert dict(m.finals) == {1: expected}


def test_final_drops_the_held_partial_of_its_index_silently() -> None:
    m = Merger()
    feed(m, rc(1, 500, "hel"))
    assert m.receive(end(1, 800, "hello")) == [Final(1, "hello", 0, 800)]
    assert m.partial is None


def test_final_drops_the_held_partial_of_a_lower_index() -> None:
    m = Merger()
    feed(m, rc(1, 500, "fir"))
    assert m.receive(end(2, 800, "second")) == [Final(2, "second", 0, 800)]
    assert m.partial is None


def test_final_keeps_the_held_partial_of_a_higher_index() -> None:
    m = Merger()
    held = m.receive(rc(3, 900, "thi"))
    assert m.receive(end(2, 800, "second")) == [Final(2, "second", 0, 800)]
    assert [m.partial] == held


def test_duplicate_final_emits_nothing_and_first_wins() -> None:
    m = Merger()
    first = m.receive(end(1, 800, "hello"))
    assert m.receive(end(1, 800, "hello")) == []
    assert m.receive(end(1, 900, "hello there")) == []
    assert [m.finals[1]] == first


def test_out_of_order_finals_are_emitted_as_they_come() -> None:
    m = Merger()
    out = feed(m, end(2, 1600, "two", 900), end(1, 800, "one"), end(3, 2400, "three", 1700))
    assert out == [
        Final(2, "two", 900, 1600),
        Final(1, "one", 0, 800),
        Final(3, "three", 1700, 2400),
    ]
    assert sorted(m.finals) == [1, 2, 3]


def test_finals_view_is_read_only() -> None:
    m = Merger()
    feed(m, end(1, 800, "one"))
    with pytest.raises(TypeError):
        m.finals[2] = Final(2, "two", 0, 0)  # type: ignore[index]


# --- translations --------------------------------------------------------------------


def test_translations_before_the_final_are_merged_into_it() -> None:
    m = Merger()
    assert m.receive(Translated(1, {"fr": "salut"})) == []
    out = m.receive(end(1, 800, "hello", translations={"de": "hallo"}))
    assert out == [Final(1, "hello", 0, 800, translations={"fr": "salut", "de": "hallo"})]


def test_translations_after_the_final_emit_it_again() -> None:
    m = Merger()
    feed(m, end(1, 800, "hello"))
    out = m.receive(Translated(1, {"fr": "salut"}))
    assert out == [Final(1, "hello", 0, 800, translations={"fr": "salut"})]
    assert m.finals[1] == out[0]


def test_translations_already_held_emit_nothing() -> None:
    m = Merger()
    feed(m, end(1, 800, "hello"), Translated(1, {"fr": "salut"}))
    assert m.receive(Translated(1, {"fr": "salut"})) == []
    assert m.receive(Translated(1, {})) == []


def test_first_translation_of_a_language_wins() -> None:
    m = Merger()
    feed(m, Translated(1, {"fr": "salut"}), end(1, 800, "hello", translations={"fr": "bonjour"}))
    assert m.receive(Translated(1, {"fr": "coucou"})) == []
    assert dict(m.finals[1].translations) == {"fr": "salut"}


def test_first_translation_of_a_language_wins_before_the_final_too() -> None:
    m = Merger()
    feed(m, Translated(1, {"fr": "salut"}), Translated(1, {"fr": "coucou", "de": "hallo"}))
    out = m.receive(end(1, 800, "hello"))
    assert out == [Final(1, "hello", 0, 800, translations={"fr": "salut", "de": "hallo"})]


def test_duplicate_final_with_new_translations_emits_it_again() -> None:
    m = Merger()
    feed(m, end(1, 800, "hello", translations={"fr": "salut"}))
    out = m.receive(end(1, 900, "HELLO", translations={"de": "hallo"}))
    assert out == [Final(1, "hello", 0, 800, translations={"fr": "salut", "de": "hallo"})]


def test_translations_do_not_touch_other_sentences() -> None:
    m = Merger()
    feed(m, end(1, 800, "one"), Translated(2, {"fr": "deux"}))
    assert dict(m.finals[1].translations) == {}
    assert m.receive(end(2, 1600, "two")) == [Final(2, "two", 0, 1600, translations={"fr": "deux"})]


# --- end of task ---------------------------------------------------------------------


def test_completed_terminates() -> None:
    m = Merger()
    out = m.receive(TranscriptionCompleted())
    assert out == [StateChanged(TaskState.TERMINATED, "completed")]
    assert m.ended == out[0]


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [(40000004, "IDLE_TIMEOUT", "40000004 IDLE_TIMEOUT"), (500, "", "500")],
)
def test_failed_carries_status_and_reason(status: int, reason: str, expected: str) -> None:
    m = Merger()
    out = m.receive(TaskFailed(status, reason))
    assert out == [StateChanged(TaskState.FAILED, expected)]
    assert m.ended == out[0]


@pytest.mark.parametrize(
    "late",
    [
        TranscriptionStarted(),
        SentenceBegin(2, 900),
        rc(2, 1000, "late"),
        end(2, 1200, "late"),
        end(1, 800, "one", translations={"fr": "un"}),
        Translated(1, {"fr": "un"}),
        TranscriptionCompleted(),
        TaskFailed(500, "boom"),
    ],
)
def test_events_after_the_end_are_ignored(late: RecognizerEvent) -> None:
    m = Merger()
    feed(m, end(1, 800, "one"), rc(2, 900, "la"), TaskFailed(41010101, "gone"))
    before = (m.partial, dict(m.finals), m.ended)
    assert m.receive(late) == []
    assert (m.partial, dict(m.finals), m.ended) == before


# --- memory --------------------------------------------------------------------------


def test_bookkeeping_of_final_sentences_is_forgotten() -> None:
    m = Merger()
    for i in range(1, 1001):
        t = i * 1000
        feed(
            m,
            SentenceBegin(i, t),
            Translated(i, {"fr": "x"}),
            rc(i, t + 500, "a"),
            end(i, t + 900, "a", t),
        )
    assert len(m.finals) == 1000
    # White-box: only the finals may grow with the length of the task.
    assert m._begins == {}
    assert m._pending == {}


# --- properties ----------------------------------------------------------------------


@dataclass
class Session:
    """A well-formed recognizer session, and the finals it must produce."""

    events: list[RecognizerEvent] = field(default_factory=list)
    finals: dict[int, Final] = field(default_factory=dict)


texts = st.sampled_from(["", "a", "b", "ab", "ba"])
langs = st.sampled_from(["en", "fr", "de"])


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    session = Session()
    t = 0
    for index in range(1, draw(st.integers(0, 5)) + 1):
        begin = t = t + draw(st.integers(0, 100))
        session.events.append(SentenceBegin(index, begin))
        for _ in range(draw(st.integers(0, 3))):
            t += draw(st.integers(1, 100))
            session.events.append(ResultChanged(index, t, draw(texts)))
        t += draw(st.integers(1, 100))
        text = draw(texts)
        # Each language comes from one place, so its value does not depend on order.
        own = draw(st.dictionaries(langs, texts, max_size=2))
        others = sorted({"en", "fr", "de"} - own.keys())
        apart = draw(st.dictionaries(st.sampled_from(others), texts)) if others else {}
        session.events.append(SentenceEnd(index, t, begin, text, translations=own))
        if apart:
            session.events.append(Translated(index, apart))
        session.finals[index] = Final(index, text, begin, t, translations=own | apart)
    return session


@given(sessions())
def test_in_order_session_finals_each_sentence_once_in_order(session: Session) -> None:
    m = Merger()
    out = feed(m, *session.events)
    first = [e.index for e in out if isinstance(e, Final)]
    assert sorted(set(first)) == sorted(session.finals)
    assert dict(m.finals) == session.finals
    assert m.partial is None


@given(st.data())
def test_finals_do_not_depend_on_arrival_order(data: st.DataObject) -> None:
    session = data.draw(sessions())
    shuffled = data.draw(st.permutations(session.events))
    m = Merger()
    for event in shuffled:
        for out in m.receive(event):
            assert isinstance(out, Partial | Final)
            if isinstance(out, Partial):
                assert out.index not in m.finals
            else:
                # Whatever order, a final only ever shows what the sentence said.
                expected = session.finals[out.index]
                assert (out.text, out.start_ms, out.end_ms) == (
                    expected.text,
                    expected.start_ms,
                    expected.end_ms,
                )
    assert dict(m.finals) == session.finals


@given(sessions(), st.lists(st.integers(0, 1), min_size=20, max_size=20))
def test_duplicates_emit_the_same_as_one_delivery(session: Session, twice: list[int]) -> None:
    once, dup = Merger(), Merger()
    doubled: list[RecognizerEvent] = []
    for i, event in enumerate(session.events):
        doubled += [event] * (1 + twice[i % len(twice)])
    assert feed(dup, *doubled) == feed(once, *session.events)
    assert dict(dup.finals) == dict(once.finals)
    assert dup.partial == once.partial


# --- state machine -------------------------------------------------------------------

indexes = st.integers(0, 4)
# Few values, so that ties and redeliveries of near-identical events are common.
times = st.integers(0, 12)
words = st.lists(st.builds(Word, st.sampled_from(["a", "b"]), times, times), max_size=2).map(tuple)
translations = st.dictionaries(langs, st.sampled_from(["x", "y"]), max_size=2)


class MergerMachine(RuleBasedStateMachine):
    """Random event sequences, with redeliveries, against a reference model.

    The model: the first ``SentenceEnd`` of an index gives its final, and each language
    keeps the first translation received for that index, from either event kind. The
    partial is the first-received hypothesis with the greatest ``(index, time_ms)``, if
    that index is above every final index.
    """

    received: Bundle[RecognizerEvent] = Bundle("received")

    def __init__(self) -> None:
        super().__init__()
        self.merger = Merger()
        self.first_end: dict[int, SentenceEnd] = {}
        self.translations: dict[int, dict[str, str]] = {}
        self.first_begin: dict[int, int] = {}
        self.newest: tuple[int, int] | None = None
        self.partial: Partial | None = None
        self.ended = False
        self.delivered = 0
        self.emitted_finals: dict[int, Final] = {}
        self.emitted_state: list[StateChanged] = []

    def model_finals(self) -> dict[int, Final]:
        return {
            i: Final(
                i,
                e.text,
                e.begin_ms,
                e.time_ms,
                e.words,
                self.translations.get(i, {}),
            )
            for i, e in self.first_end.items()
        }

    def deliver(self, event: RecognizerEvent) -> RecognizerEvent:
        self.delivered += 1
        was_ended = self.ended
        out = self.merger.receive(event)
        if was_ended:
            assert out == []
            return event
        partial_before = self.partial
        self.update_model(event)
        self.check(event, out)
        # A partial is emitted exactly when the one shown changes (a drop emits nothing).
        changed = self.partial is not None and self.partial != partial_before
        assert [c for c in out if isinstance(c, Partial)] == ([self.partial] if changed else [])
        return event

    def update_model(self, event: RecognizerEvent) -> None:
        match event:
            case SentenceBegin():
                self.first_begin.setdefault(event.index, event.time_ms)
            case ResultChanged():
                self.update_partial(event)
            case SentenceEnd() | Translated():
                if isinstance(event, SentenceEnd):
                    self.first_end.setdefault(event.index, event)
                    if self.partial is not None and self.partial.index <= event.index:
                        self.partial = None
                held = self.translations.setdefault(event.index, {})
                for lang, text in event.translations.items():
                    held.setdefault(lang, text)
            case TranscriptionCompleted() | TaskFailed():
                self.ended = True
            case _:
                pass

    def update_partial(self, event: ResultChanged) -> None:
        key = (event.index, event.time_ms)
        if any(event.index <= i for i in self.first_end):
            return
        if self.newest is not None and key <= self.newest:
            return
        self.newest = key
        held = self.partial
        if event.index in self.first_begin:
            start = self.first_begin[event.index]
        elif event.words:
            start = event.words[0].start_ms
        elif held is not None and held.index == event.index:
            start = held.start_ms
        else:
            start = event.time_ms
        end = max([event.time_ms, *(w.end_ms for w in event.words[-1:])])
        text = event.text or event.fixed + event.unfixed
        self.partial = Partial(event.index, text, event.fixed, start, end)

    def check(self, event: RecognizerEvent, out: Sequence[CaptionEvent]) -> None:
        last_final = max(self.first_end, default=None)
        for caption in out:
            match caption:
                case Partial():
                    assert caption.index not in self.merger.finals
                    assert last_final is None or caption.index > last_final
                case Final():
                    before = self.emitted_finals.get(caption.index)
                    if before is not None:
                        # Append-only: only languages it lacked may be added.
                        assert caption.text == before.text
                        assert (caption.start_ms, caption.end_ms) == (
                            before.start_ms,
                            before.end_ms,
                        )
                        assert caption.words == before.words
                        assert before.translations.items() <= caption.translations.items()
                        assert caption != before
                    self.emitted_finals[caption.index] = caption
                case StateChanged():
                    assert isinstance(event, TranscriptionCompleted | TaskFailed)
                    self.emitted_state.append(caption)
        partials = [c for c in out if isinstance(c, Partial)]
        if partials:
            assert partials[-1] == self.merger.partial
        assert len(partials) <= 1

    @rule(target=received)
    def started(self) -> RecognizerEvent:
        return self.deliver(TranscriptionStarted())

    @rule(target=received, index=indexes, time_ms=times)
    def sentence_begin(self, index: int, time_ms: int) -> RecognizerEvent:
        return self.deliver(SentenceBegin(index, time_ms))

    @rule(
        target=received,
        index=indexes,
        time_ms=times,
        text=texts,
        fixed=texts,
        unfixed=texts,
        words=words,
    )
    def result_changed(
        self,
        index: int,
        time_ms: int,
        text: str,
        fixed: str,
        unfixed: str,
        words: tuple[Word, ...],
    ) -> RecognizerEvent:
        return self.deliver(ResultChanged(index, time_ms, text, fixed, unfixed, words))

    @rule(target=received, index=indexes, time_ms=times, text=texts, step=st.integers(1, 3))
    def result_unchanged(
        self, index: int, time_ms: int, text: str, step: int
    ) -> MultipleResults[RecognizerEvent]:
        """The recognizer moves on through audio its last word already covers."""
        word = (Word(text, time_ms, time_ms + 5),)
        first = self.deliver(ResultChanged(index, time_ms, text, words=word))
        then = self.deliver(ResultChanged(index, time_ms + step, text, words=word))
        return multiple(first, then)

    @rule(
        target=received,
        index=indexes,
        time_ms=times,
        begin_ms=times,
        text=texts,
        words=words,
        translations=translations,
    )
    def sentence_end(
        self,
        index: int,
        time_ms: int,
        begin_ms: int,
        text: str,
        words: tuple[Word, ...],
        translations: dict[str, str],
    ) -> RecognizerEvent:
        return self.deliver(SentenceEnd(index, time_ms, begin_ms, text, words, translations))

    @rule(target=received, index=indexes, translations=translations)
    def translated(self, index: int, translations: dict[str, str]) -> RecognizerEvent:
        return self.deliver(Translated(index, translations))

    # Ending is only offered after a while, so that most runs exercise a live task.
    @precondition(lambda self: self.delivered >= 10)
    @rule(target=received, failed=st.booleans())
    def end(self, failed: bool) -> RecognizerEvent:
        return self.deliver(TaskFailed(500, "boom") if failed else TranscriptionCompleted())

    @rule(event=received)
    def redeliver(self, event: RecognizerEvent) -> None:
        before = (self.merger.partial, dict(self.merger.finals), self.merger.ended)
        assert self.merger.receive(event) == []
        assert (self.merger.partial, dict(self.merger.finals), self.merger.ended) == before

    @invariant()
    def finals_match_the_model(self) -> None:
        assert dict(self.merger.finals) == self.model_finals()

    @invariant()
    def emitted_finals_match_the_finals(self) -> None:
        assert self.emitted_finals == dict(self.merger.finals)

    @invariant()
    def partial_matches_the_model(self) -> None:
        assert self.merger.partial == self.partial

    @invariant()
    def partial_is_never_final(self) -> None:
        partial = self.merger.partial
        assert partial is None or partial.index not in self.merger.finals

    @invariant()
    def ends_once(self) -> None:
        assert len(self.emitted_state) == (1 if self.ended else 0)
        assert self.merger.ended == (self.emitted_state[0] if self.ended else None)


TestMergerMachine = MergerMachine.TestCase
TestMergerMachine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


def test_a_long_task_keeps_a_bounded_number_of_finals() -> None:
    from relay.core.merger import KEEP_FINALS

    merger = Merger()
    total = 3 * KEEP_FINALS
    for i in range(total):
        assert merger.receive(SentenceEnd(index=i, time_ms=i + 1, begin_ms=i, text=f"s{i}"))
    assert len(merger.finals) <= KEEP_FINALS + KEEP_FINALS // 4
    assert max(merger.finals) == total - 1
    # a late copy of a forgotten final, or a translation of it, changes nothing
    assert merger.receive(SentenceEnd(index=0, time_ms=1, begin_ms=0, text="again")) == []
    assert merger.receive(Translated(index=0, translations={"cn": "x"})) == []
    assert merger.receive(ResultChanged(index=5, time_ms=999_999, text="late")) == []
