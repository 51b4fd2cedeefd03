"""The local engine's streaming policy: successive hypotheses in, recognizer events out.

Sans-I/O, like websockets' ``Protocol``: no clock, no I/O, no awaiting. Time is audio time,
seconds of stream audio as in :mod:`relay.core.hypothesis`; events carry integer
milliseconds as in :mod:`relay.core.events`. The adapter that owns recognizer and VAD:

1. decodes the audio ``[policy.window_start, now)`` (optionally prompted with
   :attr:`StreamingPolicy.prompt`) and hands the hypothesis to
   :meth:`~StreamingPolicy.receive`, in audio order;
2. reports audio its VAD found silent with :meth:`~StreamingPolicy.silence` (a growing run
   ``(since, now)`` may be reported again and again);
3. calls :meth:`~StreamingPolicy.finish` once at the end of the stream;

and forwards every event returned, in order, to the merger. Audio before
:attr:`~StreamingPolicy.window_start` is done with: drop it from the next window.

How words travel (LocalAgreement-2): a word is *tentative* while only the newest hypothesis
has it (partials show it once the last two hypotheses agree on it), *committed* (``fixed``)
once two successive hypotheses agree on it and the newer one heard ``min_context_s`` of audio
after it, and *final* when its sentence ends. Committed words never change, and a final
never loses a word its partials showed as fixed. A sentence ends at a committed word with
sentence punctuation (taken only from a hypothesis that went on past it), at a model segment
end that two hypotheses place alike, after ``silence_end_s`` of silence, when the window
outgrows ``max_window_s`` (forced), or at :meth:`~StreamingPolicy.finish`. A sentence longer
than ``max_sentence_s`` is finalized in phrases (at a comma or before a conjunction where it
can), which keeps final latency low without trimming the model's context. Whisper's
failures over silence and noise (no-speech windows, stock phrases such as "Thank you.",
``[Music]``-style annotations, words inside reported silence, words squeezed past the end of
the audio, repetition loops) are dropped before they can be shown.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from relay.core.events import RecognizerEvent, ResultChanged, SentenceBegin, SentenceEnd, Word
from relay.core.hypothesis import Hypothesis

__all__ = ["DEFAULT_SILENCE_PHRASES", "StreamingPolicy", "StreamingStats"]

#: What Whisper says over silence, music or noise: dropped when it is all that is new.
DEFAULT_SILENCE_PHRASES: frozenset[str] = frozenset(
    {
        "you",
        "Thank you.",
        "Thank you very much.",
        "Thank you so much.",
        "Thanks.",
        "Thanks for watching!",
        "Thank you for watching.",
        "Thank you so much for watching.",
        "Thanks for watching and see you next time.",
        "Please subscribe.",
        "Like and subscribe.",
        "Bye.",
        "Bye-bye.",
        "Goodbye.",
        "Music",
        "Applause",
        "Silence",
        "Blank audio",
        "Subtitles by the Amara.org community",
    }
)

_SEGMENT_TOLERANCE_S = 0.4  # two segment ends, or a segment end and a word end, this close agree
_SILENCE_PAD_S = 0.2  # audio kept before speech when the window is trimmed into silence
_SILENCE_GAP_S = 0.1  # silence reports this close are one run
_IN_SILENCE = 0.8  # a word this much inside a long silence is a hallucination
_TAIL_GUARD_S = 0.3  # a forced commit leaves words ending this close to the audio's end
_SQUEEZED_S = 0.03  # a word this short is squeezed into one timestamp frame (0.02 s)
_HISTORY = 48  # committed words kept to align overlaps and catch loops across sentences
_ALIGN_WORDS = 3  # committed words matched to find where a hypothesis' new words begin

# . ? ! and the CJK full stop, the fullwidth ? and !
_SENTENCE_PUNCT = (".", "?", "!", "\u3002", "\uff1f", "\uff01")
_CLOSING = "\"')]}\u00bb\u201d\u2019"  # and closing guillemet, double and single quotes
_HONORIFICS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "mt"})
_INITIALS = re.compile(r"(?:[A-Za-z]\.)+")
_CONJUNCTIONS = frozenset(
    {"and", "but", "or", "so", "because", "when", "while", "where", "which", "who", "if"}
    | {"then", "although", "though", "until", "unless", "whereas", "since"}
)
_NO_BREAK_AFTER = _CONJUNCTIONS | frozenset(
    {"a", "an", "the", "to", "of", "in", "on", "at", "for", "with", "from", "by", "as", "into"}
    | {"my", "your", "our", "their", "his", "her", "its", "this", "that", "these", "those"}
    | {"is", "are", "was", "were", "be", "i", "we", "you", "they", "he", "she", "it"}
)
_BREAK_GAP_S = 0.2  # a pause this long between words is a clause break
_ANNOTATION = {"[": "]", "(": ")", "*": "*", "♪": "♪", "♫": "♫"}


@dataclass(frozen=True, slots=True)
class StreamingStats:
    """Counters of a policy's work, for metrics."""

    hypotheses: int = 0  # hypotheses taken in (stale ones are not counted)
    silent_hypotheses: int = 0  # whole windows dropped as no speech
    dropped_words: int = 0  # words the hallucination guard kept from viewers
    forced_ends: int = 0  # times the window outgrew max_window_s
    dropped_audio_s: float = (
        0.0  # audio cut from the window with no sentence end to keep it bounded
    )


@dataclass(frozen=True, slots=True)
class _W:
    text: str  # as shown: stripped of surrounding space
    key: str  # compared: lower case, letters and digits only
    start: float
    end: float


class StreamingPolicy:
    """LocalAgreement-2 over a rolling window: turns successive hypotheses into recognizer events.

    One per stream. Feed it with :meth:`receive`, :meth:`silence` and :meth:`finish`; each
    returns the events to forward, in order, possibly none. Sentence indexes start at 0 and
    grow by one; every ``SentenceBegin`` comes before the ``ResultChanged`` and ``SentenceEnd``
    of its index, and nothing follows a ``SentenceEnd`` for its index. After :meth:`finish`
    every call returns ``[]``. Not thread-safe; it never blocks.

    Tunables: ``max_window_s`` bounds the audio decoded per step; ``silence_end_s`` of silence
    ends a sentence; ``agree_tolerance_s`` is how far apart two hypotheses may place a word
    and still agree on it; ``min_context_s`` is the audio a hypothesis must have heard after a
    word to commit it (0 for textbook LocalAgreement-2); ``max_sentence_s`` (``None``: no
    limit) is the longest a sentence grows before a phrase of it is finalized;
    ``eager_partials`` shows every word of the newest hypothesis, not only those the last two
    agree on (faster partials, more flicker); a window with ``no_speech_prob >
    no_speech_threshold`` and ``avg_logprob < logprob_threshold`` is silence (Whisper's own
    rule); an n-gram repeated ``repeat_limit`` times in a row is a loop; :attr:`prompt` keeps
    ``prompt_chars`` of text; ``silence_phrases`` (default :data:`DEFAULT_SILENCE_PHRASES`,
    compared as words without case or punctuation) are hallucinations when one or more of
    them make up the sentences a hypothesis ends with, beyond what is committed.
    """

    def __init__(
        self,
        *,
        max_window_s: float = 12.0,
        silence_end_s: float = 0.6,
        agree_tolerance_s: float = 1.0,
        min_context_s: float = 0.8,
        no_speech_threshold: float = 0.6,
        logprob_threshold: float = -1.0,
        repeat_limit: int = 3,
        max_sentence_s: float | None = 3.0,
        eager_partials: bool = False,
        prompt_chars: int = 200,
        silence_phrases: Iterable[str] = DEFAULT_SILENCE_PHRASES,
    ) -> None:
        if max_window_s <= 0:
            raise ValueError("max_window_s must be > 0")
        if silence_end_s <= 0:
            raise ValueError("silence_end_s must be > 0")
        if agree_tolerance_s < 0:
            raise ValueError("agree_tolerance_s must be >= 0")
        if min_context_s < 0:
            raise ValueError("min_context_s must be >= 0")
        if repeat_limit < 2:
            raise ValueError("repeat_limit must be >= 2")
        if max_sentence_s is not None and max_sentence_s <= 0:
            raise ValueError("max_sentence_s must be > 0 or None")
        if prompt_chars < 0:
            raise ValueError("prompt_chars must be >= 0")
        self._max_window_s = max_window_s
        self._silence_end_s = silence_end_s
        self._agree_s = agree_tolerance_s
        self._min_context_s = min_context_s
        self._no_speech = no_speech_threshold
        self._logprob = logprob_threshold
        self._repeat_limit = repeat_limit
        self._prompt_chars = prompt_chars
        self._max_sentence_s = max_sentence_s
        self._eager = eager_partials
        phrases = (tuple(k for k in map(_key, p.split()) if k) for p in silence_phrases)
        self._phrases = frozenset(p for p in phrases if p)

        self._window_start = 0.0
        self._audio_end: float | None = None  # of the newest hypothesis taken in
        self._finished = False
        self._index = 0
        self._begun = False  # SentenceBegin of the current index sent
        self._open: list[_W] = []  # committed words of the current sentence
        self._tentative: list[_W] = []  # the newest hypothesis' words past them
        self._history: deque[_W] = deque(maxlen=_HISTORY)  # every committed word, newest last
        self._last_end: float | None = None  # end of the newest committed word
        self._shown: tuple[str, str, str] = ("", "", "")  # text, fixed, unfixed last sent
        self._shown_ms = -1  # time_ms of the last ResultChanged of the current index
        self._shown_fixed = 0  # committed words of the current sentence sent as fixed
        self._segment_ends: tuple[float, ...] = ()  # the previous hypothesis' inner ends
        self._boundaries: list[float] = []  # segment ends two hypotheses agreed on
        self._silences: list[tuple[float, float]] = []  # merged silent runs, oldest first
        self._seen_until = -1.0  # tentative words ending by then are shown
        self._prompt = ""
        self._closed: deque[tuple[float, str]] = deque()  # sentences ended in the window
        self._hypotheses = 0
        self._silent_hypotheses = 0
        self._dropped_words = 0
        self._forced_ends = 0
        self._dropped_audio_s = 0.0

    # --- state ---------------------------------------------------------------------------

    @property
    def window_start(self) -> float:
        """Audio before this time is committed or silent: leave it out of the next window.

        Never decreases. It moves to the end of each sentence that ends, into long silence
        when nothing is pending, and forward when the window outgrows ``max_window_s``.
        """
        return self._window_start

    @property
    def prompt(self) -> str:
        """The last ``prompt_chars`` of text finalized before :attr:`window_start`.

        For the recognizer's initial prompt; using it is optional.
        """
        return self._prompt

    @property
    def stats(self) -> StreamingStats:
        """A snapshot of the counters."""
        return StreamingStats(
            self._hypotheses,
            self._silent_hypotheses,
            self._dropped_words,
            self._forced_ends,
            self._dropped_audio_s,
        )

    # --- input ---------------------------------------------------------------------------

    def receive(self, hyp: Hypothesis) -> list[RecognizerEvent]:
        """Take in the recognizer's reading of ``[window_start, audio_end)``; return events.

        Hypotheses must come in audio order: one whose ``audio_end`` is not past the
        previous one's is stale and ignored. Emits at most one ``ResultChanged``, for the
        sentence open afterwards, and only when its content changed.
        """
        if self._finished or (self._audio_end is not None and hyp.audio_end <= self._audio_end):
            return []
        self._audio_end = hyp.audio_end
        self._hypotheses += 1
        events: list[RecognizerEvent] = []
        if hyp.no_speech_prob > self._no_speech and hyp.avg_logprob < self._logprob:
            self._silent_hypotheses += 1
        else:
            words = self._clean(hyp)
            new = self._guard(self._skip_committed(words))
            agreed = _agreement(self._tentative, new, self._agree_s)
            if agreed == len(new) and agreed and _punctuated(new[-1].text):
                agreed -= 1  # the model closes whatever it says when the window stops
            heard_out = hyp.audio_end - self._min_context_s
            while agreed and new[agreed - 1].end > heard_out:
                agreed -= 1  # too little audio after it yet: still likely to change
            self._commit(new[:agreed], hyp.audio_end)
            previous, self._tentative = self._tentative[agreed:], new[agreed:]
            seen = _agreement(previous, self._tentative, self._agree_s)  # seen twice: shown
            self._seen_until = self._tentative[seen - 1].end if seen else -1.0
            self._note_segments(hyp.segment_ends, words)
            events += self._close_ready()
        events += self._silence_ends()
        events += self._bound_window(hyp.audio_end)
        events += self._show(hyp.audio_end)
        return events

    def silence(self, start: float, end: float) -> list[RecognizerEvent]:
        """The VAD heard no speech over ``[start, end)``; return events.

        Reports that touch or overlap merge into one run, so a growing run may be reported
        again with a later ``end``. Once a run lasts ``silence_end_s`` and the newest
        hypothesis reached its start, the words begun before it are committed and their
        sentence ends; words placed inside such a run are dropped as hallucinations, and
        with nothing pending the window start moves into the run. A ``ResultChanged``
        (``time_ms`` = ``end``) follows when that changed what the open sentence shows.
        """
        if self._finished or end <= start:
            return []
        runs = sorted([*self._silences, (start, end)])
        merged: list[tuple[float, float]] = []
        for a, b in runs:
            if merged and a <= merged[-1][1] + _SILENCE_GAP_S:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self._silences = merged
        events = self._silence_ends()
        return events + self._show(end)

    def finish(self, audio_end: float) -> list[RecognizerEvent]:
        """End of stream at ``audio_end``: commit what is pending and end the last sentence."""
        if self._finished:
            return []
        self._finished = True
        limit = max(audio_end, self._audio_end or 0.0)
        self._commit(self._tentative, limit)
        self._tentative = []
        events = self._close_ready()
        if self._open:
            events += self._close(len(self._open) - 1)
        return events

    # --- hypothesis ----------------------------------------------------------------------

    def _clean(self, hyp: Hypothesis) -> list[_W]:
        """The hypothesis' words, less annotations, empty words and words inside silence.

        Two words in a row squeezed into a timestamp frame or less mean the decoder ran on
        past the audio (typically repeating itself): they and all after them are dropped.
        A trailing ellipsis only says the window stopped there: it is dropped too.
        """
        words = hyp.words
        for i in range(len(words) - 1):
            if all(w.end - w.start < _SQUEEZED_S for w in words[i : i + 2]):
                self._dropped_words += len(words) - i
                words = words[:i]
                break
        out: list[_W] = []
        closing: str | None = None
        for word in words:
            text = word.text.strip()
            if not text:
                continue
            if closing is None and text[0] in _ANNOTATION:
                closing = _ANNOTATION[text[0]]
                text = text[1:]
            if closing is not None:  # "[Music]", "(upbeat music)", "♪ la la ♪"
                if text.rstrip(".,!?;:").endswith(closing):
                    closing = None
                self._dropped_words += 1
                continue
            key = _key(text)
            if not key or self._in_silence(word.start, word.end):
                self._dropped_words += 1
                continue
            out.append(_W(text, key, word.start, word.end))
        if out and out[-1].text.endswith(("...", "\u2026")):
            last = out[-1]
            out[-1] = _W(last.text.rstrip(".\u2026") or last.text, last.key, last.start, last.end)
        return out

    def _in_silence(self, start: float, end: float) -> bool:
        for a, b in self._silences:
            if b - a < self._silence_end_s:
                continue
            if end <= start:
                if a <= start < b:
                    return True
            elif min(end, b) - max(start, a) >= _IN_SILENCE * (end - start):
                return True
        return False

    def _skip_committed(self, words: list[_W]) -> list[_W]:
        """The words past those already committed, which the window may transcribe again.

        By time first (a word centred before the newest committed word's end, or before the
        window start, is old), then by text: where the hypothesis repeats the last committed
        words, the first of them at about its time, new words begin right after them.
        """
        floor = self._floor()
        cut = next((i for i, w in enumerate(words) if (w.start + w.end) / 2 >= floor), len(words))
        tail = list(self._history)[-_ALIGN_WORDS:]
        best: tuple[int, int, int] | None = None  # (words matched, -distance from cut, index)
        for i in range(max(0, cut - 2), min(len(words), cut + 2) + 1):
            for k in range(min(_ALIGN_WORDS, i, len(tail)), 0, -1):
                first, old = words[i - k], tail[len(tail) - k]
                if _same(first, old) and all(
                    words[i - k + m].key == tail[len(tail) - k + m].key for m in range(1, k)
                ):
                    candidate = (k, -abs(i - cut), i)
                    if best is None or candidate > best:
                        best = candidate
                    break
        if best is not None:
            cut = best[2]
        return words[cut:]

    def _guard(self, new: list[_W]) -> list[_W]:
        """``new`` less repetition loops and trailing sentences made of stock silence phrases."""
        context = [w.key for w in self._history]
        while True:
            span = _repetition([*context, *(w.key for w in new)], self._repeat_limit, len(context))
            if span is None:
                break
            a, b = span[0] - len(context), span[1] - len(context)
            self._dropped_words += b - a
            new = new[:a] + new[b:]
        cut = len(new)  # drop trailing sentences that are only silence phrases
        while cut:
            start = cut - 1
            while start and not _ends_sentence(new[start - 1].text):
                start -= 1
            if start == 0 and self._open and not _ends_sentence(self._open[-1].text):
                break  # the words end a sentence begun before: "I want to" + "thank you"
            if not _made_of([w.key for w in new[start:cut]], self._phrases):
                break
            cut = start
        self._dropped_words += len(new) - cut
        return new[:cut]

    def _note_segments(self, segment_ends: Sequence[float], words: list[_W]) -> None:
        """Keep segment ends that this hypothesis and the previous one place alike."""
        if not words:
            inner: tuple[float, ...] = ()
        else:
            last = words[-1].start + 0.1
            inner = tuple(s for s in segment_ends if self._window_start < s <= last)
        for s in inner:
            confirmed = any(abs(s - p) <= _SEGMENT_TOLERANCE_S for p in self._segment_ends)
            known = any(abs(s - b) <= _SEGMENT_TOLERANCE_S for b in self._boundaries)
            if confirmed and not known:
                self._boundaries.append(s)
        self._segment_ends = inner

    # --- commits and sentence ends ----------------------------------------------------

    def _floor(self) -> float:
        if self._last_end is None:
            return self._window_start
        return max(self._window_start, self._last_end)

    def _commit(self, words: Sequence[_W], limit: float) -> None:
        """Commit ``words``; their times are made to follow the committed ones, up to ``limit``."""
        for w in words:
            floor = self._floor()
            start = max(w.start, floor)
            end = min(max(w.end, start), max(limit, floor))
            word = _W(w.text, w.key, min(start, end), end)
            self._open.append(word)
            self._history.append(word)
            self._last_end = end

    def _close_ready(self) -> list[RecognizerEvent]:
        events: list[RecognizerEvent] = []
        while (j := self._next_end()) is not None:
            events += self._close(j)
        if (j := self._phrase_end()) is not None:
            events += self._close(j, trim=False)
        return events

    def _next_end(self) -> int | None:
        """Where the current sentence ends by punctuation or agreed segment end, if it does.

        Never before a committed word already sent as fixed: fixed text only grows.
        """
        words = self._open
        for j in range(max(self._shown_fixed - 1, 0), len(words)):
            if _ends_sentence(words[j].text):
                return j
        candidates = [*words, *self._tentative]
        for b in sorted(self._boundaries):
            if not candidates:
                break
            n = min(range(len(candidates)), key=lambda i: abs(candidates[i].end - b))
            if abs(candidates[n].end - b) > _SEGMENT_TOLERANCE_S or n >= len(words):
                continue  # its word is not committed yet, or not seen yet
            self._boundaries.remove(b)
            if n + 1 >= self._shown_fixed:
                return n
        return None

    def _phrase_end(self) -> int | None:
        """Where a sentence longer than ``max_sentence_s`` is cut, if it is.

        Past half of it, at a clause break (a comma, a conjunction next) among the words
        newly committed; past all of it, at the best break there, else the newest word.
        Such a cut does not trim the window: the model keeps the sentence's audio as context.
        """
        words = self._open
        if self._max_sentence_s is None or not words:
            return None
        begin = words[0].start
        best: tuple[int, int] | None = None  # (score, index)
        for j in range(max(self._shown_fixed - 1, 0), len(words)):
            if words[j].end - begin < self._max_sentence_s / 2:
                continue
            after = words[j + 1] if j + 1 < len(words) else next(iter(self._tentative), None)
            candidate = (_break_score(words[j], after), j)
            if best is None or candidate >= best:
                best = candidate
        if best is None:
            return None
        if best[0] >= 2 or words[-1].end - begin >= self._max_sentence_s:
            return best[1]
        return None

    def _close(self, j: int, *, trim: bool = True) -> list[RecognizerEvent]:
        """End the current sentence after its committed word ``j``; ``trim`` the window there."""
        words, self._open = self._open[: j + 1], self._open[j + 1 :]
        events: list[RecognizerEvent] = []
        if not self._begun:
            events.append(SentenceBegin(self._index, _ms(words[0].start)))
        text = _join(words)
        events.append(
            SentenceEnd(
                index=self._index,
                time_ms=_ms(words[-1].end),
                begin_ms=_ms(words[0].start),
                text=text,
                words=tuple(_word(w) for w in words),
            )
        )
        self._index += 1
        self._begun = False
        self._shown = ("", "", "")
        self._shown_ms = -1
        self._shown_fixed = 0
        self._closed.append((words[-1].end, text))
        if trim:
            self._move_window(words[-1].end)
        return events

    def _silence_ends(self) -> list[RecognizerEvent]:
        """End the sentence before the newest silent run, once it is long enough."""
        if not self._silences:
            return []
        start, end = self._silences[-1]
        if end - start < self._silence_end_s:
            return []
        events: list[RecognizerEvent] = []
        kept = [w for w in self._tentative if not self._in_silence(w.start, w.end)]
        self._dropped_words += len(self._tentative) - len(kept)
        self._tentative = kept
        if self._audio_end is not None and self._audio_end >= start:
            # The newest hypothesis heard the speech up to the silence: what it placed
            # before the silence is confirmed by the silence itself.
            k = 0
            while k < len(self._tentative) and self._tentative[k].start < start:
                k += 1
            self._commit(self._tentative[:k], self._audio_end)
            self._tentative = self._tentative[k:]
            events += self._close_ready()
            if self._open and end - max(start, self._open[-1].end) >= self._silence_end_s:
                events += self._close(len(self._open) - 1)
        elif start > self._window_start + _SILENCE_GAP_S:
            return []  # speech before the silence is not transcribed yet
        if not self._open:
            target = end - _SILENCE_PAD_S
            if self._tentative:
                target = min(target, self._tentative[0].start)
            self._move_window(target)
        return events

    def _bound_window(self, audio_end: float) -> list[RecognizerEvent]:
        """Keep ``audio_end - window_start <= max_window_s``, forcing sentence ends."""
        if audio_end - self._window_start <= self._max_window_s:
            return []
        if self._closed:  # trim at the newest sentence end, a phrase's if need be
            self._move_window(self._closed[-1][0])
            if audio_end - self._window_start <= self._max_window_s:
                return []
        self._forced_ends += 1
        events: list[RecognizerEvent] = []
        if self._open:  # end at the newest committed word
            events += self._close(len(self._open) - 1)
        if audio_end - self._window_start > self._max_window_s and self._tentative:
            # Nothing agreed for a whole window: take the newest reading, less its tail.
            k = 0
            while k < len(self._tentative) and self._tentative[k].end <= audio_end - _TAIL_GUARD_S:
                k += 1
            self._commit(self._tentative[:k], audio_end)
            self._tentative = self._tentative[k:]
            events += self._close_ready()
            if self._open:
                events += self._close(len(self._open) - 1)
        if audio_end - self._window_start > self._max_window_s:
            target = audio_end - self._max_window_s
            self._dropped_audio_s += target - self._window_start
            kept = [w for w in self._tentative if w.start >= target]
            self._dropped_words += len(self._tentative) - len(kept)
            self._tentative = kept
            self._move_window(target)
        return events

    def _move_window(self, to: float) -> None:
        if to <= self._window_start:
            return
        self._window_start = to
        while self._closed and self._closed[0][0] <= to:
            self._add_prompt(self._closed.popleft()[1])
        self._silences = [(a, b) for a, b in self._silences if b > to]
        self._boundaries = [b for b in self._boundaries if b > to + _SEGMENT_TOLERANCE_S]

    def _add_prompt(self, text: str) -> None:
        if self._prompt_chars == 0:
            return
        full = f"{self._prompt} {text}" if self._prompt else text
        if len(full) > self._prompt_chars:
            cut = len(full) - self._prompt_chars
            if full[cut - 1] != " " and " " in full[cut:]:
                cut = full.index(" ", cut) + 1  # no word cut in two
            full = full[cut:]
        self._prompt = full

    # --- output --------------------------------------------------------------------------

    def _show(self, audio_end: float) -> list[RecognizerEvent]:
        """SentenceBegin when the current sentence is first seen; its ResultChanged if new."""
        events: list[RecognizerEvent] = []
        shown_tentative = self._tentative
        if not self._eager:
            shown_tentative = [w for w in self._tentative if w.end <= self._seen_until]
        words = [*self._open, *shown_tentative]
        if words and not self._begun:
            self._begun = True
            begin = words[0].start  # committed words already follow the previous sentence
            if not self._open and self._last_end is not None:
                begin = max(begin, self._last_end)
            events.append(SentenceBegin(self._index, _ms(begin)))
        shown = (_join(words), _join(self._open), _join(shown_tentative))
        if shown != self._shown and _ms(audio_end) > self._shown_ms:
            self._shown = shown
            self._shown_ms = _ms(audio_end)
            self._shown_fixed = len(self._open)
            events.append(
                ResultChanged(
                    index=self._index,
                    time_ms=_ms(audio_end),
                    text=shown[0],
                    fixed=shown[1],
                    unfixed=shown[2],
                    words=tuple(_word(w) for w in self._open),
                )
            )
        return events


# --- helpers -------------------------------------------------------------------------


def _key(text: str) -> str:
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def _made_of(keys: list[str], phrases: frozenset[tuple[str, ...]]) -> bool:
    """``keys`` is one or more of ``phrases`` back to back ("Thank you. Bye.")."""
    longest = max(map(len, phrases), default=0)
    ends = [True] + [False] * len(keys)  # ends[i]: keys[:i] is made of phrases
    for i in range(1, len(keys) + 1):
        ends[i] = any(
            ends[i - n] and tuple(keys[i - n : i]) in phrases for n in range(1, min(longest, i) + 1)
        )
    return ends[-1]


def _join(words: Iterable[_W]) -> str:
    return " ".join(w.text for w in words)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _word(w: _W) -> Word:
    return Word(w.text, _ms(w.start), _ms(w.end))


def _ends_sentence(text: str) -> bool:
    """``text`` ends a sentence: not an ellipsis ("then..."), title ("Mr.") or initial ("U.S.").

    The next word's case says little: Whisper often starts a window in lower case.
    """
    core = text.rstrip(_CLOSING)
    if not core.endswith(_SENTENCE_PUNCT) or core.endswith(("..", "\u2026")):
        return False
    return _key(core) not in _HONORIFICS and not _INITIALS.fullmatch(core)


def _break_score(word: _W, after: _W | None) -> int:
    """How good a place to cut a long sentence the end of ``word`` is: -1 (bad) to 3."""
    if word.text.rstrip(_CLOSING).endswith((",", ";", ":", "\u2014", "-")):
        return 3
    if after is not None and after.key in _CONJUNCTIONS:
        return 2
    if word.key in _NO_BREAK_AFTER:
        return -1
    if after is not None and after.start - word.end >= _BREAK_GAP_S:
        return 1
    return 0


def _punctuated(text: str) -> bool:
    return not text[-1:].isalnum()


def _same(new: _W, old: _W) -> bool:
    """``new`` is ``old`` transcribed again: same text, about the same time."""
    if new.key != old.key:
        return False
    shorter = min(new.end - new.start, old.end - old.start)
    if shorter <= 0.05:
        return abs(new.start - old.start) <= 0.1
    return min(new.end, old.end) - max(new.start, old.start) >= 0.5 * shorter


def _agreement(previous: Sequence[_W], new: Sequence[_W], tolerance: float) -> int:
    """How many leading words of ``new`` the previous hypothesis agreed on."""
    n = 0
    for old, cur in zip(previous, new, strict=False):
        if old.key != cur.key or abs(old.start - cur.start) > tolerance:
            break
        n += 1
    return n


def _repetition(keys: list[str], limit: int, protected: int) -> tuple[int, int] | None:
    """The first n-gram repeated ``limit``+ times in a row that reaches past ``protected``.

    Returns the slice to delete: every copy after the first, and a partial copy trailing
    them. Keys before ``protected`` are never deleted.
    """
    size = len(keys)
    for p in range(size):
        for n in range(1, (size - p) // limit + 1):
            unit = keys[p : p + n]
            reps = 1
            while keys[p + reps * n : p + (reps + 1) * n] == unit:
                reps += 1
            if reps < limit:
                continue
            q = p + reps * n
            m = 0
            while q + m < size and m < n and keys[q + m] == unit[m]:
                m += 1
            a, b = max(p + n, protected), q + m
            if a < b:
                return a, b
    return None
