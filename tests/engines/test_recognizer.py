"""The local recognizer with the real packaged model on the shared recordings (no mocks)."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import imageio_ffmpeg  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import pytest

from relay.core.hypothesis import Hypothesis
from relay.engines.local.recognizer import SAMPLE_RATE, Recognizer
from tests.audio import AUDIO_DIR as AUDIO
from tests.wer import edit_distance, normalise, wer

# The shared test speech is required: a missing folder fails the suite, it never skips it.
TRANSCRIPTS: dict[str, Any] = json.loads((AUDIO / "transcripts.json").read_text())

Audio = npt.NDArray[np.float32]


@functools.cache
def decode(name: str) -> Audio:
    """The file as float32 mono 16 kHz, through the packaged ffmpeg."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", str(AUDIO / name), "-f", "s16le"]
    command += ["-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    pcm = subprocess.run(command, capture_output=True, check=True).stdout
    samples: Audio = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0
    return samples


def pauses(audio: Audio, *, min_s: float = 1.0) -> list[tuple[float, float]]:
    """Quiet stretches of at least ``min_s`` (20 ms RMS below 1% of the loudest frame)."""
    frame = SAMPLE_RATE // 50
    rms = np.sqrt(np.mean(audio[: len(audio) // frame * frame].reshape(-1, frame) ** 2, axis=1))
    quiet = rms < 0.01 * rms.max()
    spans: list[tuple[float, float]] = []
    i = 0
    while i < len(quiet):
        j = i
        while j < len(quiet) and quiet[j]:
            j += 1
        if (j - i) * 0.02 >= min_s:
            spans.append((i * 0.02, j * 0.02))
        i = max(j, i + 1)
    return spans


def text_of(hyp: Hypothesis) -> str:
    return "".join(w.text for w in hyp.words)


def check_times(hyp: Hypothesis, *, offset_s: float, n_samples: int) -> None:
    assert hyp.window_start == pytest.approx(offset_s)
    assert hyp.audio_end == pytest.approx(offset_s + n_samples / SAMPLE_RATE)
    for w in hyp.words:
        assert hyp.window_start - 1e-6 <= w.start <= w.end <= hyp.audio_end + 1e-6, w
        assert 0.0 <= w.probability <= 1.0
    starts = [w.start for w in hyp.words]
    assert starts == sorted(starts)
    assert list(hyp.segment_ends) == sorted(hyp.segment_ends)
    for end in hyp.segment_ends:
        assert hyp.window_start <= end <= hyp.audio_end


@pytest.fixture(scope="module")
def recognizer() -> Iterator[Recognizer]:
    rec = Recognizer()
    asyncio.run(rec.load())
    yield rec
    rec.close()


# -- the WER helper ---------------------------------------------------------------------------


def test_wer_helper() -> None:
    assert normalise("Hello, World! It's 7:30.") == ["hello", "world", "its", "seven", "thirty"]
    assert normalise("£25 for the 12th; 400 seats") == [
        *("twenty", "five", "for", "the", "twelfth", "four", "hundred", "seats"),
    ]
    assert normalise("web-socket") == ["web", "socket"]
    assert edit_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2
    assert wer("the cat sat", "The cat sat.") == 0.0
    assert wer("the cat sat", "the dog sat on") == pytest.approx(2 / 3)
    assert wer("", "") == 0.0


# -- accuracy and times -----------------------------------------------------------------------

SHORT = [n for n, t in TRANSCRIPTS.items() if "sentences" in t]


@pytest.mark.parametrize("name", SHORT)
async def test_a_whole_short_recording_as_one_window(recognizer: Recognizer, name: str) -> None:
    audio = decode(TRANSCRIPTS[name]["file"])
    offset = 42.0  # stream time of audio[0]: every time in the result is shifted by it
    hyp = await recognizer.transcribe(audio, offset_s=offset)
    check_times(hyp, offset_s=offset, n_samples=len(audio))
    error = wer(TRANSCRIPTS[name]["text"], text_of(hyp))
    assert error <= 0.2, (error, text_of(hyp))
    assert hyp.words[0].start < offset + 1.0  # speech starts at once in these recordings


async def test_paragraphs_of_a_talk_at_their_stream_offsets(recognizer: Recognizer) -> None:
    talk = TRANSCRIPTS["talk_en_us"]
    audio = decode(talk["file"])
    gaps = pauses(audio)
    assert len(gaps) >= len(talk["paragraphs"]) - 1  # a pause between paragraphs
    bounds = [0.0, *((a + b) / 2 for a, b in gaps)]
    errors = words = 0
    prompt = ""
    for i, reference in enumerate(talk["paragraphs"]):
        start = bounds[i]
        end = bounds[i + 1] if i + 1 < len(bounds) else len(audio) / SAMPLE_RATE
        window = audio[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
        hyp = await recognizer.transcribe(window, offset_s=start, prompt=prompt)
        check_times(hyp, offset_s=start, n_samples=len(window))
        # the first word is heard after the pause that opens the window, not before
        if i > 0:
            assert hyp.words[0].start >= gaps[i - 1][1] - 0.6, hyp.words[0]
        errors += edit_distance(normalise(reference), normalise(text_of(hyp)))
        words += len(normalise(reference))
        prompt = reference
    assert errors / words <= 0.12, errors / words


async def test_a_window_cut_mid_sentence_ends_in_its_own_audio(recognizer: Recognizer) -> None:
    audio = decode("talk_en_us.wav")
    start, end = 9.5, 16.0  # ends inside "recognition", a sentence and a half after "First"
    window = audio[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
    hyp = await recognizer.transcribe(window, offset_s=start)
    check_times(hyp, offset_s=start, n_samples=len(window))
    reference = "First the broadcaster sends the stream to the ingest server. Then the recognition"
    said = normalise(text_of(hyp))
    assert wer(reference, text_of(hyp)) <= 0.35, said
    # no restart of the sentence, no loop, nothing made up after the cut
    assert said.count("broadcaster") == 1, said
    assert len(said) <= len(normalise(reference)) + 2, said
    assert hyp.words[-1].end <= end + 1e-6


async def test_silence_gives_no_words_or_a_high_no_speech_probability(
    recognizer: Recognizer,
) -> None:
    hyp = await recognizer.transcribe(np.zeros(5 * SAMPLE_RATE, np.float32), offset_s=3.0)
    check_times(hyp, offset_s=3.0, n_samples=5 * SAMPLE_RATE)
    assert not hyp.words or hyp.no_speech_prob > 0.9, hyp
    tiny = await recognizer.transcribe(np.zeros(160, np.float32), offset_s=1.0)
    assert tiny.words == ()
    assert tiny.audio_end == pytest.approx(1.01)


async def test_no_speech_threshold_drops_silence() -> None:
    rec = Recognizer(no_speech_threshold=0.9)
    try:
        hyp = await rec.transcribe(np.zeros(5 * SAMPLE_RATE, np.float32), offset_s=0.0)
        assert hyp.words == ()
        assert hyp.no_speech_prob > 0.9
    finally:
        rec.close()


async def test_a_window_longer_than_the_model_reads_keeps_its_newest_audio(
    recognizer: Recognizer,
) -> None:
    audio = decode("talk_en_us.wav")[: 40 * SAMPLE_RATE]
    hyp = await recognizer.transcribe(audio, offset_s=10.0)
    assert hyp.audio_end == pytest.approx(50.0)
    assert hyp.window_start == pytest.approx(50.0 - recognizer.max_window_s)
    assert hyp.words
    for w in hyp.words:
        assert hyp.window_start <= w.start <= w.end <= hyp.audio_end


# -- the pool ---------------------------------------------------------------------------------


async def test_load_is_lazy_idempotent_and_off_the_loop() -> None:
    rec = Recognizer()
    try:
        assert not rec.loaded
        await asyncio.gather(rec.load(), rec.load(), rec.load())
        assert rec.loaded
        first = rec._loaded
        await rec.load()
        assert rec._loaded is first  # loaded once, shared
    finally:
        rec.close()


class _WhereRecognizer(Recognizer):
    """Records the thread each model call runs on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threads: list[threading.Thread] = []

    def _transcribe_sync(
        self, audio: npt.NDArray[np.floating[Any]], offset_s: float, prompt: str
    ) -> Hypothesis:
        self.threads.append(threading.current_thread())
        return super()._transcribe_sync(audio, offset_s, prompt)


async def test_transcribe_runs_on_the_pool_and_the_loop_keeps_ticking() -> None:
    rec = _WhereRecognizer()
    try:
        await rec.load()
        audio = decode("weather_en_us_fast.wav")
        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        began = time.perf_counter()
        hyp = await rec.transcribe(audio, offset_s=0.0)
        took = time.perf_counter() - began
        stop.set()
        await task
        assert hyp.words
        loop_thread = threading.current_thread()
        assert rec.threads and all(t is not loop_thread for t in rec.threads)
        assert all(t.name.startswith("relay-asr") for t in rec.threads)
        during = [t for t in ticks if began <= t <= began + took]
        gaps = np.diff([began, *during, began + took])
        assert gaps.max() < 0.3, (gaps.max(), took)
        assert len(during) >= took / 0.05, (len(during), took)
    finally:
        rec.close()


@pytest.mark.parametrize("max_parallel", [1, 2])
async def test_concurrent_calls_from_many_tasks_all_complete(max_parallel: int) -> None:
    rec = _WhereRecognizer(max_parallel=max_parallel)
    try:
        audio = decode("talk_en_us.wav")
        windows = [(s, audio[s * SAMPLE_RATE : (s + 6) * SAMPLE_RATE]) for s in range(0, 36, 6)]
        hyps = await asyncio.gather(*(rec.transcribe(w, offset_s=float(s)) for s, w in windows))
        assert len(hyps) == len(windows)
        for (s, w), hyp in zip(windows, hyps, strict=True):
            check_times(hyp, offset_s=float(s), n_samples=len(w))
            assert hyp.words, s
        assert len({t.name for t in rec.threads}) <= max_parallel
        assert rec.loaded
    finally:
        rec.close()


async def test_a_closed_recognizer_refuses_work() -> None:
    rec = Recognizer()
    rec.close()
    with pytest.raises(RuntimeError):
        await rec.transcribe(np.zeros(SAMPLE_RATE, np.float32), offset_s=0.0)
    with pytest.raises(RuntimeError):
        await rec.load()
