"""Audio in: ffmpeg reads any source to 16 kHz mono s16le on a pipe.

ffmpeg runs as an asyncio subprocess (arguments built with ffmpeg-python); stdout is read in
fixed-size chunks, stderr is drained concurrently and logged, and the process is killed and
reaped on exit, whatever happened. ``-rw_timeout`` makes a network read fail instead of
hanging forever once the publisher is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import ffmpeg  # type: ignore[import-untyped]
import structlog

log = structlog.get_logger("relay.engines.local")

SAMPLE_RATE = 16000
BYTES_PER_SECOND = SAMPLE_RATE * 2
NETWORK_SCHEMES = frozenset({"rtmp", "rtmps", "http", "https"})


class SourceError(Exception):
    """The source cannot be read: bad URL, unreadable media, or ffmpeg failed."""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    url: str
    realtime: bool = False
    rw_timeout_s: float = 5.0


def default_ffmpeg() -> str:
    import imageio_ffmpeg  # type: ignore[import-untyped]

    exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    return exe


def ffmpeg_args(spec: SourceSpec, ffmpeg_exe: str) -> list[str]:
    """The ffmpeg command line for ``spec``; raises SourceError for an unusable URL."""
    parts = urlsplit(spec.url)
    input_kwargs: dict[str, object] = {}
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"file URL must be local: {spec.url}")
        target = unquote(parts.path)
        if not Path(target).is_file():
            raise SourceError(f"no such file: {target}")
        if spec.realtime:
            input_kwargs["re"] = None  # read at native speed, like a live stream
    elif parts.scheme in NETWORK_SCHEMES:
        target = spec.url
        input_kwargs["rw_timeout"] = int(spec.rw_timeout_s * 1_000_000)
        # Live input: start decoding after 0.5 s of probing, not the default 5 s.
        input_kwargs["analyzeduration"] = 500_000
        input_kwargs["fflags"] = "nobuffer"
        if parts.scheme.startswith("http"):
            input_kwargs["reconnect"] = 0
    else:
        raise SourceError(f"unsupported source URL scheme {parts.scheme!r} (rtmp, http(s), file)")
    stream = ffmpeg.input(target, **input_kwargs).output(
        "pipe:", format="s16le", acodec="pcm_s16le", ac=1, ar=SAMPLE_RATE, vn=None
    )
    args: list[str] = stream.compile(cmd=ffmpeg_exe)
    # Global options go first: -nostdin so ffmpeg never reads our stdin.
    return [args[0], "-nostdin", "-hide_banner", "-loglevel", "warning", *args[1:]]


class FfmpegSource:
    """One ffmpeg process reading one source. Use as an async context manager."""

    def __init__(self, spec: SourceSpec, *, ffmpeg_exe: str, chunk_s: float = 0.1) -> None:
        self._args = ffmpeg_args(spec, ffmpeg_exe)
        self._chunk_bytes = int(chunk_s * SAMPLE_RATE) * 2
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self.stderr_tail: deque[str] = deque(maxlen=20)

    async def __aenter__(self) -> FfmpegSource:
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise SourceError(f"cannot start ffmpeg: {exc}") from exc
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if proc is not None:
            # Reap it even when we are being cancelled: no zombies.
            await asyncio.shield(proc.wait())
        if self._stderr_task is not None:
            await asyncio.shield(self._stderr_task)

    async def chunks(self) -> AsyncIterator[bytes]:
        """PCM chunks of ``chunk_s`` (the last may be shorter) until ffmpeg's output ends."""
        assert self._proc is not None and self._proc.stdout is not None, "enter the context first"
        stdout = self._proc.stdout
        while True:
            try:
                chunk = await stdout.readexactly(self._chunk_bytes)
            except asyncio.IncompleteReadError as end:
                if end.partial:
                    yield end.partial[: len(end.partial) // 2 * 2]
                return
            yield chunk

    async def wait(self) -> int:
        """ffmpeg's exit code, once stdout has ended."""
        assert self._proc is not None
        code = await self._proc.wait()
        if self._stderr_task is not None:
            await asyncio.shield(self._stderr_task)
        return code

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for raw in self._proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.stderr_tail.append(line)
                log.info("ffmpeg.stderr", line=line[:500])
