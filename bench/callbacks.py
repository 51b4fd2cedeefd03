"""Callback benchmark: signed Alibaba callbacks into relay across many attached streams.

    python bench/callbacks.py [--streams 100] [--viewers-per-stream 10] [--seconds 15] [--quick]

Two servers are measured in turn, each alone on core 0, by one load generator (this
process, on core 1):

* ``baseline``: a bare aiohttp server that reads each POST body and answers ``200 {}``,
  the ceiling of the HTTP stack on this machine.
* ``relay``: ``python -m relay serve`` with ``--streams`` attached Alibaba tasks and
  ``--viewers-per-stream`` WebSocket viewers on each (in a helper process on core 1 that
  only reads and counts frames).

The callbacks have the exact Alibaba contract shape (``content`` is a JSON string with
``header`` and ``payload``; ``SIG-TIME`` in seconds and ``ASR-SIG`` md5 headers): a
growing ``TranscriptionResultChanged`` partial, with a ``SentenceEnd`` as every 8th event
of a stream. Each stream sends in order, one callback at a time (as one recognizer task
does), over keep-alive HTTP/1.1 connections from a pool.

For each server:

1. client check: a short closed loop with aiohttp's client and with a raw asyncio
   HTTP/1.1 client, to see which one limits the generator; the faster one (against the
   baseline) drives everything else.
2. open loop at ``--rate`` callbacks/s (default 500): acknowledgement latency measured from
   the time each callback was scheduled, so any schedule slip counts.
3. closed loop ramp (1, 2, 4, ... callbacks in flight) to find the best concurrency, then a
   sustained closed loop at it for ``--seconds``: the maximum sustained callbacks/s.

On relay every step is verified: every callback answered 200, relay's own counters agree,
and each viewer received exactly the partials and finals its stream was sent (less the
partials relay reports as coalesced, a documented behaviour). Then one more closed-loop
run with a profiler attached (py-spy raw stacks, or cProfile with ``--profiler
cprofile``), broken down by where the time of one callback goes.

The hidden ``--role viewers`` and ``--role baseline`` run the two helper processes.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web

from bench import common

HOST = common.HOST
SERVER_CPU = 0
CLIENT_CPU = 1
EVENTS_PER_SENTENCE = 8  # 7 growing partials, then the sentence's SentenceEnd
WORDS_PER_SENTENCE = 14
WORD_MS = 320
REQUEST_TIMEOUT_S = 10.0
OPEN_LOOP_POOL = 32  # keep-alive connections for the open loop
_TEXT = (
    "the match tonight starts at eight and the weather should stay dry for the whole evening "
    "so bring the family along and enjoy the show from the north stand with everyone else"
)
_SPEECH = tuple(_TEXT.split())
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --- the callbacks ---------------------------------------------------------------------


@dataclass(slots=True)
class Stream:
    """One attached task: its callback URL and key, and the script of its recognizer."""

    no: int
    stream_id: str
    task_id: str
    auth_key: str = field(repr=False)
    callback_url: str
    path: str = ""
    events: int = 0  # callbacks generated so far
    partials_ok: int = 0  # partials answered 200
    finals_ok: int = 0  # finals answered 200
    _sig_time: str = ""
    _sig: str = ""
    fast_bodies: ClassVar[bool] = True  # False when fast_bodies_match() fails
    _task_json: str = ""
    _head: str = ""
    _outer: str = ""

    def __post_init__(self) -> None:
        self.path = urlsplit(self.callback_url).path
        # The fixed parts of the body, as json.dumps (common.callback_body) writes them.
        nls_task_id = self.task_id.removeprefix("asr-")[:32]
        task_key = f"tl_bench_{self.task_id[-8:]}"
        self._task_json = json.dumps(self.task_id, ensure_ascii=False)
        self._head = (
            f'{{"header": {{"nls_task_id": {json.dumps(nls_task_id, ensure_ascii=False)}, '
            f'"task_key": {json.dumps(task_key, ensure_ascii=False)}, '
            '"namespace": "SpeechTranscriber", "name": "'
        )
        self._outer = (
            f'{{"task_id": {self._task_json}, "sdk_app_id": "", "channel_id": "", '
            '"rtc_user_id": "", "callback_time_stamp": '
        )

    def signature(self) -> tuple[str, str]:
        """(SIG-TIME, ASR-SIG) for now; the md5 is computed once per second."""
        sig_time = str(int(time.time()))
        if sig_time != self._sig_time:
            self._sig_time = sig_time
            self._sig = common.asr_sig(sig_time, self.callback_url, self.auth_key)
        return sig_time, self._sig

    def next_body(self) -> tuple[bytes, bool]:
        """The next callback of this stream's recognizer: (body, is it a SentenceEnd)."""
        index, step = divmod(self.events, EVENTS_PER_SENTENCE)
        self.events += 1
        message_id, now_ms = os.urandom(16).hex(), time.time_ns() // 1_000_000
        body = self.render(index, step, message_id, now_ms, Stream.fast_bodies)
        return body, step == EVENTS_PER_SENTENCE - 1

    def render(
        self, index: int, step: int, message_id: str, now_ms: int, fast: bool = True
    ) -> bytes:
        """Event ``step`` of sentence ``index``: a growing partial, the last one its final.

        ``fast`` formats the JSON directly (a few times cheaper, so the generator stays out
        of the way); :func:`fast_bodies_match` checks it against ``common.callback_body``.
        """
        final = step == EVENTS_PER_SENTENCE - 1
        begin = index * (WORDS_PER_SENTENCE * WORD_MS + 600)
        offset = (self.no * 7 + index * 3) % len(_SPEECH)
        n = WORDS_PER_SENTENCE if final else 2 * (step + 1)
        words = [
            (
                _SPEECH[(offset + k) % len(_SPEECH)],
                begin + k * WORD_MS,
                begin + (k + 1) * WORD_MS - 40,
            )
            for k in range(n)
        ]
        time_ms = words[-1][2] + (200 if final else 0)
        text = " ".join(w for w, _, _ in words)
        fixed = "".join(w + " " for w, _, _ in words[:-2])
        unfixed = " ".join(w for w, _, _ in words[-2:])
        name = "SentenceEnd" if final else "TranscriptionResultChanged"
        if not fast:
            if final:
                payload = common.final_payload(index, time_ms, begin, text, _words(words))
            else:
                payload = common.partial_payload(index, time_ms, fixed, unfixed, _words(words))
            return common.callback_body(
                self.task_id, name, payload, message_id=message_id, now_ms=now_ms
            )
        # The words are plain lowercase ASCII (checked at import): nothing to escape.
        wj = ", ".join(f'{{"text": "{w}", "startTime": {s}, "endTime": {e}}}' for w, s, e in words)
        if final:
            pj = (
                f'{{"index": {index}, "time": {time_ms}, "begin_time": {begin}, "result": '
                f'"{text}", "confidence": 0.9, "words": [{wj}], "status": 0}}'
            )
        else:
            pj = (
                f'{{"result": "{fixed}{unfixed}", "confidence": 0.0, "words": [{wj}], "index": '
                f'{index}, "time": {time_ms}, "fixed_result": "{fixed}", "unfixed_result": '
                f'"{unfixed}", "status": 0}}'
            )
        content = (
            f'{self._head}{name}", "task_id": {self._task_json}, "message_id": "{message_id}", '
            f'"status_text": "Success.", "status": {common.NLS_SUCCESS}}}, "payload": {pj}}}'
        )
        return (
            f'{self._outer}{now_ms}, "language": "en", "content": '
            f"{json.dumps(content, ensure_ascii=False)}}}"
        ).encode()


assert all(re.fullmatch("[a-z]+", w) for w in _SPEECH)


def fast_bodies_match() -> bool:
    """Whether the fast bodies parse to exactly what ``common.callback_body`` makes."""
    stream = Stream(3, "check", f"asr-bench-{os.urandom(8).hex()}", "key", "http://x/v1/cb/t")
    for index in (0, 1, 17):
        for step in range(EVENTS_PER_SENTENCE):
            mid, now = os.urandom(16).hex(), time.time_ns() // 1_000_000
            fast = json.loads(stream.render(index, step, mid, now))
            slow = json.loads(stream.render(index, step, mid, now, fast=False))
            if not isinstance(fast, dict) or not isinstance(slow, dict):
                return False
            if json.loads(fast.pop("content")) != json.loads(slow.pop("content")) or fast != slow:
                return False
    return True


def _words(words: Iterable[tuple[str, int, int]]) -> list[dict[str, Any]]:
    return [{"text": w, "startTime": s, "endTime": e} for w, s, e in words]


# --- HTTP clients ----------------------------------------------------------------------


class Client(abc.ABC):
    """Posts signed callbacks over a pool of keep-alive connections."""

    name = ""

    @abc.abstractmethod
    async def post(self, stream: Stream, body: bytes) -> int:
        """POST one callback of ``stream``; return the HTTP status."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class AiohttpClient(Client):
    name = "aiohttp"

    def __init__(self, pool: int) -> None:
        connector = aiohttp.TCPConnector(limit=pool, limit_per_host=pool, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        )

    async def post(self, stream: Stream, body: bytes) -> int:
        sig_time, sig = stream.signature()
        headers = {"SIG-TIME": sig_time, "ASR-SIG": sig, "Content-Type": "application/json"}
        async with self._session.post(stream.callback_url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    async def close(self) -> None:
        await self._session.close()


class _RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def request(self, data: bytes) -> asyncio.Future[int]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        pos = head.find(b"\r\ncontent-length:")
        if pos < 0:  # relay and the baseline always send a length; anything else is a bug
            self.fail(waiter, "response without Content-Length")
            return
        eol = head.find(b"\r\n", pos + 2)
        length = int(head[pos + 17 : eol if eol >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buf) < total:
            return
        del self.buf[:total]
        if b"\r\nconnection: close" in head:
            self.alive = False
        self.waiter = None
        waiter.set_result(int(head[9:12]))

    def fail(self, waiter: asyncio.Future[int], why: str) -> None:
        self.alive = False
        waiter.set_exception(ConnectionError(why))
        self.close()

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()


class RawClient(Client):
    """A minimal asyncio HTTP/1.1 client: one write per request, responses by length."""

    name = "raw"

    def __init__(self, host: str, port: int, pool: int) -> None:
        self._host, self._port = host, port
        self._gate = asyncio.Semaphore(pool)
        self._free: list[_RawConnection] = []
        self._all: set[_RawConnection] = set()
        self._prefixes: dict[int, bytes] = {}

    async def _connect(self) -> _RawConnection:
        conn = _RawConnection()
        await asyncio.get_running_loop().create_connection(lambda: conn, self._host, self._port)
        self._all.add(conn)
        return conn

    def _prefix(self, stream: Stream) -> bytes:
        prefix = self._prefixes.get(stream.no)
        if prefix is None:
            prefix = self._prefixes[stream.no] = (
                f"POST {stream.path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
                "Content-Type: application/json\r\n"
            ).encode()
        return prefix

    async def post(self, stream: Stream, body: bytes) -> int:
        async with self._gate:
            conn = self._free.pop() if self._free else await self._connect()
            reuse = False
            try:
                sig_time, sig = stream.signature()
                head = b"%bSIG-TIME: %b\r\nASR-SIG: %b\r\nContent-Length: %d\r\n\r\n" % (
                    self._prefix(stream),
                    sig_time.encode(),
                    sig.encode(),
                    len(body),
                )
                status = await conn.request(head + body)
                reuse = conn.alive
                return status
            finally:
                if reuse:
                    self._free.append(conn)
                else:
                    conn.close()
                    self._all.discard(conn)

    async def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._free.clear()
        await asyncio.sleep(0)


def make_client(kind: str, port: int, pool: int) -> Client:
    return AiohttpClient(pool) if kind == "aiohttp" else RawClient(HOST, port, pool)


# --- load patterns ---------------------------------------------------------------------


@dataclass
class Load:
    """What one load pattern did: answers, errors, latencies (seconds)."""

    wall_s: float = 0.0
    sent: int = 0
    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    error_sample: str = ""
    latencies: list[float] = field(default_factory=list)
    slip_max_s: float = 0.0

    @property
    def failed(self) -> int:
        return self.sent - self.ok


async def _send(
    client: Client, stream: Stream, body: bytes, final: bool, t0: float, load: Load
) -> None:
    """POST one callback; its latency runs from ``t0`` (schedule or start) to the answer."""
    load.sent += 1
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            status = await client.post(stream, body)
    except (OSError, TimeoutError, aiohttp.ClientError) as exc:
        load.errors += 1
        load.error_sample = load.error_sample or repr(exc)
        return
    load.latencies.append(time.perf_counter() - t0)
    load.statuses[status] += 1
    if status == 200:
        load.ok += 1
        if final:
            stream.finals_ok += 1
        else:
            stream.partials_ok += 1


async def warm_up(client: Client, streams: Sequence[Stream]) -> Load:
    """One callback per stream (opens the pool's connections, moves tasks to running)."""
    load = Load()
    start = time.perf_counter()

    async def one(stream: Stream) -> None:
        body, final = stream.next_body()
        await _send(client, stream, body, final, time.perf_counter(), load)

    await asyncio.gather(*(one(s) for s in streams))
    load.wall_s = time.perf_counter() - start
    return load


async def open_loop(client: Client, streams: Sequence[Stream], rate: float, seconds: float) -> Load:
    """``rate`` callbacks/s spread round-robin over the streams, each stream in order.

    Callback k is due at ``t0 + k / rate``; its latency is measured from then, so a late
    start (a slow previous answer of the same stream, a busy generator) counts.
    """
    load = Load()
    total = max(len(streams), round(rate * seconds))
    n = len(streams)
    t0 = time.perf_counter() + 0.2

    async def run(first: int, stream: Stream) -> None:
        for k in range(first, total, n):
            body, final = stream.next_body()
            due = t0 + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            load.slip_max_s = max(load.slip_max_s, time.perf_counter() - due)
            await _send(client, stream, body, final, due, load)

    await asyncio.gather(*(run(i, s) for i, s in enumerate(streams)))
    load.wall_s = time.perf_counter() - t0
    return load


async def closed_loop(
    client: Client, streams: Sequence[Stream], concurrency: int, seconds: float
) -> Load:
    """``concurrency`` senders, each owning a share of the streams, back to back."""
    load = Load()
    c = max(1, min(concurrency, len(streams)))
    start = time.perf_counter()
    end = start + seconds

    async def worker(mine: Sequence[Stream]) -> None:
        i = 0
        while time.perf_counter() < end:
            stream = mine[i % len(mine)]
            i += 1
            body, final = stream.next_body()
            await _send(client, stream, body, final, time.perf_counter(), load)

    await asyncio.gather(*(worker(streams[k::c]) for k in range(c)))
    load.wall_s = time.perf_counter() - start
    return load


# --- helper processes: plumbing --------------------------------------------------------


emit = common.emit
stdin_reader = common.stdin_reader
Child = common.Child


# --- role: viewers (core 1) ------------------------------------------------------------

# Every viewer reads into this one buffer (the loop runs one callback at a time).
_READ = bytearray(256 * 1024)
_READ_VIEW = memoryview(_READ)
# Byte 9 of a relay message is the first letter of its type: {"type":"partial"...
_KINDS = {ord("p"): 0, ord("f"): 1, ord("s"): 2, ord("h"): 3}


class _ViewerStats:
    __slots__ = ("closes", "lost")

    def __init__(self) -> None:
        self.closes: Counter[str] = Counter()
        self.lost = 0


class Viewer(asyncio.BufferedProtocol):
    """A hand-made WebSocket client that counts frames by message type and answers pings."""

    __slots__ = ("buf", "counts", "is_open", "key", "ready", "request", "stats", "transport")

    def __init__(self, stats: _ViewerStats, request: bytes, key: str) -> None:
        self.stats = stats
        self.request = request
        self.key = key
        self.buf = b""
        self.is_open = False
        self.counts = [0, 0, 0, 0]  # partial, final, state, hello
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.is_open:
            self.stats.lost += 1
        self.is_open = False
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        if not self.is_open:
            self._handshake(bytes(_READ_VIEW[:nbytes]))
        elif self.buf:
            data = self.buf + _READ_VIEW[:nbytes]
            self._frames(data, len(data))
        else:
            self._frames(_READ, nbytes)

    def _frames(self, buf: bytes | bytearray, n: int) -> None:
        pos = 0
        while (header := common.frame_header(buf, pos, n)) is not None:
            hdr, length = header
            end = pos + hdr + length
            opcode = buf[pos] & 0x0F
            if opcode == 1 and length > 9:
                kind = _KINDS.get(buf[pos + hdr + 9])
                if kind is not None:
                    self.counts[kind] += 1
            elif opcode == 9:  # ping: answer with a masked pong (mask key 0)
                self._send(0xA, bytes(buf[pos + hdr : end]))
            elif opcode == 8:  # close: echo the code, note it
                payload = bytes(buf[pos + hdr : end])
                code = str(int.from_bytes(payload[:2], "big")) if len(payload) >= 2 else "none"
                self.stats.closes[code] += 1
                self._send(0x8, payload[:2])
                self.is_open = False
                assert self.transport is not None
                self.transport.close()
                return
            pos = end
        self.buf = bytes(buf[pos:n]) if pos < n else b""

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            head = bytes((0x80 | opcode, 0x80 | len(payload)))
            self.transport.write(head + b"\0\0\0\0" + payload)

    def _handshake(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 16384:
                self._fail("response head too long")
            return
        head, rest = self.buf[:end].decode("latin-1"), self.buf[end + 4 :]
        self.buf = b""
        status, *lines = head.split("\r\n")
        if not status.startswith("HTTP/1.1 101"):
            self._fail(status)
            return
        accept = base64.b64encode(hashlib.sha1((self.key + _WS_GUID).encode()).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
        if headers.get("sec-websocket-accept") != accept:
            self._fail("bad Sec-WebSocket-Accept")
            return
        self.is_open = True
        self.ready.set_result(None)
        if rest:
            self._frames(rest, len(rest))

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()


def _returning(viewer: Viewer) -> Callable[[], Viewer]:
    return lambda: viewer


async def connect_viewers(
    stats: _ViewerStats, port: int, paths: Sequence[str], per_path: int, concurrency: int = 64
) -> tuple[list[tuple[int, Viewer]], list[str]]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    viewers: list[tuple[int, Viewer]] = []
    errors: list[str] = []

    async def one(stream_no: int, path: str) -> None:
        error = ""
        for attempt in range(3):
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            viewer = Viewer(stats, request, key)
            async with gate:
                try:
                    async with asyncio.timeout(20):
                        await loop.create_connection(_returning(viewer), HOST, port)
                        await viewer.ready
                except (OSError, TimeoutError) as exc:
                    error = repr(exc)
                    if viewer.transport is not None:
                        viewer.transport.abort()
                else:
                    viewers.append((stream_no, viewer))
                    return
            await asyncio.sleep(0.2 * (attempt + 1))
        errors.append(error)

    await asyncio.gather(*(one(no, path) for no, path in enumerate(paths) for _ in range(per_path)))
    viewers.sort(key=lambda item: item[0])
    return viewers, errors


async def viewers_main(port: int) -> None:
    common.raise_fd_limit()
    stats = _ViewerStats()
    viewers: list[tuple[int, Viewer]] = []
    reader = await stdin_reader()
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "connect":
            started = time.monotonic()
            viewers, errors = await connect_viewers(stats, port, cmd["paths"], cmd["per_path"])
            emit(
                {
                    "event": "ready",
                    "connected": len(viewers),
                    "failed": len(errors),
                    "errors": sorted(set(errors))[:5],
                    "seconds": time.monotonic() - started,
                }
            )
        elif cmd["cmd"] == "counts":
            emit(
                {
                    "event": "counts",
                    "rows": [[no, *v.counts, int(v.is_open)] for no, v in viewers],
                    "closes": dict(stats.closes),
                    "lost": stats.lost,
                }
            )
        elif cmd["cmd"] == "quit":
            break
    for _, v in viewers:
        if v.transport is not None:
            v.transport.abort()


# --- role: the bare aiohttp baseline server (core 0) -----------------------------------


async def baseline_main(port: int) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application(client_max_size=256 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def start_baseline(port: int, nice: int = 0) -> tuple[subprocess.Popen[bytes], Path]:
    fd, log_name = tempfile.mkstemp(prefix="callbacks-baseline-", suffix=".log")
    try:
        argv = [sys.executable, str(Path(__file__).resolve()), "--role", "baseline"]
        proc = subprocess.Popen(
            common.launch_argv([*argv, "--port", str(port)], SERVER_CPU, nice),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            cwd=common.ROOT,
        )
    finally:
        os.close(fd)
    return proc, Path(log_name)


async def wait_port(port: int, alive: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise RuntimeError(f"{what} exited before listening")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not listening after {timeout:.0f} s") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


# --- profiles --------------------------------------------------------------------------

GROUPS = (
    "HTTP parsing (aiohttp)",
    "signature",
    "JSON parse",
    "merger",
    "store",
    "fan-out/encode",
    "socket writes",
    "other",
)
_RULES: tuple[tuple[str, str], ...] = (
    # (path fragment, group); the first that matches a frame's file wins.
    ("/relay/core/signature.py", "signature"),
    ("/json/decoder.py", "JSON parse"),
    ("/json/scanner.py", "JSON parse"),
    ("/relay/core/callback.py", "JSON parse"),
    ("/relay/core/merger.py", "merger"),
    ("/relay/core/task_state.py", "merger"),
    ("/relay/core/events.py", "merger"),
    ("/relay/store/", "store"),
    ("/relay/fanout/", "fan-out/encode"),
    ("/relay/core/wire.py", "fan-out/encode"),
    ("/relay/core/outbox.py", "fan-out/encode"),
    ("/websockets/", "fan-out/encode"),
    ("/aiohttp/", "HTTP parsing (aiohttp)"),
    ("/multidict/", "HTTP parsing (aiohttp)"),
    ("/yarl/", "HTTP parsing (aiohttp)"),
    ("/relay/web/", "HTTP parsing (aiohttp)"),
    ("/prometheus_client/", "other: metrics"),
    ("/relay/metrics.py", "other: metrics"),
    ("/structlog/", "other: logging"),
    ("/logging/", "other: logging"),
    ("/relay/live/", "other: caption service"),
    ("/asyncio/locks.py", ""),  # generic: charged to the caller
    ("/asyncio/timeouts.py", ""),
    ("/asyncio/", "other: event loop"),
    ("/selectors.py", "other: event loop"),
)
_IDLE = ("<method 'poll' of 'select.epoll' objects>", "<built-in method select.select>")


def classify(path: str, func: str) -> str | None:
    """The group of a function by where it lives; None when it is generic (caller decides)."""
    p = "/" + path.replace("\\", "/").lstrip("/")
    name = func.rsplit(".", 1)[-1]
    if p.endswith("/asyncio/selector_events.py"):
        if "write" in name or "send" in name:
            return "socket writes"
        if "read" in name or "recv" in name:
            return "other: socket reads"
        return "other: event loop"
    if path == "~":  # cProfile's C functions
        if "'send" in func or "sendall" in func or "writev" in func:
            return "socket writes"
        if "'recv" in func:
            return "other: socket reads"
        return None
    if p.endswith("/json/__init__.py"):
        return "JSON parse" if name == "loads" else None
    for fragment, group in _RULES:
        if fragment in p:
            return group or None
    return None


def top_group(group: str) -> str:
    return "other" if group.startswith("other") else group


@dataclass
class ProfileReport:
    tool: str
    samples: float  # py-spy: samples; cProfile: seconds of profiled (non-idle) time
    groups: dict[str, float]  # fine-grained group -> samples or seconds
    self_time: dict[str, float]
    cumulative: dict[str, float]
    calls: dict[str, int] = field(default_factory=dict)  # cProfile: calls per function
    socket_write_split: dict[str, float] = field(default_factory=dict)
    other_thread_samples: dict[str, float] = field(default_factory=dict)
    idle_samples: float = 0
    thread_cpu_s: dict[str, float] = field(default_factory=dict)  # during the profiled run
    callbacks: int = 0
    server_cpu_s: float = 0.0
    wall_s: float = 0.0
    path: str = ""
    note: str = ""


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def analyze_pyspy(path: Path, main_tid: int) -> ProfileReport:
    """Self and cumulative samples per function and per group from py-spy's raw stacks.

    Only the main thread (the event loop, where callbacks are handled) is analysed: py-spy
    also reports threads blocked in a queue as active, so other threads are only counted.
    """
    groups: defaultdict[str, float] = defaultdict(float)
    self_time: defaultdict[str, float] = defaultdict(float)
    cumulative: defaultdict[str, float] = defaultdict(float)
    split: defaultdict[str, float] = defaultdict(float)
    others: defaultdict[str, float] = defaultdict(float)
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw_frames = stack.split(";")
        if raw_frames[0].startswith("thread ("):  # --threads: "thread (TID): NAME"
            thread = raw_frames.pop(0)
            if not thread.startswith(f"thread ({main_tid})"):
                others[thread] += count
                continue
        if not raw_frames:
            continue
        frames: list[tuple[str, str]] = []
        for raw in raw_frames:
            m = _FRAME.match(raw)
            frames.append((m["func"], m["file"]) if m else (raw, ""))
        if frames[-1][1].endswith("selectors.py") and frames[-1][0].endswith(".select"):
            idle += count  # waiting in epoll: py-spy reports some of that wait as active
            continue
        total += count
        keys = [f"{func} ({_short(file)})" for func, file in frames]
        self_time[keys[-1]] += count
        for key in set(keys):
            cumulative[key] += count
        group = "other: misc"
        for func, file in reversed(frames):
            found = classify(file, func)
            if found is not None:
                group = found
                break
        groups[group] += count
        if group == "socket writes":
            viewers = any("/relay/fanout/" in "/" + file for _, file in frames)
            split["viewer frames" if viewers else "HTTP responses"] += count
    report = ProfileReport("py-spy", total, groups, self_time, cumulative, socket_write_split=split)
    report.other_thread_samples = dict(others)
    report.idle_samples = idle
    return report


def analyze_cprofile(path: Path) -> ProfileReport:
    """Self time per group from cProfile; generic functions are charged to their callers."""
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, dict[Any, Any]]]
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    shares: dict[tuple[str, int, str], dict[str, float]] = {}

    def share(func: tuple[str, int, str], depth: int = 0) -> dict[str, float]:
        if func in shares:
            return shares[func]
        group = classify(func[0], func[2])
        if group is not None:
            result = {group: 1.0}
        elif depth > 30 or func not in stats:
            result = {"other: misc": 1.0}
        else:
            shares[func] = {"other: misc": 1.0}  # cycle guard
            callers = stats[func][4]
            weight = sum(edge[3] for edge in callers.values()) or 0.0
            result = {}
            if not callers or weight <= 0:
                result = {"other: misc": 1.0}
            for caller, edge in callers.items():
                if weight <= 0:
                    break
                for g, s in share(caller, depth + 1).items():
                    result[g] = result.get(g, 0.0) + s * edge[3] / weight
        shares[func] = result
        return result

    groups: defaultdict[str, float] = defaultdict(float)
    self_time: defaultdict[str, float] = defaultdict(float)
    cumulative: defaultdict[str, float] = defaultdict(float)
    calls: dict[str, int] = {}
    total = 0.0
    for func, (_cc, nc, tt, ct, _callers) in stats.items():
        if func[2] in _IDLE:
            continue
        key = f"{func[2]} ({_short(func[0])}:{func[1]})" if func[0] != "~" else func[2]
        self_time[key] += tt
        cumulative[key] += ct
        calls[key] = calls.get(key, 0) + nc
        total += tt
        for g, s in share(func).items():
            groups[g] += tt * s
    return ProfileReport("cProfile", total, groups, self_time, cumulative, calls=calls)


def _short(path: str) -> str:
    p = path.replace("\\", "/")
    for marker in ("/site-packages/", "/lib/python3.11/", str(common.ROOT) + "/"):
        if marker in p:
            return p.split(marker, 1)[1]
    return p


# The cProfile hook, loaded into the relay process through PYTHONPATH: SIGUSR1 toggles the
# profiler, and the stats are written when the process exits.
_SITECUSTOMIZE = """\
import atexit, cProfile, os, signal
_out = os.environ.get("BENCH_CPROFILE_OUT")
if _out:
    _prof = cProfile.Profile()
    _on = [False]

    def _toggle(signum, frame):
        if _on[0]:
            _prof.disable()
        else:
            _prof.enable()
        _on[0] = not _on[0]

    def _dump():
        if _on[0]:
            _prof.disable()
        _prof.dump_stats(_out)

    signal.signal(signal.SIGUSR1, _toggle)
    atexit.register(_dump)
"""


# --- the orchestrator ------------------------------------------------------------------


@dataclass
class Row:
    server: str
    phase: str
    client: str
    concurrency: int
    offered: float | None
    wall_s: float = 0.0
    sent: int = 0
    ok: int = 0
    failed: int = 0
    fail_sample: str = ""
    per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    slip_max_ms: float | None = None
    server_cpu_s: float = 0.0
    per_cpu_s: float | None = None
    client_cpu_pct: float = 0.0
    viewers_cpu_pct: float | None = None
    others_core0_pct: float | None = None
    others_core1_pct: float | None = None
    server_runq_pct: float | None = None
    gen_runq_pct: float | None = None
    verified: bool | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Target:
    name: str
    pid: int
    port: int
    streams: list[Stream]
    viewers: Child | None = None
    per_stream: int = 0
    control: aiohttp.ClientSession | None = None
    http_base: str = ""
    extra_cpu_pids: list[int] = field(default_factory=list)


def _ms(values: list[float], q: float) -> float | None:
    v = common.percentile(values, q)
    return None if v is None else v * 1000


async def scrape_metrics(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with asyncio.timeout(10):
        async with session.get(f"{base}/metrics") as resp:
            text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def _metric(m: dict[str, float], name: str) -> float:
    return m.get(name, 0.0)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[Row] = []
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.client_kind: str = args.client if args.client != "auto" else "raw"
        self.profile: ProfileReport | None = None
        self.relay_rss: tuple[int, int] | None = None
        self.relay_log: str = ""

    # --- one measured step ----------------------------------------------------------

    async def measure(
        self,
        target: Target,
        phase: str,
        client_kind: str,
        pool: int,
        concurrency: int,
        offered: float | None,
        run: Callable[[Client], Awaitable[Load]],
    ) -> Row:
        print(f"... {target.name}: {phase} ({client_kind} client)", file=sys.stderr, flush=True)
        before = [(s.partials_ok, s.finals_ok) for s in target.streams]
        counts0 = await self._counts(target)
        metrics0 = await self._metrics(target)
        client = make_client(client_kind, target.port, pool)
        viewers_pid = target.viewers.pid if target.viewers else None
        srv0 = common.cpu_seconds(target.pid)
        runq0 = common.run_queue_wait_seconds(target.pid)
        my_runq0 = common.run_queue_wait_seconds(os.getpid())
        extra0 = sum(common.cpu_seconds(p) for p in target.extra_cpu_pids)
        view0 = common.cpu_seconds(viewers_pid) if viewers_pid else 0.0
        me0 = time.process_time()
        busy0 = _core_busy()
        wall0 = time.monotonic()
        try:
            load = await run(client)
        finally:
            await client.close()
        wall = time.monotonic() - wall0
        srv = common.cpu_seconds(target.pid) - srv0
        runq1 = common.run_queue_wait_seconds(target.pid)
        my_runq1 = common.run_queue_wait_seconds(os.getpid())
        extra = sum(common.cpu_seconds(p) for p in target.extra_cpu_pids) - extra0
        view = (common.cpu_seconds(viewers_pid) - view0) if viewers_pid else 0.0
        me = time.process_time() - me0
        busy1 = _core_busy()
        row = Row(target.name, phase, client_kind, concurrency, offered)
        row.wall_s = load.wall_s
        row.sent, row.ok, row.failed = load.sent, load.ok, load.failed
        bad = {k: v for k, v in load.statuses.items() if k != 200}
        if load.failed:
            row.fail_sample = f"statuses {bad}, errors {load.errors} {load.error_sample}".strip()
        row.per_s = load.ok / load.wall_s if load.wall_s > 0 else 0.0
        lat = sorted(load.latencies)
        row.p50_ms, row.p99_ms = _ms(lat, 50), _ms(lat, 99)
        row.max_ms = lat[-1] * 1000 if lat else None
        row.slip_max_ms = load.slip_max_s * 1000 if offered else None
        row.server_cpu_s = srv
        row.per_cpu_s = load.ok / srv if srv > 0 else None
        row.client_cpu_pct = 100 * me / wall
        row.viewers_cpu_pct = 100 * view / wall if viewers_pid else None
        if busy0 is not None and busy1 is not None:
            row.others_core0_pct = max(0.0, 100 * (busy1[0] - busy0[0] - srv) / wall)
            row.others_core1_pct = max(0.0, 100 * (busy1[1] - busy0[1] - me - view - extra) / wall)
        if runq0 is not None and runq1 is not None:
            row.server_runq_pct = 100 * (runq1 - runq0) / wall
        if my_runq0 is not None and my_runq1 is not None:
            row.gen_runq_pct = 100 * (my_runq1 - my_runq0) / wall
        if (row.server_runq_pct or 0) > 5 or (row.gen_runq_pct or 0) > 5:
            row.notes.append(
                f"the server waited {_f(row.server_runq_pct)}% and the generator "
                f"{_f(row.gen_runq_pct)}% of the time for their cores (other work took "
                f"{_f(row.others_core0_pct)}% of core {SERVER_CPU}, {_f(row.others_core1_pct)}% "
                f"of core {CLIENT_CPU}): these numbers understate what this machine can do"
                + ("" if self.args.nice else " (try --nice -20)")
            )
        if load.ok == 0:
            self.errors.append(f"{target.name} {phase}: no callback was answered 200")
        if target.viewers is not None:
            await self._verify(target, row, before, counts0, metrics0)
        else:
            row.verified = load.failed == 0
            if load.failed:
                row.notes.append(f"{load.failed} callbacks failed: {row.fail_sample}")
        self.rows.append(row)
        return row

    async def _counts(self, target: Target) -> dict[str, Any] | None:
        if target.viewers is None:
            return None
        return await target.viewers.request({"cmd": "counts"}, "counts", 30)

    async def _metrics(self, target: Target) -> dict[str, float] | None:
        if target.control is None:
            return None
        return await scrape_metrics(target.control, target.http_base)

    async def _drain(
        self, target: Target, expected: int, counts0: dict[str, Any]
    ) -> dict[str, Any]:
        """Wait until the viewers have ``expected`` more caption frames, or progress stops."""
        assert target.viewers is not None
        base = sum(r[1] + r[2] for r in counts0["rows"])
        deadline = time.monotonic() + 30
        last, last_change = -1, time.monotonic()
        while True:
            counts = await target.viewers.request({"cmd": "counts"}, "counts", 30)
            got = sum(r[1] + r[2] for r in counts["rows"]) - base
            if got >= expected or time.monotonic() > deadline:
                return counts
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > 3:
                return counts
            await asyncio.sleep(0.1)

    async def _verify(
        self,
        target: Target,
        row: Row,
        before: list[tuple[int, int]],
        counts0: dict[str, Any] | None,
        metrics0: dict[str, float] | None,
    ) -> None:
        """Every callback 200; relay's counters agree; every viewer got its stream's frames."""
        assert counts0 is not None and metrics0 is not None and target.control is not None
        sent_p = [s.partials_ok - b[0] for s, b in zip(target.streams, before, strict=True)]
        sent_f = [s.finals_ok - b[1] for s, b in zip(target.streams, before, strict=True)]
        rows0 = counts0["rows"]
        open_per_stream = Counter(r[0] for r in rows0 if r[5])
        expected = sum(
            open_per_stream[i] * (p + f)
            for i, (p, f) in enumerate(zip(sent_p, sent_f, strict=True))
        )
        counts1 = await self._drain(target, expected, counts0)
        metrics1 = await scrape_metrics(target.control, target.http_base)
        rows1 = counts1["rows"]
        problems: list[str] = []
        if row.failed:
            problems.append(f"{row.failed} callbacks not answered 200: {row.fail_sample}")

        def delta(name: str) -> float:
            return _metric(metrics1, name) - _metric(metrics0, name)

        accepted = delta('relay_callbacks_total{result="accepted"}')
        if round(accepted) != row.ok:
            problems.append(f"relay counted {accepted:.0f} accepted callbacks, {row.ok} got 200")
        published_p = delta('relay_caption_events_total{type="partial"}')
        published_f = delta('relay_caption_events_total{type="final"}')
        if round(published_p) != sum(sent_p) or round(published_f) != sum(sent_f):
            problems.append(
                f"relay published {published_p:.0f} partials / {published_f:.0f} finals for "
                f"{sum(sent_p)} / {sum(sent_f)} sent"
            )
        coalesced = round(delta("relay_partials_coalesced_total"))
        # Per stream: its viewers' received partials and finals against what it was sent.
        missing_finals = extra = closed = 0
        partial_deficit: dict[int, set[int]] = {}
        for r0, r1 in zip(rows0, rows1, strict=True):
            no = r0[0]
            if r0[5] and not r1[5]:
                closed += 1
                continue
            if not r0[5]:
                continue
            got_p, got_f = r1[1] - r0[1], r1[2] - r0[2]
            missing_finals += max(0, sent_f[no] - got_f)
            extra += max(0, got_f - sent_f[no]) + max(0, got_p - sent_p[no])
            partial_deficit.setdefault(no, set()).add(max(0, sent_p[no] - got_p))
        uneven = [no for no, d in partial_deficit.items() if len(d) > 1]
        deficit = sum(max(d) for d in partial_deficit.values())
        if closed:
            problems.append(f"{closed} viewers were disconnected (closes {counts1['closes']})")
        if missing_finals:
            problems.append(f"{missing_finals} final frames missing at viewers")
        if extra:
            problems.append(f"{extra} frames more than sent (duplicates?)")
        if uneven:
            problems.append(f"viewers of {len(uneven)} streams got different partial counts")
        if deficit != coalesced:
            problems.append(
                f"viewers missed {deficit} partials per stream-audience; relay reports "
                f"{coalesced} coalesced"
            )
        elif coalesced:
            row.notes.append(
                f"{coalesced} partials coalesced by relay (documented), all else exact"
            )
        deliveries = delta("relay_deliveries_total")
        received = sum(r1[1] + r1[2] - r0[1] - r0[2] for r0, r1 in zip(rows0, rows1, strict=True))
        row.notes.append(
            f"viewers received {received} caption frames (relay counts {deliveries:.0f} "
            f"deliveries) for {sum(sent_p)} partials + {sum(sent_f)} finals sent"
        )
        row.verified = not problems
        row.notes.extend(problems)

    # --- a server's steps -----------------------------------------------------------

    async def client_check(self, target: Target) -> dict[str, Row]:
        """The same short closed loop with both clients: which one limits the generator?"""
        out: dict[str, Row] = {}
        c = min(16, len(target.streams))
        for kind in ("aiohttp", "raw"):
            out[kind] = await self.measure(
                target,
                "client check",
                kind,
                c,
                c,
                None,
                _closed(target.streams, c, self.args.check_seconds),
            )
        return out

    async def phases(self, target: Target) -> Row:
        """Open loop at --rate, then the concurrency ramp, then the sustained closed loop."""
        args = self.args
        kind = self.client_kind
        await self.measure(
            target,
            f"open loop {args.rate:g}/s",
            kind,
            OPEN_LOOP_POOL,
            OPEN_LOOP_POOL,
            args.rate,
            lambda client: open_loop(client, target.streams, args.rate, args.seconds),
        )
        best: Row | None = None
        worse = 0
        for c in args.ramp:
            if c > len(target.streams):
                break
            row = await self.measure(
                target,
                "ramp",
                kind,
                c,
                c,
                None,
                _closed(target.streams, c, args.ramp_seconds),
            )
            if best is None or row.per_s > best.per_s * 1.03:
                best, worse = row, 0
            else:
                worse += 1
                if worse >= 2:
                    break
        c = best.concurrency if best is not None else 8
        return await self.measure(
            target,
            "max sustained",
            kind,
            c,
            c,
            None,
            _closed(target.streams, c, args.seconds),
        )

    def _choose_client(self, check: dict[str, Row]) -> None:
        if self.args.client != "auto":
            return
        a, r = check["aiohttp"], check["raw"]
        self.client_kind = "aiohttp" if a.per_s >= r.per_s * 1.05 else "raw"
        self.notes.append(
            f"client: against the baseline at {a.concurrency} in flight aiohttp's client reached "
            f"{a.per_s:.0f}/s using {a.client_cpu_pct:.0f}% of core {CLIENT_CPU} "
            f"({_us_per(a):.0f} us CPU per request), the raw asyncio client {r.per_s:.0f}/s "
            f"using {r.client_cpu_pct:.0f}% ({_us_per(r):.0f} us per request): using "
            f"{self.client_kind}"
        )

    async def run_baseline(self) -> None:
        args = self.args
        port = common.free_port()
        proc, log_path = start_baseline(port, args.nice)
        try:
            await wait_port(port, lambda: proc.poll() is None, "baseline")
            streams = [
                Stream(
                    i,
                    f"base-{i}",
                    f"asr-base-{i:04d}",
                    os.urandom(16).hex(),
                    f"http://{HOST}:{port}/v1/callbacks/aliyun/{base64.urlsafe_b64encode(os.urandom(24)).decode()}",
                )
                for i in range(args.streams)
            ]
            target = Target("baseline", proc.pid, port, streams)
            self._choose_client(await self.client_check(target))
            await self.phases(target)
        finally:
            code = common.stop_process(proc, 10)
            if code not in (0, -signal.SIGTERM, None):
                self.notes.append(f"baseline exited with {code}: {common.tail(log_path, 500)}")
            with contextlib.suppress(OSError):
                log_path.unlink()

    async def run_relay(self) -> None:
        args = self.args
        env: dict[str, str] = {}
        hook_dir: tempfile.TemporaryDirectory[str] | None = None
        cprofile_out: Path | None = None
        if args.profiler == "cprofile":
            hook_dir = tempfile.TemporaryDirectory(prefix="callbacks-cprofile-")
            Path(hook_dir.name, "sitecustomize.py").write_text(_SITECUSTOMIZE)
            cprofile_out = Path(hook_dir.name, "relay.prof")
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (hook_dir.name, os.environ.get("PYTHONPATH", "")) if p
            )
            env["BENCH_CPROFILE_OUT"] = str(cprofile_out)
        server = common.start_relay(cpu=SERVER_CPU, env=env, nice=args.nice)
        viewers: Child | None = None
        timeout = aiohttp.ClientTimeout(total=60)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as control:
                await common.wait_relay_ready(control, server)
                attached = await _attach_all(control, server, args.streams)
                streams = [
                    Stream(i, a.stream_id, a.task_id, a.auth_key, a.callback_url)
                    for i, a in enumerate(attached)
                ]
                viewers = await Child.start(
                    Path(__file__),
                    "viewers",
                    ["--role", "viewers", "--port", str(server.ws_port)],
                    CLIENT_CPU,
                    args.nice,
                )
                paths = [f"/v1/captions/{a.stream_id}" for a in attached]
                ready = await viewers.request(
                    {"cmd": "connect", "paths": paths, "per_path": args.viewers_per_stream},
                    "ready",
                    120,
                )
                wanted = args.streams * args.viewers_per_stream
                if ready["failed"]:
                    (self.errors if ready["failed"] * 2 > wanted else self.notes).append(
                        f"{ready['failed']} of {wanted} viewers could not connect: "
                        f"{ready['errors']}"
                    )
                self.notes.append(
                    f"relay: {len(streams)} streams attached, {ready['connected']} viewers "
                    f"connected in {ready['seconds']:.1f} s"
                )
                target = Target(
                    "relay",
                    server.pid,
                    server.http_port,
                    streams,
                    viewers,
                    args.viewers_per_stream,
                    control,
                    server.http_base,
                )
                rss0 = common.rss_bytes(server.pid)
                warm_client = make_client(self.client_kind, server.http_port, OPEN_LOOP_POOL)
                counts0 = await viewers.request({"cmd": "counts"}, "counts", 30)
                try:
                    warm = await warm_up(warm_client, streams)
                finally:
                    await warm_client.close()
                if warm.failed:
                    self.errors.append(
                        f"relay warm-up: {warm.failed} of {warm.sent} callbacks failed: "
                        f"{dict(warm.statuses)} {warm.error_sample}"
                    )
                    return
                # Let the warm-up's frames arrive before the first measured step counts.
                await self._drain(target, warm.ok * args.viewers_per_stream, counts0)
                await self.client_check(target)
                best = await self.phases(target)
                if args.profiler != "none":
                    await self._profile(target, best.concurrency, cprofile_out)
                self.relay_rss = (rss0, common.rss_bytes(server.pid))
                if not server.alive():
                    self.errors.append(f"relay died: {server.log_tail()}")
        finally:
            if viewers is not None:
                await viewers.stop()
            code = server.stop(15)
            self.relay_log = common.tail(server.log_path, 100_000)
            with contextlib.suppress(OSError):
                server.log_path.unlink()
            if code not in (0, None):
                self.errors.append(f"relay exited with {code}: {self.relay_log[-1500:]}")
            if cprofile_out is not None and self.profile is not None:
                self._finish_cprofile(cprofile_out)
            if hook_dir is not None:
                hook_dir.cleanup()

    async def _profile(self, target: Target, c: int, cprofile_out: Path | None) -> None:
        args = self.args
        seconds = args.profile_seconds

        run = _closed(target.streams, c, seconds)

        if args.profiler == "cprofile":
            os.kill(target.pid, signal.SIGUSR1)
            threads0 = thread_cpu(target.pid)
            try:
                row = await self.measure(
                    target, "max, under cProfile", self.client_kind, c, c, None, run
                )
            finally:
                os.kill(target.pid, signal.SIGUSR1)
            threads = _delta(thread_cpu(target.pid), threads0)
            self.profile = ProfileReport("cProfile", 0, {}, {}, {})
            self.profile.callbacks, self.profile.server_cpu_s = row.ok, row.server_cpu_s
            self.profile.wall_s = row.wall_s
            self.profile.thread_cpu_s = threads
            return
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            self.notes.append("profile skipped: py-spy is not installed (try --profiler cprofile)")
            return
        out_dir = Path(tempfile.mkdtemp(prefix="callbacks-profile-"))
        out = out_dir / "relay-pyspy.txt"
        err = out_dir / "py-spy.log"
        duration = math.ceil(seconds) + 2
        with err.open("wb") as err_file:
            proc = subprocess.Popen(
                common.launch_argv(
                    [
                        py_spy,
                        *("record", "--pid", str(target.pid), "--duration", str(duration)),
                        *("--rate", str(args.profile_rate), "--format", "raw", "--nolineno"),
                        *("--threads", "--full-filenames"),
                        *("-o", str(out)),
                    ],
                    CLIENT_CPU,
                    args.nice,
                ),
                stdin=subprocess.DEVNULL,
                stdout=err_file,
                stderr=subprocess.STDOUT,
            )
        try:
            await asyncio.sleep(1.0)  # let it attach
            target.extra_cpu_pids = [proc.pid]
            threads0 = thread_cpu(target.pid)
            try:
                row = await self.measure(
                    target,
                    f"max, under py-spy {args.profile_rate} Hz",
                    self.client_kind,
                    c,
                    c,
                    None,
                    run,
                )
            finally:
                target.extra_cpu_pids = []
            threads = _delta(thread_cpu(target.pid), threads0)
            deadline = time.monotonic() + duration + 20
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        finally:
            common.stop_process(proc, 5)
        if not out.exists():
            self.notes.append(f"py-spy wrote no profile: {common.tail(err, 800)}")
            return
        report = analyze_pyspy(out, target.pid)
        report.callbacks, report.wall_s = row.ok, row.wall_s
        report.thread_cpu_s = threads
        # Scale by the event loop thread's CPU: that is what the analysed samples cover.
        report.server_cpu_s = next(
            (v for k, v in threads.items() if k.endswith(f"({target.pid})")), row.server_cpu_s
        )
        report.path = str(out)
        self.profile = report

    def _finish_cprofile(self, path: Path) -> None:
        assert self.profile is not None
        if not path.exists():
            self.notes.append("cProfile wrote no stats (relay did not exit normally?)")
            self.profile = None
            return
        report = analyze_cprofile(path)
        report.callbacks = self.profile.callbacks
        report.server_cpu_s = self.profile.server_cpu_s
        report.wall_s = self.profile.wall_s
        report.thread_cpu_s = self.profile.thread_cpu_s
        keep = Path(tempfile.mkdtemp(prefix="callbacks-profile-")) / "relay.prof"
        shutil.copyfile(path, keep)
        report.path = str(keep)
        self.profile = report


def _closed(
    streams: Sequence[Stream], concurrency: int, seconds: float
) -> Callable[[Client], Awaitable[Load]]:
    return lambda client: closed_loop(client, streams, concurrency, seconds)


async def _attach_all(
    session: aiohttp.ClientSession, server: common.RelayServer, n: int
) -> list[common.Attached]:
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> common.Attached:
        async with gate:
            return await common.attach_stream(session, server, f"bench-{i:04d}")

    return list(await asyncio.gather(*(one(i) for i in range(n))))


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of ``pid``, keyed ``name (tid)``."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                base = f"/proc/{pid}/task/{tid}"
                name = Path(base, "comm").read_text().strip()
                stat = Path(base, "stat").read_bytes()
                fields = stat[stat.rindex(b")") + 2 :].split()
                label = "main" if tid == str(pid) else name
                out[f"{label} ({tid})"] = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return out


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _core_busy() -> tuple[float, float] | None:
    try:
        return common.core_busy_seconds(SERVER_CPU), common.core_busy_seconds(CLIENT_CPU)
    except (OSError, RuntimeError):
        return None


def _us_per(row: Row) -> float:
    return 1e6 * row.client_cpu_pct / 100 * row.wall_s / max(1, row.sent)


# --- output ----------------------------------------------------------------------------


def _f(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


COLUMNS = (
    ("server", 8),
    ("phase", 26),
    ("client", 7),
    ("in flight", 9),
    ("offered/s", 9),
    ("ok/s", 6),
    ("ack p50/p99/max ms", 20),
    ("slip ms", 7),
    ("srv CPU s", 9),
    ("cb/CPU-s", 8),
    ("gen CPU", 7),
    ("view CPU", 8),
    ("waited srv/gen", 14),
    ("verified", 8),
)


def render(bench: Bench, elapsed: float) -> str:
    args = bench.args
    lines = [
        f"callbacks: {args.streams} attached streams x {args.viewers_per_stream} viewers, "
        f"{args.seconds:g} s per phase, open loop at {args.rate:g}/s, a SentenceEnd every "
        f"{EVENTS_PER_SENTENCE}th callback of a stream; servers on core {SERVER_CPU}, load "
        f"generator (and viewers) on core {CLIENT_CPU}"
        + (f", nice {args.nice}" if args.nice else ""),
        "",
        "  ".join(name.rjust(w) if i else name.ljust(w) for i, (name, w) in enumerate(COLUMNS)),
    ]
    for r in bench.rows:
        in_flight = str(r.concurrency) if r.offered is None else f"<={r.concurrency}"
        cells = (
            r.server,
            r.phase,
            r.client,
            in_flight,
            _f(r.offered),
            _f(r.per_s),
            f"{_f(r.p50_ms, '{:.1f}')}/{_f(r.p99_ms, '{:.1f}')}/{_f(r.max_ms, '{:.0f}')}",
            _f(r.slip_max_ms, "{:.1f}"),
            _f(r.server_cpu_s, "{:.2f}"),
            _f(r.per_cpu_s),
            f"{r.client_cpu_pct:.0f}%",
            _f(r.viewers_cpu_pct, "{:.0f}%"),
            f"{_f(r.server_runq_pct)}%/{_f(r.gen_runq_pct)}%",
            {None: "-", True: "yes", False: "NO"}[r.verified],
        )
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS, strict=True))
            )
        )
    lines.append("")
    for r in bench.rows:
        for note in r.notes:
            lines.append(f"  {r.server} {r.phase} (x{r.concurrency}): {note}")
    lines.extend(f"  NOTE {n}" for n in bench.notes)
    if bench.relay_rss:
        a, b = bench.relay_rss
        lines.append(
            f"  relay RSS {a / 2**20:.0f} MiB after attach -> {b / 2**20:.0f} MiB at the end"
        )
    warnings = [
        line
        for line in bench.relay_log.splitlines()
        if '"level": "warning"' in line or '"level": "error"' in line
    ]
    if warnings:
        lines.append(f"  relay logged {len(warnings)} warnings/errors, e.g. {warnings[0][:300]}")
    lines.append("")
    lines.extend(compare(bench))
    if bench.profile is not None:
        lines.append("")
        lines.extend(render_profile(bench.profile))
    lines.extend(["", f"total time {elapsed:.0f} s"])
    lines.extend(f"ERROR (run broken) {e}" for e in bench.errors)
    return "\n".join(lines)


def _find(bench: Bench, server: str, phase_prefix: str) -> Row | None:
    for r in bench.rows:
        if r.server == server and r.phase.startswith(phase_prefix):
            return r
    return None


def compare(bench: Bench) -> list[str]:
    out: list[str] = []
    relay, base = _find(bench, "relay", "max sustained"), _find(bench, "baseline", "max sustained")
    if relay and base and base.per_s:
        out.append(
            f"relay/baseline: max sustained {relay.per_s:.0f}/{base.per_s:.0f} = "
            f"{relay.per_s / base.per_s:.2f}x"
            + (
                f"; callbacks per server CPU-second {relay.per_cpu_s:.0f}/{base.per_cpu_s:.0f} = "
                f"{relay.per_cpu_s / base.per_cpu_s:.2f}x; server CPU per callback "
                f"{1e6 / relay.per_cpu_s:.0f} us vs {1e6 / base.per_cpu_s:.0f} us"
                if relay.per_cpu_s and base.per_cpu_s
                else ""
            )
        )
    ro, bo = _find(bench, "relay", "open loop"), _find(bench, "baseline", "open loop")
    if ro and bo:
        out.append(
            f"open loop {bench.args.rate:g}/s ack p99: relay {_f(ro.p99_ms, '{:.1f}')} ms, "
            f"baseline {_f(bo.p99_ms, '{:.1f}')} ms"
        )
    out.append("targets (issue 3):")

    def check(ok: bool, text: str) -> None:
        out.append(f"  [{'met ' if ok else 'MISS'}] {text}")

    if relay:
        check(
            relay.per_s >= 2000 and bool(relay.verified),
            f">= 2,000 verified callbacks/s: {relay.per_s:.0f}/s"
            + ("" if relay.verified else " (NOT verified)"),
        )
    if ro:
        check(
            ro.p99_ms is not None and ro.p99_ms <= 20 and bool(ro.verified),
            f"p99 acknowledgement <= 20 ms at {bench.args.rate:g}/s: {_f(ro.p99_ms, '{:.1f}')} ms"
            + ("" if ro.verified else " (NOT verified)"),
        )
    return out


def render_profile(p: ProfileReport) -> list[str]:
    unit = "samples" if p.tool == "py-spy" else "s"
    total = p.samples
    if total <= 0 or p.callbacks <= 0:
        return [f"profile ({p.tool}): nothing recorded"]
    per_cb_us = 1e6 * p.server_cpu_s / p.callbacks
    head = (
        f"profile of one callback ({p.tool}, {total:.0f} {unit} while relay answered "
        f"{p.callbacks} callbacks at {p.callbacks / max(p.wall_s, 1e-9):.0f}/s; "
        f"{per_cb_us:.0f} us of {'event loop thread' if p.tool == 'py-spy' else 'server'} CPU "
        "per callback under the profiler)"
    )
    lines = [head]
    if p.thread_cpu_s:
        lines.append(
            "  relay threads' CPU during the run: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(p.thread_cpu_s.items()))
            + (
                " (only the main, event loop thread is analysed below)"
                if p.tool == "py-spy"
                else ""
            )
        )
    if p.idle_samples:
        lines.append(
            f"  {p.idle_samples:.0f} more samples of the main thread sat in epoll_wait (idle; left "
            "out, so the real epoll syscall cost is spread over the groups)"
        )
    lines.append(f"  {'group':<28}{'share':>7}{'us/callback':>13}")
    tops: defaultdict[str, float] = defaultdict(float)
    for g, v in p.groups.items():
        tops[top_group(g)] += v
    for g in GROUPS:
        share = tops.get(g, 0) / total
        extra = ""
        if g == "socket writes" and p.socket_write_split:
            extra = (
                "   ("
                + ", ".join(
                    f"{k} {100 * v / total:.1f}%"
                    for k, v in sorted(p.socket_write_split.items(), key=lambda kv: -kv[1])
                )
                + ")"
            )
        lines.append(f"  {g:<28}{100 * share:>6.1f}%{share * per_cb_us:>13.1f}{extra}")
        if g == "other":
            for sub, v in sorted(p.groups.items(), key=lambda kv: -kv[1]):
                if sub.startswith("other"):
                    s = v / total
                    lines.append(f"    {sub[7:]:<26}{100 * s:>6.1f}%{s * per_cb_us:>13.1f}")
    lines.append("")
    what = "% of samples" if unit == "samples" else "% of profiled time"
    lines.append(f"  top functions by self time ({what}, us/callback):")
    lines.extend(_top(p, p.self_time, per_cb_us, 20))
    lines.append("")
    lines.append("  top functions by cumulative time (loop roots above 97% left out):")
    lines.extend(_top(p, p.cumulative, per_cb_us, 25, skip_above=0.97))
    if p.path:
        lines.append(f"  raw profile: {p.path}")
    return lines


def _top(
    p: ProfileReport, table: dict[str, float], per_cb_us: float, n: int, skip_above: float = 2.0
) -> list[str]:
    out: list[str] = []
    for key, v in sorted(table.items(), key=lambda kv: -kv[1]):
        share = v / p.samples
        if share > skip_above:
            continue
        calls = ""
        if p.calls:
            calls = f"  {p.calls.get(key, 0) / p.callbacks:7.2f} calls/cb"
        out.append(f"    {100 * share:5.1f}% {share * per_cb_us:7.1f} us{calls}  {key}")
        if len(out) >= n:
            break
    return out


# --- main ------------------------------------------------------------------------------


def _levels(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("ramp levels are positive integers, comma-separated")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--viewers-per-stream", type=int, default=10)
    p.add_argument("--seconds", type=float, default=15.0, help="open loop and sustained runs")
    p.add_argument("--rate", type=float, default=500.0, help="open-loop callbacks per second")
    p.add_argument("--ramp", type=_levels, default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--ramp-seconds", type=float, default=3.0)
    p.add_argument("--check-seconds", type=float, default=3.0, help="client check runs")
    p.add_argument("--client", choices=("auto", "raw", "aiohttp"), default="auto")
    p.add_argument("--profiler", choices=("py-spy", "cprofile", "none"), default="py-spy")
    p.add_argument("--profile-seconds", type=float, default=10.0)
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--servers", default="baseline,relay")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        help="before each server, wait up to this many seconds for other load to stop",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority of the benchmark's processes and of its session's "
        "autogroup (negative: ahead of other work on a shared machine; needs root)",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 5 streams x 2 viewers, 3 s")
    p.add_argument("--role", choices=("viewers", "baseline"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return p


async def orchestrate(bench: Bench) -> None:
    servers = [s.strip() for s in bench.args.servers.split(",") if s.strip()]
    for server in ("baseline", "relay"):
        if server not in servers:
            continue
        if bench.args.wait_quiet > 0:
            busy = common.wait_quiet(0.15, bench.args.wait_quiet)
            if busy >= 0.15:
                bench.notes.append(
                    f"before {server}: the machine was still {100 * busy:.0f}% busy (of one core) "
                    "with other work"
                )
        try:
            if server == "baseline":
                await bench.run_baseline()
            else:
                await bench.run_relay()
        except Exception as exc:
            bench.errors.append(f"{server}: {exc!r}\n{traceback.format_exc()}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.role == "viewers":
        asyncio.run(viewers_main(args.port))
        return 0
    if args.role == "baseline":
        asyncio.run(baseline_main(args.port))
        return 0
    if args.quick:
        args.streams, args.viewers_per_stream, args.seconds = 5, 2, 3.0
        args.ramp, args.ramp_seconds, args.check_seconds = [1, 4], 1.5, 1.0
        args.profile_seconds, args.wait_quiet = 2.0, min(args.wait_quiet, 5.0)
    if not (1 <= args.streams <= 1000 and 1 <= args.viewers_per_stream <= 100):
        print("callbacks: --streams 1..1000, --viewers-per-stream 1..100", file=sys.stderr)
        return 2
    if not (0 < args.seconds <= 120 and 0 < args.rate <= 50000 and 0 < args.ramp_seconds <= 60):
        print("callbacks: --seconds in (0, 120], --rate in (0, 50000]", file=sys.stderr)
        return 2
    if not (0 < args.check_seconds <= 30 and 0 < args.profile_seconds <= 60):
        print(
            "callbacks: --check-seconds in (0, 30], --profile-seconds in (0, 60]", file=sys.stderr
        )
        return 2
    common.raise_fd_limit()
    if common.cpu_count() < 2:
        print("callbacks: fewer than 2 cores: server and generator share one", file=sys.stderr)
    else:
        common.pin_self(CLIENT_CPU)
    bench = Bench(args)
    if not fast_bodies_match():
        Stream.fast_bodies = False
        bench.notes.append(
            "callback bodies: the fast formatter no longer matches common.callback_body; "
            "using common.callback_body (the generator is slower)"
        )
    started = time.monotonic()
    try:
        with common.priority(args.nice) if args.nice else contextlib.nullcontext():
            asyncio.run(orchestrate(bench))
    except KeyboardInterrupt:
        bench.errors.append("interrupted")
    print(render(bench, time.monotonic() - started))
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
