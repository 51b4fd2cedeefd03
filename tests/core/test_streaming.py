"""Tests of the local engine's streaming policy: one example per rule, then properties.

A simulated speaker says a reference text with known word times; hypotheses are what a
recognizer would read from growing windows of it, perfect or with the usual noise: a
changed last word, a missing tail, jittered times, a window that overlaps committed audio.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from relay.core.events import RecognizerEvent, ResultChanged, SentenceBegin, SentenceEnd, Word
from relay.core.hypothesis import Hypothesis, HypWord
from relay.core.streaming import DEFAULT_SILENCE_PHRASES, StreamingPolicy

# --- a simulated speaker ---------------------------------------------------------------


def speak(
    text: str,
    *,
    start: float = 0.5,
    word_s: float = 0.3,
    gap_s: float = 0.05,
    pause_s: float = 0.3,
) -> list[HypWord]:
    """``text`` said from ``start``: words ``word_s`` long, ``pause_s`` after each sentence."""
    words: list[HypWord] = []
    t = start
    for token in text.split():
        words.append(HypWord(" " + token, round(t, 3), round(t + word_s, 3)))
        t += word_s + gap_s
        if token.endswith((".", "?", "!")):
            t += pause_s
    return words


def heard(
    ref: Sequence[HypWord],
    window_start: float,
    audio_end: float,
    *,
    segment_ends: Sequence[float] = (),
) -> Hypothesis:
    """A perfect hypothesis: the reference words said in full, mostly within the window."""
    words = tuple(
        w for w in ref if (w.start + w.end) / 2 >= window_start and w.end <= audio_end + 1e-9
    )
    return Hypothesis(words, window_start, audio_end, tuple(segment_ends))


def hyp(
    text: str,
    audio_end: float,
    *,
    start: float = 0.5,
    word_s: float = 0.3,
    window_start: float = 0.0,
    segment_ends: Sequence[float] = (),
    no_speech_prob: float = 0.0,
    avg_logprob: float = -0.2,
) -> Hypothesis:
    """A hypothesis that reads ``text`` from ``start`` (words as :func:`speak` times them)."""
    words = tuple(speak(text, start=start, word_s=word_s, pause_s=0.0))
    return Hypothesis(
        words, window_start, audio_end, tuple(segment_ends), no_speech_prob, avg_logprob
    )


def steps(end: float, step: float) -> list[float]:
    n = int(end / step + 1e-9)
    return [round(step * (i + 1), 6) for i in range(n)] + ([end] if n * step < end - 1e-9 else [])


def run(
    policy: StreamingPolicy, ref: Sequence[HypWord], *, step: float = 0.5
) -> list[RecognizerEvent]:
    """Perfect hypotheses every ``step`` up to a second after the last word, then finish."""
    end = ref[-1].end + 1.0
    events: list[RecognizerEvent] = []
    for t in steps(end, step):
        events += policy.receive(heard(ref, policy.window_start, t))
    return events + policy.finish(end)


def feed(policy: StreamingPolicy, *hyps: Hypothesis) -> list[RecognizerEvent]:
    events: list[RecognizerEvent] = []
    for h in hyps:
        events += policy.receive(h)
    return events


def ends(events: Iterable[RecognizerEvent]) -> list[SentenceEnd]:
    return [e for e in events if isinstance(e, SentenceEnd)]


def changes(events: Iterable[RecognizerEvent]) -> list[ResultChanged]:
    return [e for e in events if isinstance(e, ResultChanged)]


def texts(events: Iterable[RecognizerEvent]) -> list[str]:
    return [e.text for e in ends(events)]


def shown_words(events: Iterable[RecognizerEvent]) -> list[str]:
    """Every word shown to viewers in partial or final text."""
    out: list[str] = []
    for e in events:
        if isinstance(e, ResultChanged | SentenceEnd):
            out += e.text.split()
    return out


def key(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def has_loop(words: Sequence[str], times: int = 3) -> bool:
    """Some n-gram of ``words`` occurs ``times`` times back to back."""
    keys = [key(w) for w in words]
    for n in range(1, len(keys) // times + 1):
        for p in range(len(keys) - times * n + 1):
            if all(keys[p + i * n : p + (i + 1) * n] == keys[p : p + n] for i in range(times)):
                return True
    return False


# --- the contract every event stream keeps ----------------------------------------------


@dataclass
class Checker:
    """Checks the contract of the policy's output event by event."""

    audio_ms: int = 0  # audio seen so far
    next_index: int = 0  # the index the next SentenceEnd must carry
    begun: set[int] = field(default_factory=set)
    fixed: dict[int, list[str]] = field(default_factory=dict)
    last: dict[int, ResultChanged] = field(default_factory=dict)
    last_end_ms: int = 0

    def see(self, events: Iterable[RecognizerEvent], audio_end: float) -> None:
        self.audio_ms = max(self.audio_ms, round(audio_end * 1000))
        for e in events:
            match e:
                case SentenceBegin():
                    assert e.index == self.next_index, "a begin for the open sentence only"
                    assert e.index not in self.begun, "one begin per sentence"
                    assert e.time_ms >= self.last_end_ms
                    self.begun.add(e.index)
                case ResultChanged():
                    assert e.index == self.next_index, "partials of the open sentence only"
                    assert e.index in self.begun, "begin before partials"
                    fixed, unfixed = e.fixed.split(), e.unfixed.split()
                    assert e.text.split() == fixed + unfixed
                    previous = self.fixed.get(e.index, [])
                    assert fixed[: len(previous)] == previous, "fixed words never change"
                    assert [w.text for w in e.words] == fixed
                    held = self.last.get(e.index)
                    if held is not None:
                        assert e.time_ms > held.time_ms
                        assert (e.text, e.fixed, e.unfixed) != (held.text, held.fixed, held.unfixed)
                    else:
                        assert e.text, "no empty first partial"
                    assert e.time_ms <= self.audio_ms
                    self.fixed[e.index] = fixed
                    self.last[e.index] = e
                case SentenceEnd():
                    assert e.index == self.next_index, "indexes grow by one"
                    assert e.index in self.begun, "begin before end"
                    words = e.text.split()
                    assert words, "no empty sentence"
                    previous = self.fixed.get(e.index, [])
                    assert words[: len(previous)] == previous, "a final keeps the fixed words"
                    assert [w.text for w in e.words] == words
                    assert self.last_end_ms <= e.begin_ms <= e.time_ms <= self.audio_ms
                    assert e.words[0].start_ms == e.begin_ms
                    assert e.words[-1].end_ms == e.time_ms
                    t = e.begin_ms
                    for w in e.words:
                        assert t <= w.start_ms <= w.end_ms
                        t = w.end_ms
                    self.last_end_ms = e.time_ms
                    self.next_index += 1
                case _:
                    raise AssertionError(f"unexpected event {e!r}")


def check(events: Sequence[RecognizerEvent], audio_end: float) -> None:
    Checker().see(events, audio_end)


# --- LocalAgreement-2 -------------------------------------------------------------------


def plain(**tunables: Any) -> StreamingPolicy:
    """Textbook LocalAgreement-2: no context margin, no phrases, every new word shown."""
    return StreamingPolicy(min_context_s=0.0, max_sentence_s=None, eager_partials=True, **tunables)


def test_first_hypothesis_is_tentative() -> None:
    p = plain()
    assert p.receive(hyp("Hello world", 1.5)) == [
        SentenceBegin(0, 500),
        ResultChanged(0, 1500, "Hello world", fixed="", unfixed="Hello world"),
    ]


def test_two_agreeing_hypotheses_commit() -> None:
    p = plain()
    p.receive(hyp("Hello world", 1.5))
    assert p.receive(hyp("Hello world how", 1.8)) == [
        ResultChanged(
            0,
            1800,
            "Hello world how",
            fixed="Hello world",
            unfixed="how",
            words=(Word("Hello", 500, 800), Word("world", 850, 1150)),
        )
    ]


def test_agreement_ignores_case_and_punctuation_and_keeps_the_newer_spelling() -> None:
    p = plain()
    p.receive(hyp("hello, World", 1.5))
    [change] = p.receive(hyp("Hello world, yes", 1.9))
    assert isinstance(change, ResultChanged)
    assert (change.fixed, change.unfixed) == ("Hello world,", "yes")


def test_a_changed_last_word_stays_tentative() -> None:
    p = plain()
    p.receive(hyp("the live strea", 1.6))
    [change] = p.receive(hyp("the live stream", 1.8))
    assert isinstance(change, ResultChanged)
    assert (change.fixed, change.unfixed) == ("the live", "stream")


def test_words_far_apart_in_time_do_not_agree() -> None:
    p = plain(agree_tolerance_s=0.5)
    p.receive(hyp("go home", 2.0, start=0.2))
    [change] = p.receive(hyp("go home now", 2.5, start=1.0))
    assert isinstance(change, ResultChanged)
    assert (change.fixed, change.unfixed) == ("", "go home now")


def test_a_missing_tail_never_retracts_fixed_words() -> None:
    p = plain()
    events = feed(
        p,
        hyp("one two three four", 2.0),
        hyp("one two three four five", 2.3),
        hyp("one two", 2.6),  # the model lost its tail
        hyp("one two three four five six", 2.9),
    )
    check(events, 2.9)
    assert [(c.fixed, c.unfixed) for c in changes(events)] == [
        ("", "one two three four"),
        ("one two three four", "five"),
        ("one two three four", ""),
        ("one two three four", "five six"),
    ]


def test_identical_hypotheses_emit_nothing_new() -> None:
    p = plain()
    feed(p, hyp("Hello world", 1.5), hyp("Hello world", 1.7))
    assert p.receive(hyp("Hello world", 1.9)) == []


def test_stale_hypotheses_are_ignored() -> None:
    p = StreamingPolicy()
    feed(p, hyp("Hello world", 1.5))
    assert p.receive(hyp("Goodbye world", 1.5)) == []
    assert p.receive(hyp("Goodbye world", 1.2)) == []
    assert p.stats.hypotheses == 1


# --- what partials show and when words commit (the defaults) ----------------------------


def test_partials_show_words_two_hypotheses_agree_on() -> None:
    p = StreamingPolicy()
    assert p.receive(hyp("Hello world", 1.5)) == []  # seen once: not shown yet
    assert p.receive(hyp("Hello world how", 1.8)) == [
        SentenceBegin(0, 500),
        # "world" ends 0.65 s before the audio does: agreed on, shown, not fixed yet
        ResultChanged(
            0, 1800, "Hello world", fixed="Hello", unfixed="world", words=(Word("Hello", 500, 800),)
        ),
    ]
    [change] = p.receive(hyp("Hello world how are", 2.2))
    assert isinstance(change, ResultChanged)
    assert (change.fixed, change.unfixed) == ("Hello world", "how")


def test_eager_partials_show_the_newest_hypothesis() -> None:
    p = StreamingPolicy(eager_partials=True)
    assert changes(p.receive(hyp("Hello world", 1.5)))[0].unfixed == "Hello world"


def test_a_word_commits_once_audio_after_it_was_heard() -> None:
    p = StreamingPolicy(min_context_s=1.0, eager_partials=True)
    p.receive(hyp("one two three", 1.6))
    assert p.receive(hyp("one two three", 1.75)) == []  # "one" ends at 0.8: not yet
    [change] = p.receive(hyp("one two three", 1.9))
    assert isinstance(change, ResultChanged)
    assert change.fixed == "one"


def test_a_period_where_the_window_stopped_is_not_committed() -> None:
    p = plain()
    feed(p, hyp("we are done.", 1.8))
    [change] = p.receive(hyp("we are done.", 2.1))
    assert isinstance(change, ResultChanged)
    assert (change.fixed, change.unfixed) == ("we are", "done.")
    # The speaker went on: "done." was the window's end, not the sentence's.
    events = p.receive(hyp("we are done so", 2.4))
    assert ends(events) == []
    assert changes(events)[0].fixed == "we are done"


# --- sentence ends ----------------------------------------------------------------------


def test_committed_sentence_punctuation_ends_a_sentence() -> None:
    ref = speak("Hello world. How are you?")
    p = plain()
    events = feed(p, heard(ref, 0.0, 1.2), heard(ref, 0.0, 1.8))
    assert events[-3:] == [
        SentenceEnd(
            0, 1150, 500, "Hello world.", (Word("Hello", 500, 800), Word("world.", 850, 1150))
        ),
        SentenceBegin(1, 1500),
        ResultChanged(1, 1800, "How", fixed="", unfixed="How"),
    ]
    assert p.window_start == 1.15
    assert p.prompt == "Hello world."


def test_a_lower_case_word_after_a_period_still_starts_a_sentence() -> None:
    # Whisper often starts a window in lower case.
    ref = speak("That is all. thank you all")
    assert texts(run(plain(), ref)) == ["That is all.", "thank you all"]


@pytest.mark.parametrize(
    "text",
    [
        "We met Mr. Smith and Dr. Jones there",
        "They moved to the U.S. last year",
        "and then... we simply left",
    ],
)
def test_titles_initials_and_ellipses_do_not_end_a_sentence(text: str) -> None:
    ref = speak(text)
    p = StreamingPolicy(max_sentence_s=None)
    events: list[RecognizerEvent] = []
    for t in steps(ref[-1].end + 0.5, 0.5):
        events += p.receive(heard(ref, p.window_start, t))
    assert ends(events) == []
    assert texts(p.finish(ref[-1].end + 0.5)) == [text]


def test_silence_ends_a_sentence_without_punctuation() -> None:
    ref = speak("so that is how it works")
    end = ref[-1].end
    p = StreamingPolicy()
    feed(p, heard(ref, 0.0, end + 0.1), heard(ref, 0.0, end + 0.3))
    assert p.silence(end, end + 0.3) == []  # too short
    events = p.silence(end, end + 0.7)
    assert texts(events) == ["so that is how it works"]
    assert p.window_start == pytest.approx(end + 0.5)  # into the silence: nothing pending


def test_silence_commits_the_words_the_last_hypothesis_placed_before_it() -> None:
    # The adapter stops decoding when the VAD hears nothing: one hypothesis saw the tail.
    ref = speak("Good evening everyone")
    end = ref[-1].end
    p = StreamingPolicy()
    feed(p, heard(ref, 0.0, 0.9), heard(ref, 0.0, 1.3), heard(ref, 0.0, end + 0.1))
    events = p.silence(end, end + 0.3) + p.silence(end + 0.3, end + 0.7)  # reported in pieces
    assert texts(events) == ["Good evening everyone"]


def test_silence_waits_for_a_hypothesis_that_reaches_it() -> None:
    ref = speak("Good evening everyone")
    end = ref[-1].end
    p = StreamingPolicy()
    feed(p, heard(ref, 0.0, 0.9), heard(ref, 0.0, 1.3))
    assert p.silence(end, end + 1.0) == []  # "everyone" is not transcribed yet
    assert p.window_start == 0.0
    events = p.receive(heard(ref, 0.0, end + 1.0))
    assert texts(events) == ["Good evening everyone"]


def test_silence_trims_an_empty_window() -> None:
    p = StreamingPolicy()
    assert p.silence(0.0, 0.5) == []
    assert p.window_start == 0.0
    assert p.silence(0.0, 3.0) == []
    assert p.window_start == pytest.approx(2.8)


def test_a_segment_end_two_hypotheses_agree_on_ends_a_sentence() -> None:
    ref = speak("so that is it then we go on")
    it_end = ref[3].end
    p = plain()
    events = feed(
        p,
        heard(ref, 0.0, 2.2, segment_ends=[it_end]),
        heard(ref, 0.0, 2.6, segment_ends=[it_end + 0.1]),
    )
    assert texts(events) == ["so that is it"]
    events += p.receive(heard(ref, p.window_start, 3.5))
    events += p.finish(3.5)
    check(events, 3.5)
    assert texts(events) == ["so that is it", "then we go on"]


def test_a_segment_end_seen_once_does_not_end_a_sentence() -> None:
    ref = speak("so that is it then we go on")
    p = plain()
    events = feed(
        p,
        heard(ref, 0.0, 2.2, segment_ends=[ref[3].end]),
        heard(ref, 0.0, 2.6),
        heard(ref, 0.0, 3.0, segment_ends=[ref[3].end]),
    )
    assert ends(events) == []


def test_a_segment_end_inside_fixed_text_is_too_late() -> None:
    ref = speak("so that is it then we go on")
    p = plain()
    feed(p, heard(ref, 0.0, 2.2), heard(ref, 0.0, 2.6))  # "so that is it then" is fixed
    events = feed(
        p,
        heard(ref, 0.0, 2.9, segment_ends=[ref[3].end]),
        heard(ref, 0.0, 3.2, segment_ends=[ref[3].end]),
    )
    assert ends(events) == []


def test_finish_ends_the_pending_sentence() -> None:
    ref = speak("Welcome back. See you next week")
    p = StreamingPolicy()
    events = feed(p, heard(ref, 0.0, 1.5), heard(ref, 0.0, 2.0), heard(ref, 0.0, 3.0))
    assert texts(events) == ["Welcome back."]
    events += p.finish(3.0)
    check(events, 3.0)
    assert texts(events) == ["Welcome back.", "See you next week"]
    assert p.finish(3.5) == []
    assert p.receive(heard(ref, 0.0, 4.0)) == []
    assert p.silence(3.0, 5.0) == []


def test_finish_with_nothing_said_emits_nothing() -> None:
    p = StreamingPolicy()
    assert p.finish(10.0) == []


# --- long sentences in phrases ----------------------------------------------------------

LONG = "so we went down to the old market and we bought some fresh bread there then we walked home"


def test_a_long_sentence_is_finalized_in_phrases_at_clause_breaks() -> None:
    ref = speak(LONG)  # 18 words, 6.3 s, no punctuation
    p = StreamingPolicy(max_sentence_s=3.0)
    events = run(p, ref)
    check(events, ref[-1].end + 1.0)
    assert texts(events) == [
        "so we went down to the old market",
        "and we bought some fresh bread there",
        "then we walked home",
    ]


def test_a_comma_is_the_best_phrase_break() -> None:
    ref = speak("so we went down to the old market, bought some fresh bread and walked home")
    assert texts(run(StreamingPolicy(max_sentence_s=3.0), ref))[0] == (
        "so we went down to the old market,"
    )


def test_phrase_ends_keep_the_window_for_context() -> None:
    ref = speak(LONG + ". Next")
    p = StreamingPolicy(max_sentence_s=3.0)
    events: list[RecognizerEvent] = []
    for t in steps(ref[-2].end + 0.2, 0.5):
        events += p.receive(heard(ref, p.window_start, t))
    assert len(ends(events)) >= 2  # phrases of the sentence ended...
    assert p.window_start == 0.0  # ...but the model still hears all of it
    assert p.prompt == ""
    events += p.receive(heard(ref, 0.0, ref[-1].end + 0.9))  # "Next" committed
    assert p.window_start == ref[-2].end
    assert p.prompt == LONG + "."


def test_without_a_phrase_limit_a_sentence_ends_at_its_end() -> None:
    ref = speak(LONG + ".")
    assert texts(run(StreamingPolicy(max_sentence_s=None), ref)) == [LONG + "."]


# --- a bounded window ---------------------------------------------------------------------


def test_a_long_sentence_is_cut_to_keep_the_window_bounded() -> None:
    text = " ".join(f"word{i}" for i in range(120))  # 42 s, no punctuation
    ref = speak(text)
    p = plain(max_window_s=6.0)
    events: list[RecognizerEvent] = []
    end = ref[-1].end + 1.0
    for t in steps(end, 0.5):
        assert t - p.window_start <= 6.0 + 0.5 + 1e-9
        events += p.receive(heard(ref, p.window_start, t))
    events += p.finish(end)
    check(events, end)
    assert len(ends(events)) >= 5
    assert " ".join(texts(events)) == text
    assert p.stats.forced_ends >= 5
    assert p.stats.dropped_audio_s == 0.0


def test_phrase_ends_trim_a_window_that_grew_too_long() -> None:
    text = " ".join(f"word{i}" for i in range(120))
    ref = speak(text)
    p = StreamingPolicy(max_window_s=6.0, max_sentence_s=2.0)
    for t in steps(ref[-1].end, 0.5):
        assert t - p.window_start <= 6.5 + 1e-9
        p.receive(heard(ref, p.window_start, t))
    assert p.stats.forced_ends == 0  # a phrase end was always there to trim at


def test_the_window_stays_bounded_when_hypotheses_never_agree() -> None:
    rng = random.Random(7)
    vocab = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    p = StreamingPolicy(max_window_s=4.0)
    events: list[RecognizerEvent] = []
    for t in steps(30.0, 0.5):
        ws = p.window_start
        assert t - ws <= 4.5 + 1e-9
        n = int((t - ws) / 0.4)
        words = tuple(
            HypWord(f" {rng.choice(vocab)}{rng.randrange(1000)}", ws + 0.4 * i, ws + 0.4 * i + 0.3)
            for i in range(n)
        )
        events += p.receive(Hypothesis(words, ws, t))
    check(events, 30.0)
    assert ends(events)  # forced out of the newest reading


# --- overlap ------------------------------------------------------------------------------


def test_committed_words_transcribed_again_are_skipped() -> None:
    ref = speak("Hello world. How are you today")
    p = plain()
    events = feed(p, heard(ref, 0.0, 1.2), heard(ref, 0.0, 1.8), heard(ref, 0.0, 2.3))
    assert texts(events) == ["Hello world."]
    # The next window starts early (the adapter lagged) and reads "world." again, later.
    again = HypWord(" world.", 0.9, 1.2)
    rest = tuple(w for w in ref if w.start >= p.window_start and w.end <= 3.0)
    events += feed(p, Hypothesis((again, *rest), 0.8, 2.8), Hypothesis((again, *rest), 0.8, 3.0))
    events += p.finish(3.0)
    check(events, 3.0)
    assert texts(events) == ["Hello world.", "How are you today"]
    assert all("world" not in c.text for c in changes(events) if c.index == 1)


def test_jittered_times_of_committed_words_are_skipped() -> None:
    ref = speak("one two three four five six")
    p = plain()
    events = feed(p, heard(ref, 0.0, 1.7), heard(ref, 0.0, 2.0))  # "one two three" fixed
    shifted = tuple(HypWord(w.text, w.start + 0.12, w.end + 0.12) for w in ref[:5])
    events += p.receive(Hypothesis(shifted, 0.0, 2.3))
    events += p.receive(Hypothesis(tuple(ref), 0.0, 2.6))
    check(events, 2.6)
    assert changes(events)[-1].text == "one two three four five six"


def test_a_committed_word_timed_badly_is_still_recognized() -> None:
    # "in" was committed stretched over a pause; the model now places it where it was said.
    p = plain()
    first = (HypWord(" the", 0.5, 0.8), HypWord(" workshop.", 0.8, 1.2), HypWord(" in", 1.2, 3.0))
    feed(p, Hypothesis(first, 0.0, 3.1), Hypothesis((*first, HypWord(" this", 3.0, 3.3)), 0.0, 3.4))
    again = (*first[:2], HypWord(" In", 3.0, 3.1), HypWord(" this", 3.1, 3.4))
    events = feed(p, Hypothesis(again, 0.0, 3.5), Hypothesis(again, 0.0, 3.6)) + p.finish(3.6)
    assert " ".join(shown_words(ends(events))) == "in this"


def test_a_word_said_again_right_after_is_kept() -> None:
    text = "You must notice that. That is all for today."
    ref = speak(text)
    assert texts(run(StreamingPolicy(), ref)) == ["You must notice that.", "That is all for today."]


# --- hallucinations -----------------------------------------------------------------------


def test_a_no_speech_window_is_dropped() -> None:
    p = StreamingPolicy()
    silent = [
        hyp("Thanks for the music", t, no_speech_prob=0.9, avg_logprob=-1.5)
        for t in (2.0, 2.5, 3.0)
    ]
    assert feed(p, *silent) == []
    assert p.finish(3.0) == []
    assert p.stats.silent_hypotheses == 3


def test_a_confident_window_with_a_high_no_speech_prob_is_kept() -> None:
    p = plain()
    events = p.receive(hyp("Thanks for the music", 2.0, no_speech_prob=0.9, avg_logprob=-0.3))
    assert changes(events)[0].text == "Thanks for the music"


@pytest.mark.parametrize(
    "text",
    [
        "you",
        "You",
        "Thank you.",
        "Thanks for watching!",
        "Bye.",
        "[Music]",
        "(silence)",
        "(upbeat music)",
        "♪ la la la ♪",
        "Thank you. Bye.",
        "[BLANK_AUDIO]",
    ],
)
def test_known_silence_phrases_never_reach_viewers(text: str) -> None:
    p = plain()
    events = feed(p, *(hyp(text, t) for t in (2.0, 2.5, 3.0, 3.5)))
    events += p.silence(3.0, 4.0)
    events += p.finish(4.0)
    assert events == []
    assert p.stats.dropped_words > 0


def test_a_silence_phrase_after_a_sentence_is_dropped() -> None:
    ref = speak("That is all for today.")
    p = StreamingPolicy()
    events = feed(p, heard(ref, 0.0, 2.5), heard(ref, 0.0, 2.8))
    tail = (*ref, *speak("Thank you.", start=3.0))
    events += feed(p, Hypothesis(tail, 0.0, 4.0), Hypothesis(tail, 0.0, 4.5))
    events += p.finish(4.5)
    check(events, 4.5)
    assert texts(events) == ["That is all for today."]
    assert "Thank" not in shown_words(events)


def test_silence_phrase_words_within_a_sentence_are_kept() -> None:
    ref = speak("I want to thank you for coming")
    p = plain()
    feed(p, heard(ref, 0.0, 1.6), heard(ref, 0.0, 1.9))  # "I want to" fixed
    events = p.receive(heard(ref, 0.0, 2.5))  # adds just "thank you"
    assert changes(events)[-1].text == "I want to thank you"
    assert texts(run(StreamingPolicy(), speak("Thank you for watching and see you."))) == [
        "Thank you for watching and see you."
    ]


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("I will go I will go I will go I will go", "I will go"),
        ("so the the the the cat sat", "so the cat sat"),
        ("we can do it. we can do it. we can do it. we can", "we can do it."),
    ],
)
def test_repetition_loops_are_cut(text: str, kept: str) -> None:
    p = plain()
    events = feed(p, hyp(text, 5.0), hyp(text, 5.5))
    events += p.finish(5.5)
    check(events, 5.5)
    assert " ".join(texts(events)) == kept
    assert not any(has_loop(e.text.split()) for e in events if isinstance(e, ResultChanged))


def test_a_loop_that_continues_committed_words_is_cut() -> None:
    p = plain()
    feed(p, hyp("no no", 1.2), hyp("no no", 1.5))  # "no no" fixed
    events = feed(p, hyp("no no no no no way", 2.6), hyp("no no no no no way", 2.9))
    events += p.finish(3.0)
    assert texts(events) == ["no no way"]


def test_words_squeezed_past_the_audio_are_dropped() -> None:
    # The decoder ran on and repeated itself in no time at all.
    words = (
        HypWord(" Welcome", 0.0, 0.4),
        HypWord(" back.", 0.4, 0.8),
        HypWord(" Welcome", 0.8, 0.8),
        HypWord(" back.", 0.8, 0.82),
        HypWord(" Welcome", 0.82, 0.82),
    )
    p = plain()
    events = p.receive(Hypothesis(words, 0.0, 1.0))
    assert changes(events)[0].text == "Welcome back."
    assert p.stats.dropped_words == 3


def test_a_trailing_ellipsis_is_dropped() -> None:
    p = plain()
    events = p.receive(hyp("we look at...", 2.0))
    assert changes(events)[0].text == "we look at"


def test_words_inside_a_long_silence_are_dropped() -> None:
    p = plain()
    p.silence(2.0, 4.0)
    words = (HypWord(" Hello", 0.5, 0.9), HypWord(" okay", 2.5, 2.8))
    events = feed(p, Hypothesis(words, 0.0, 4.0), Hypothesis(words, 0.0, 4.2))
    events += p.finish(4.2)
    assert texts(events) == ["Hello"]
    assert "okay" not in shown_words(events)


def test_a_tentative_word_later_found_inside_silence_is_dropped() -> None:
    p = plain()
    words = (HypWord(" Hello", 0.5, 0.9), HypWord(" okay", 2.5, 2.8))
    feed(p, Hypothesis(words[:1], 0.0, 1.0), Hypothesis(words, 0.0, 3.0))
    events = p.silence(1.0, 3.5)
    assert texts(events) == ["Hello"]
    assert texts(p.finish(3.5)) == []


# --- prompt, stats, tunables --------------------------------------------------------------


def test_the_prompt_is_the_latest_final_text_in_whole_words() -> None:
    ref = speak("First sentence here. Second one now. Third and last.")
    p = StreamingPolicy(prompt_chars=20)
    run(p, ref)
    assert p.prompt == "now. Third and last."
    q = StreamingPolicy(prompt_chars=0)
    run(q, ref)
    assert q.prompt == ""


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_window_s": 0.0},
        {"silence_end_s": 0.0},
        {"agree_tolerance_s": -1.0},
        {"min_context_s": -0.1},
        {"max_sentence_s": 0.0},
        {"repeat_limit": 1},
        {"prompt_chars": -1},
    ],
)
def test_bad_tunables_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        StreamingPolicy(**kwargs)


def test_default_silence_phrases_include_the_classics() -> None:
    assert {"you", "Thank you.", "Thanks for watching!", "Bye."} <= DEFAULT_SILENCE_PHRASES


# --- properties -------------------------------------------------------------------------

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar"
    " papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu relay caption stream"
    " viewer audio model window sentence partial final merger server client socket"
)
VOCAB = tuple(WORDS.split())


@dataclass(frozen=True)
class Talk:
    """A simulated speaker: reference words with times."""

    words: tuple[HypWord, ...]
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)

    @property
    def end(self) -> float:
        return self.words[-1].end


@st.composite
def talks(draw: st.DrawFn, max_sentences: int = 5, max_words: int = 25) -> Talk:
    n = draw(st.integers(1, max_sentences))
    t = draw(st.floats(0.0, 2.0))
    words: list[HypWord] = []
    sentences: list[str] = []
    for _ in range(n):
        tokens = draw(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=max_words))
        tokens[0] = tokens[0].capitalize()
        tokens[-1] += draw(st.sampled_from([".", "?", "!"]))
        for token in tokens:
            duration = draw(st.floats(0.2, 0.5))
            words.append(HypWord(" " + token, round(t, 3), round(t + duration, 3)))
            t += duration + draw(st.floats(0.0, 0.3))
        t += draw(st.floats(0.0, 1.5))
        sentences.append(" ".join(tokens))
    keys = [key(w.text) for w in words]
    assume(not has_loop(keys))
    return Talk(tuple(words), tuple(sentences))


@dataclass
class Adapter:
    """Drives a policy as the engine does: a step of audio, a hypothesis, the VAD's silence."""

    talk: Talk
    step: float
    max_window_s: float = 12.0
    vad: bool = False
    skip_silent_steps: bool = False
    segment_ends: bool = False
    early_window_s: float = 0.0  # the window starts this much before window_start
    jitter_s: float = 0.0  # word times move by up to this much, each hypothesis anew
    noisy: bool = False  # a misheard last word or a lost tail, now and then
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    checker: Checker = field(default_factory=Checker)
    events: list[RecognizerEvent] = field(default_factory=list)
    overshoot: float = 0.0  # most audio a window held past max_window_s plus the step
    tunables: dict[str, Any] = field(default_factory=dict)
    policy: StreamingPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.policy = StreamingPolicy(max_window_s=self.max_window_s, **self.tunables)

    def hypothesis(self, since: float, t: float) -> Hypothesis | None:
        start = max(0.0, self.policy.window_start - self.early_window_s)
        said = [w for w in self.talk.words if (w.start + w.end) / 2 >= start and w.end <= t + 1e-9]
        if (
            self.vad
            and self.skip_silent_steps
            and not any(w.end > since and w.start < t for w in self.talk.words)
        ):
            return None
        rng = self.rng
        words: list[HypWord] = []
        for w in said:
            shift = rng.uniform(-self.jitter_s, self.jitter_s)
            words.append(HypWord(w.text, round(w.start + shift, 3), round(w.end + shift, 3)))
        if self.noisy and words:
            roll = rng.random()
            if roll < 0.2:  # the last word misheard
                last = words[-1]
                words[-1] = HypWord(" " + rng.choice(VOCAB) + "x", last.start, last.end)
            elif roll < 0.3:  # the tail lost
                del words[rng.randrange(len(words)) :]
        seg: tuple[float, ...] = ()
        if self.segment_ends:
            seg = tuple(w.end for w in said if w.text.endswith((".", "?", "!")))
        return Hypothesis(tuple(words), start, t, seg)

    def silent_since(self, t: float) -> float | None:
        """When the silence at ``t`` began, as the VAD sees it, or None while speaking."""
        before = [w for w in self.talk.words if w.start < t]
        if before and before[-1].end > t:
            return None
        return before[-1].end if before else 0.0

    def go(self) -> list[RecognizerEvent]:
        end = self.talk.end + 1.5
        since = decoded = 0.0
        for t in steps(end, self.step):
            before = self.policy.window_start
            h = self.hypothesis(since, t)
            out: list[RecognizerEvent] = []
            if h is not None:
                # The window is bounded but for the audio since the previous hypothesis (one
                # step, more when the engine skipped steps as silent).
                window = t - before
                bound = self.max_window_s + (t - decoded)
                self.overshoot = max(self.overshoot, window - bound)
                decoded = t
                out += self.policy.receive(h)
            if self.vad:
                silent = self.silent_since(t)
                if silent is not None and silent < t:
                    out += self.policy.silence(silent, t)
            assert self.policy.window_start >= before, "window_start never decreases"
            self.checker.see(out, t)
            self.events += out
            since = t
        tail = self.policy.finish(end)
        self.checker.see(tail, end)
        self.events += tail
        return self.events


adapters = st.fixed_dictionaries(
    {
        "step": st.sampled_from([0.3, 0.5, 1.0]),
        "vad": st.booleans(),
        "skip_silent_steps": st.booleans(),  # as the engine does, with a VAD only
        "segment_ends": st.booleans(),
        "tunables": st.sampled_from(
            [
                {},
                {"min_context_s": 0.0, "max_sentence_s": None, "eager_partials": True},
                {"max_sentence_s": None},
                {"max_sentence_s": 1.5, "eager_partials": True, "min_context_s": 0.3},
            ]
        ),
    }
)


@settings(max_examples=150, deadline=None)
@given(talk=talks(), options=adapters)
def test_perfect_hypotheses_give_the_reference(talk: Talk, options: dict[str, object]) -> None:
    adapter = Adapter(talk, **options)  # type: ignore[arg-type]
    events = adapter.go()
    assert " ".join(texts(events)) == talk.text
    assert adapter.overshoot <= 1e-9
    if adapter.tunables.get("max_sentence_s", 3.0) is None and not adapter.policy.stats.forced_ends:
        assert texts(events) == list(talk.sentences)


@settings(max_examples=100, deadline=None)
@given(
    talk=talks(max_sentences=3, max_words=20),
    step=st.sampled_from([0.3, 0.5, 1.0]),
    early=st.floats(0.0, 1.0),
    vad=st.booleans(),
)
def test_an_overlapping_jittered_window_gives_the_reference(
    talk: Talk, step: float, early: float, vad: bool
) -> None:
    adapter = Adapter(talk, step, vad=vad, early_window_s=early, jitter_s=0.04)
    events = adapter.go()
    assert " ".join(texts(events)) == talk.text


@settings(max_examples=150, deadline=None)
@given(
    talk=talks(),
    options=adapters,
    seed=st.integers(0, 2**32 - 1),
    max_window=st.sampled_from([3.0, 6.0, 12.0]),
    early=st.sampled_from([0.0, 0.5]),
)
def test_noisy_hypotheses_keep_the_contract(
    talk: Talk, options: dict[str, object], seed: int, max_window: float, early: float
) -> None:
    adapter = Adapter(
        talk,
        max_window_s=max_window,
        **options,  # type: ignore[arg-type]
        early_window_s=early,
        jitter_s=0.05,
        noisy=True,
        rng=random.Random(seed),
    )
    events = adapter.go()
    assert adapter.overshoot <= 1e-9
    # finish() leaves nothing pending: the last partial shown is in the finals.
    last = changes(events)
    if last and last[-1].text:
        assert last[-1].index < len(ends(events))
    assert not has_loop(" ".join(texts(events)).split())


@settings(max_examples=100, deadline=None)
@given(
    talk=talks(max_sentences=3, max_words=15),
    step=st.sampled_from([0.3, 0.5]),
)
def test_jittered_times_emitted_are_ordered_and_inside_the_audio(talk: Talk, step: float) -> None:
    adapter = Adapter(talk, step, vad=True, jitter_s=0.2)
    adapter.go()  # the checker asserts the times


def phrase_texts() -> st.SearchStrategy[str]:
    phrases = [*sorted(DEFAULT_SILENCE_PHRASES), "[Music]", "(silence)", "(soft music)", "♪ ♪"]
    return st.lists(st.sampled_from(phrases), min_size=1, max_size=3).map(" ".join)


@st.composite
def hallucinations(draw: st.DrawFn) -> list[Hypothesis]:
    out: list[Hypothesis] = []
    t = 0.0
    for _ in range(draw(st.integers(1, 8))):
        t += draw(st.sampled_from([0.3, 0.5, 1.0]))
        kind = draw(st.sampled_from(["phrase", "no_speech"]))
        if kind == "phrase":
            text = draw(phrase_texts())
            out.append(hyp(text, t + 2.0, start=t))
        else:
            words = draw(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=6))
            h = hyp(" ".join(words), t + 2.0, start=t, no_speech_prob=draw(st.floats(0.61, 1.0)))
            out.append(
                Hypothesis(
                    h.words,
                    h.window_start,
                    h.audio_end,
                    (),
                    h.no_speech_prob,
                    draw(st.floats(-5.0, -1.01)),
                )
            )
    return out


@settings(max_examples=150, deadline=None)
@given(hyps=hallucinations())
def test_hallucinations_emit_nothing(hyps: list[Hypothesis]) -> None:
    p = StreamingPolicy()
    events = feed(p, *hyps)
    events += p.finish(hyps[-1].audio_end)
    assert events == []


@settings(max_examples=100, deadline=None)
@given(
    prefix=st.lists(st.sampled_from(VOCAB), max_size=4),
    unit=st.lists(st.sampled_from(VOCAB), min_size=1, max_size=4),
    copies=st.integers(3, 8),
    partial=st.integers(0, 3),
)
def test_repetition_loops_never_reach_viewers(
    prefix: list[str], unit: list[str], copies: int, partial: int
) -> None:
    assume(not set(prefix) & set(unit) and not has_loop(unit, 2) and not has_loop(prefix))
    words = prefix + unit * copies + unit[: min(partial, len(unit) - 1)]
    p = StreamingPolicy()
    events: list[RecognizerEvent] = []
    for i in range(4):
        events += p.receive(hyp(" ".join(words), 10.0 + i * 0.5, word_s=0.1))
    events += p.finish(12.0)
    check(events, 12.0)
    for e in events:
        if isinstance(e, ResultChanged | SentenceEnd):
            assert not has_loop(e.text.split())
    assert " ".join(texts(events)).split() == prefix + unit
