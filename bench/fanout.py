"""Fan-out benchmark: N viewers on one stream, signed callbacks in, captions out.

    python bench/fanout.py [--viewers 100,1000,5000,10000] [--seconds 20] [--rate 10] [--quick]

For each N, two servers are measured in turn, each alone on core 0:

* ``relay``: ``python -m relay serve`` with one attached Alibaba task. This process sends
  it signed callbacks (``TranscriptionResultChanged`` partials with growing text, a
  ``SentenceEnd`` final every 10th event) at ``--rate`` events/s, open loop.
* ``baseline``: a bare ``websockets`` server that ``broadcast()``s the same messages (same
  JSON shape and size, same schedule) to every connection, generating them itself.

``--servers relay,baseline,prepared`` adds a third reference, ``prepared``: bare
``websockets`` again, but one frame built per message and written with ``transport.write``
to every connection, no policy at all: about the ceiling of "encode once, write the same
bytes to everyone" in Python on asyncio transports.

The N viewers live in one load-client process on core 1: a hand-made WebSocket client
(blocking handshakes in batches, then a single epoll loop, unmasked server frames parsed
by length) that counts frames on every connection and parses JSON only on about 200 probe
connections. Every caption carries the time it was scheduled for (``#<time_ns>`` at the
end of its text), so latency includes any schedule slip of the sender. The rows report
deliveries per second and per server CPU second (user + system time of the server
process), latency percentiles, whether every final reached every viewer, whether latency
grows over the run (first vs last third), RSS per idle viewer, and the load client's CPU
share of its core (near 100%, the client, not the server, may be what limits a row).

On a machine shared with other work, ``--nice -20`` (root) gives the benchmark's session
its cores; each row says how long the server waited for its core.

The hidden ``--role client|baseline|prepared`` runs the helper processes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import select
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.frames import Frame, Opcode
from websockets.version import version as websockets_version

from bench import common

HOST = common.HOST
STREAM_ID = "bench"
SERVER_CPU = 0
CLIENT_CPU = 1
EVENTS_PER_SENTENCE = 10  # the 10th event of each sentence is its final
_SPEECH = (
    "captions flow from the recognizer through relay to every viewer of this live stream "
    "while the speaker keeps talking about the weather and the match tonight"
)
_WORDS = tuple(_SPEECH.split())
_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --- the script both servers follow ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScriptEvent:
    final: bool
    index: int  # sentence index, from 1 (index 0 is the relay's warm-up sentence)
    time_ms: int
    begin_ms: int
    fixed: str
    unfixed: str  # ends with "#<scheduled time_ns>"

    @property
    def text(self) -> str:
        return self.fixed + self.unfixed


def script_event(i: int, scheduled_ns: int) -> ScriptEvent:
    """Event ``i`` of the run: a growing partial, or every 10th event the sentence's final."""
    index, step = divmod(i, EVENTS_PER_SENTENCE)
    index += 1
    begin_ms = (index - 1) * 1000 * EVENTS_PER_SENTENCE // 10
    time_ms = begin_ms + (step + 1) * 100
    tag = f"#{scheduled_ns}"
    if step == EVENTS_PER_SENTENCE - 1:
        return ScriptEvent(True, index, time_ms, begin_ms, "", " ".join(_WORDS[:8]) + " " + tag)
    words = _WORDS[: 2 + step // 2]
    return ScriptEvent(
        False, index, time_ms, begin_ms, " ".join(words[:-1]) + " ", words[-1] + " " + tag
    )


def scheduled_at(t0_ns: int, i: int, rate: float) -> int:
    return t0_ns + round(i * 1e9 / rate)


def event_count(seconds: float, rate: float) -> int:
    """Events in a run: whole sentences, so the last event is a final."""
    return max(1, math.ceil(seconds * rate / EVENTS_PER_SENTENCE)) * EVENTS_PER_SENTENCE


def wire_message(ev: ScriptEvent, seq: int) -> str:
    """The viewer message for ``ev`` in relay's wire format (SPEC §3.4), for the baseline."""
    if ev.final:
        return _DUMPS(
            {
                "type": "final",
                "stream_id": STREAM_ID,
                "seq": seq,
                "index": ev.index,
                "text": ev.text,
                "start_ms": ev.begin_ms,
                "end_ms": ev.time_ms,
                "words": [],
                "translations": {},
            }
        )
    return _DUMPS(
        {
            "type": "partial",
            "stream_id": STREAM_ID,
            "seq": seq,
            "index": ev.index,
            "text": ev.text,
            "stable": ev.fixed,
            "start_ms": ev.begin_ms,
            "end_ms": ev.time_ms,
        }
    )


def callback_for(task_id: str, ev: ScriptEvent) -> bytes:
    """The Alibaba callback body that makes relay emit ``ev``."""
    if ev.final:
        payload = common.final_payload(ev.index, ev.time_ms, ev.begin_ms, ev.text)
        return common.callback_body(task_id, "SentenceEnd", payload)
    payload = common.partial_payload(ev.index, ev.time_ms, ev.fixed, ev.unfixed)
    return common.callback_body(task_id, "TranscriptionResultChanged", payload)


# --- child processes: plumbing ---------------------------------------------------------


emit = common.emit
stdin_reader = common.stdin_reader
Child = common.Child


# --- role: load client (core 1) --------------------------------------------------------
#
# No asyncio here: after a blocking, batched handshake, one epoll loop reads every viewer
# socket into one shared buffer. Per frame that costs a recv and a few bytecodes, about
# half of what an asyncio Protocol costs, so the client stays off the critical path.


class HandshakeError(Exception):
    pass


_P = ord("p")  # {"type":"partial"...: byte 9 of the payload
_F = ord("f")  # {"type":"final"...


class ClientStats:
    __slots__ = ("caption_bytes", "closes", "last_rx_ns", "lost", "samples")

    def __init__(self) -> None:
        self.caption_bytes = 0
        self.last_rx_ns = 0
        self.samples: list[tuple[int, int, bool]] = []  # (scheduled_ns, latency_ns, final)
        self.closes: dict[str, int] = {}
        self.lost = 0

    def reset(self) -> None:
        self.caption_bytes = 0
        self.last_rx_ns = 0
        self.samples = []


class Viewer:
    """One viewer socket: counts caption frames, samples latency if a probe, answers pings."""

    __slots__ = ("buf", "finals", "is_open", "partials", "probe", "sock", "stats")

    def __init__(self, sock: socket.socket, stats: ClientStats, probe: bool) -> None:
        self.sock = sock
        self.stats = stats
        self.probe = probe
        self.buf = b""  # the start of an incomplete frame
        self.is_open = True
        self.partials = 0
        self.finals = 0

    def feed(self, data: bytes | bytearray, n: int) -> None:
        """Take ``data[:n]`` just read: count complete frames, keep an incomplete tail."""
        if self.buf:
            data = self.buf + data[:n]
            n = len(data)
        pos = 0
        counted = 0
        while (header := common.frame_header(data, pos, n)) is not None:
            hdr, length = header
            end = pos + hdr + length
            opcode = data[pos] & 0x0F
            if opcode == 1:
                kind = data[pos + hdr + 9] if length > 9 else 0
                if kind == _P:
                    self.partials += 1
                    counted += end - pos
                elif kind == _F:
                    self.finals += 1
                    counted += end - pos
                if self.probe and kind in (_P, _F):
                    self._sample(bytes(data[pos + hdr : end]), kind == _F)
            elif opcode == 9:  # ping: answer with a masked pong (mask key 0)
                self._send(0xA, bytes(data[pos + hdr : end]))
            elif opcode == 8:  # close: echo it, note the code
                payload = bytes(data[pos + hdr : end])
                code = str(int.from_bytes(payload[:2], "big")) if len(payload) >= 2 else "none"
                self.stats.closes[code] = self.stats.closes.get(code, 0) + 1
                self._send(0x8, payload[:2])
                self.close()
                return
            pos = end
        self.buf = bytes(data[pos:n]) if pos < n else b""
        if counted:
            stats = self.stats
            stats.caption_bytes += counted
            stats.last_rx_ns = time.time_ns()

    def _sample(self, payload: bytes, final: bool) -> None:
        now = time.time_ns()
        text = json.loads(payload)["text"]
        scheduled = int(text.rsplit("#", 1)[1])
        self.stats.samples.append((scheduled, now - scheduled, final))

    def _send(self, opcode: int, payload: bytes) -> None:
        head = bytes((0x80 | opcode, 0x80 | len(payload)))
        with contextlib.suppress(OSError):  # a few bytes: they fit, or the peer is gone
            self.sock.send(head + b"\0\0\0\0" + payload)

    def close(self) -> None:
        """Stop reading (the read loop unregisters and closes the socket)."""
        self.is_open = False


def _upgrade_request(port: int, path: str) -> tuple[bytes, str]:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    return request.encode(), key


def _read_upgrade(sock: socket.socket, key: str) -> bytes:
    """Read the 101 response; return what came after it (the first frames)."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(4096)
        if not chunk:
            raise HandshakeError("connection closed during the handshake")
        data += chunk
        if len(data) > 16384:
            raise HandshakeError("response head too long")
    status, *lines = data[:end].decode("latin-1").split("\r\n")
    if not status.startswith("HTTP/1.1 101"):
        raise HandshakeError(status)
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
    if headers.get("sec-websocket-accept") != accept:
        raise HandshakeError("bad Sec-WebSocket-Accept")
    return data[end + 4 :]


def connect_viewers(
    stats: ClientStats, port: int, path: str, n: int, probes: int, batch: int = 64
) -> tuple[list[Viewer], list[str]]:
    """Open ``n`` viewers, ``batch`` handshakes in flight at a time (below the listen
    backlog); each failed one is tried twice more."""
    step = max(1, n // max(1, probes))
    viewers: list[Viewer] = []
    errors: list[str] = []
    todo = list(range(n))
    for _attempt in range(3):
        failed: list[int] = []
        for first in range(0, len(todo), batch):
            group: list[tuple[int, socket.socket, str]] = []
            for k in todo[first : first + batch]:
                request, key = _upgrade_request(port, path)
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.settimeout(20)
                try:
                    sock.connect((HOST, port))
                    sock.sendall(request)
                except OSError as exc:
                    errors.append(repr(exc))
                    failed.append(k)
                    sock.close()
                    continue
                group.append((k, sock, key))
            for k, sock, key in group:
                try:
                    rest = _read_upgrade(sock, key)
                except (OSError, HandshakeError) as exc:
                    errors.append(repr(exc))
                    failed.append(k)
                    sock.close()
                    continue
                sock.setblocking(False)
                viewer = Viewer(sock, stats, probe=probes > 0 and k % step == 0)
                viewers.append(viewer)
                if rest:
                    viewer.feed(rest, len(rest))
        if not failed:
            return viewers, []
        todo = failed
        time.sleep(0.5)
    return viewers, errors[-len(todo) :]


def client_main(port: int, path: str, n: int, probes: int) -> None:
    common.raise_fd_limit()
    stats = ClientStats()
    started = time.monotonic()
    viewers, errors = connect_viewers(stats, port, path, n, probes)
    emit(
        {
            "event": "ready",
            "connected": len(viewers),
            "failed": len(errors),
            "errors": sorted(set(errors))[:5],
            "seconds": time.monotonic() - started,
        }
    )
    by_fd = {v.sock.fileno(): v for v in viewers}
    stdin = sys.stdin.fileno()
    poller = select.epoll(sizehint=len(by_fd) + 1)
    poller.register(stdin, select.EPOLLIN)
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    read = bytearray(256 * 1024)
    pending = b""
    cpu0 = time.process_time()
    while True:
        for fd, _events in poller.poll(1.0):
            if fd != stdin:
                viewer = by_fd[fd]
                try:
                    got = viewer.sock.recv_into(read)
                except BlockingIOError:
                    continue
                except OSError:
                    got = 0
                if got:
                    viewer.feed(read, got)
                    if viewer.is_open:
                        continue
                elif viewer.is_open:
                    stats.lost += 1
                    viewer.close()
                poller.unregister(fd)
                viewer.sock.close()
                continue
            chunk = os.read(stdin, 65536)
            if not chunk:  # the orchestrator is gone
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                cmd = json.loads(line)
                if cmd["cmd"] == "quit":
                    return
                if cmd["cmd"] == "start":
                    stats.reset()
                    for v in viewers:
                        v.partials = v.finals = 0
                    cpu0 = time.process_time()
                    emit({"event": "started"})
                elif cmd["cmd"] == "stats":
                    expect = cmd["expect_finals"]
                    emit(
                        {
                            "event": "stats",
                            "frames": sum(v.partials + v.finals for v in viewers),
                            "open": sum(v.is_open for v in viewers),
                            "complete": sum(v.is_open and v.finals >= expect for v in viewers),
                        }
                    )
                elif cmd["cmd"] == "report":
                    emit(client_report(viewers, stats, cmd["expect_finals"], cpu0))


def client_report(
    viewers: Sequence[Viewer], stats: ClientStats, expect: int, cpu0: float
) -> dict[str, Any]:
    samples = stats.samples
    return {
        "event": "report",
        "partials": sum(v.partials for v in viewers),
        "finals": sum(v.finals for v in viewers),
        "viewers_all_finals": sum(v.finals >= expect for v in viewers),
        "min_finals": min((v.finals for v in viewers), default=0),
        "caption_bytes": stats.caption_bytes,
        "last_rx_ns": stats.last_rx_ns,
        "closes": stats.closes,
        "lost": stats.lost,
        "open": sum(v.is_open for v in viewers),
        "cpu_s": time.process_time() - cpu0,
        "scheduled_ns": [s[0] for s in samples],
        "latency_ns": [s[1] for s in samples],
        "final": [s[2] for s in samples],
    }


# --- role: bare websockets baseline server (core 0) ------------------------------------


async def baseline_main(port: int, prepared: bool = False) -> None:
    """The bare library: ``broadcast()`` (each connection frames the message itself).

    ``prepared``: a reference for how far "encode once, write the same frame bytes to
    every transport" can go in Python: one frame, then ``transport.write`` per
    connection with no policy at all (no outbox, no slow-viewer handling).
    """
    common.raise_fd_limit()
    connections: set[ServerConnection] = set()
    hello = _DUMPS({"type": "hello", "stream_id": STREAM_ID, "state": "running", "seq": 0})

    async def handler(conn: ServerConnection) -> None:
        connections.add(conn)
        try:
            await conn.send(hello)
            await conn.wait_closed()
        finally:
            connections.discard(conn)

    # The same connection settings as relay's viewer server.
    async with serve(
        handler,
        HOST,
        port,
        compression=None,
        max_size=4096,
        max_queue=4,
        ping_interval=20,
        ping_timeout=20,
        close_timeout=5,
        server_header=None,
    ):
        emit({"event": "ready", "pid": os.getpid()})
        reader = await stdin_reader()
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "go":
                t0_ns, events, rate = cmd["t0_ns"], cmd["events"], cmd["rate"]
                slips: list[int] = []
                for i in range(events):
                    scheduled = scheduled_at(t0_ns, i, rate)
                    delay = (scheduled - time.time_ns()) / 1e9
                    if delay > 0:
                        await asyncio.sleep(delay)
                    slips.append(max(0, time.time_ns() - scheduled))
                    message = wire_message(script_event(i, scheduled), i + 1)
                    if prepared:
                        frame = Frame(Opcode.TEXT, message.encode()).serialize(
                            mask=False, extensions=[]
                        )
                        for conn in connections:
                            conn.transport.write(frame)
                    else:
                        broadcast(connections, message)
                finals = sum(script_event(i, 0).final for i in range(events))
                emit(
                    {
                        "event": "done",
                        "sent": events,
                        "finals": finals,
                        "errors": 0,
                        "slip_max_ns": max(slips, default=0),
                        "ack_ns": [],
                    }
                )
            elif cmd["cmd"] == "quit":
                break


# --- the orchestrator ------------------------------------------------------------------


@dataclass
class Result:
    server: str
    viewers: int
    connected: int = 0
    connect_s: float = 0.0
    rss_per_viewer_kib: float | None = None
    events: int = 0
    finals_sent: int = 0
    callback_errors: int = 0
    partial_frames: int = 0
    final_frames: int = 0
    mean_frame_bytes: float | None = None
    wall_s: float | None = None
    deliveries_per_s: float | None = None
    offered_per_s: float = 0.0
    server_cpu_s: float | None = None
    per_core: float | None = None
    client_cpu_pct: float | None = None
    partial_p50_ms: float | None = None
    partial_p99_ms: float | None = None
    final_p50_ms: float | None = None
    final_p99_ms: float | None = None
    first_third_p50_ms: float | None = None
    last_third_p50_ms: float | None = None
    first_third_p99_ms: float | None = None
    last_third_p99_ms: float | None = None
    viewers_all_finals: int = 0
    finals_expected: int = 0
    finals_delivered: int = 0
    closes: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    slip_max_ms: float | None = None
    ack_p50_ms: float | None = None
    ack_p99_ms: float | None = None
    drain_s: float | None = None
    # Of the wall time, how long the server was ready to run but waited for its core.
    server_wait_pct: float | None = None
    machine_busy_before: float | None = None  # cores busy just before the run
    profile: str | None = None
    errors: list[str] = field(default_factory=list)  # the run broke: its numbers are void
    notes: list[str] = field(default_factory=list)  # the server misbehaved: numbers stand

    @property
    def frames(self) -> int:
        return self.partial_frames + self.final_frames

    @property
    def backlog_grows(self) -> bool | None:
        first, last = self.first_third_p50_ms, self.last_third_p50_ms
        if first is None or last is None:
            return None
        return last > 1.5 * first + 20


def _ms(values_ns: Iterable[int], q: float) -> float | None:
    value = common.percentile(sorted(values_ns), q)
    return None if value is None else value / 1e6


async def settled_rss(pid: int, timeout: float = 10.0) -> int:
    """RSS of ``pid`` once it stops moving (a server still starting or greeting moves it)."""
    deadline = time.monotonic() + timeout
    last = common.rss_bytes(pid)
    while True:
        await asyncio.sleep(0.5)
        rss = common.rss_bytes(pid)
        if abs(rss - last) <= 64 * 1024 or time.monotonic() > deadline:
            return rss
        last = rss


@dataclass
class Target:
    """Where a run listens and how its captions start (the relay or the baseline)."""

    name: str
    pid: int
    ws_port: int
    path: str


class Bench:
    def __init__(self, args: argparse.Namespace, session: aiohttp.ClientSession) -> None:
        self.args = args
        self.session = session
        self.rate: float = args.rate
        self.events = event_count(args.seconds, args.rate)
        self.finals = sum(script_event(i, 0).final for i in range(self.events))
        self.client_cpu = CLIENT_CPU if args.cores > 1 else None
        self.server_cpu = SERVER_CPU if args.cores > 1 else None

    async def run(self, server: str, n: int) -> Result:
        result = Result(server, n, events=self.events, finals_expected=self.finals)
        result.offered_per_s = self.rate * n
        result.machine_busy_before = await asyncio.to_thread(
            common.wait_quiet, 0.15, self.args.wait_quiet
        )
        if result.machine_busy_before >= 0.15:
            result.notes.append(
                f"the machine was busy before the run: {result.machine_busy_before:.2f} cores"
            )
        try:
            if server == "relay":
                await self._run_relay(result)
            else:
                await self._run_baseline(result, server)
        except Exception as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
            if self.args.verbose:
                traceback.print_exc()
        return result

    async def _run_relay(self, result: Result) -> None:
        relay = common.start_relay(cpu=self.server_cpu, nice=self.args.nice)
        try:
            await common.wait_relay_ready(self.session, relay)
            attached = await common.attach_stream(self.session, relay, STREAM_ID)
            await self._warm_up(attached)
            target = Target("relay", relay.pid, relay.ws_port, f"/v1/captions/{STREAM_ID}")

            async def send(t0_ns: int) -> dict[str, Any]:
                return await self._send_callbacks(attached, t0_ns)

            await self._measure(result, target, send)
            if not relay.alive():
                raise RuntimeError(f"relay exited with {relay.proc.returncode}")
        except BaseException:
            if not relay.alive():
                result.errors.append(f"relay log: {relay.log_tail(1500)}")
            raise
        finally:
            relay.stop()
            if "Traceback" in relay.log_tail(100_000):
                result.notes.append(f"relay logged a traceback:\n{relay.log_tail(1500)}")
            with contextlib.suppress(OSError):
                relay.log_path.unlink()

    async def _run_baseline(self, result: Result, name: str) -> None:
        port = common.free_port()
        child = await Child.start(
            Path(__file__),
            name,
            ["--role", name, "--port", str(port)],
            self.server_cpu,
            self.args.nice,
        )
        try:
            await child.expect("ready", 30)
            target = Target(name, child.pid, port, f"/v1/captions/{STREAM_ID}")

            async def send(t0_ns: int) -> dict[str, Any]:
                cmd = {"cmd": "go", "t0_ns": t0_ns, "events": self.events, "rate": self.rate}
                timeout = self.events / self.rate + self._drain_max() + 60
                return await child.request(cmd, "done", timeout)

            await self._measure(result, target, send)
        finally:
            await child.stop()

    def _drain_max(self) -> float:
        return max(30.0, 3.0 * float(self.args.seconds))

    async def _warm_up(self, attached: common.Attached) -> None:
        """Sentence 0 (a partial and its final) before any viewer: code paths warm, task running."""
        for body in (
            common.callback_body(
                attached.task_id,
                "TranscriptionResultChanged",
                common.partial_payload(0, 100, "", "warm up"),
            ),
            common.callback_body(
                attached.task_id, "SentenceEnd", common.final_payload(0, 200, 0, "warm up")
            ),
        ):
            status, _ = await common.post_callback(self.session, attached, body)
            if status != 200:
                raise RuntimeError(f"warm-up callback answered HTTP {status}")

    async def _send_callbacks(self, attached: common.Attached, t0_ns: int) -> dict[str, Any]:
        """Open loop: each callback is posted at its scheduled time, whatever came before."""
        tasks: list[asyncio.Task[tuple[int, float]]] = []
        slip_max = 0
        for i in range(self.events):
            scheduled = scheduled_at(t0_ns, i, self.rate)
            delay = (scheduled - time.time_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            slip_max = max(slip_max, time.time_ns() - scheduled)
            body = callback_for(attached.task_id, script_event(i, scheduled))
            tasks.append(
                asyncio.create_task(common.post_callback(self.session, attached, body, timeout=60))
            )
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        acks = [o[1] for o in outcomes if isinstance(o, tuple) and o[0] == 200]
        errors = [o if isinstance(o, BaseException) else f"HTTP {o[0]}" for o in outcomes]
        errors = [e for e in errors if isinstance(e, BaseException) or e != "HTTP 200"]
        return {
            "sent": self.events,
            "finals": self.finals,
            "errors": len(errors),
            "error_sample": repr(errors[0]) if errors else "",
            "slip_max_ns": slip_max,
            "ack_ns": [round(a * 1e9) for a in acks],
        }

    async def _measure(
        self, result: Result, target: Target, send: Callable[[int], Awaitable[dict[str, Any]]]
    ) -> None:
        args = self.args
        n = result.viewers
        rss0 = await settled_rss(target.pid)
        client = await Child.start(
            Path(__file__),
            "client",
            [
                "--role",
                "client",
                "--port",
                str(target.ws_port),
                "--path",
                target.path,
                "--n",
                str(n),
                "--probes",
                str(args.probes),
            ],
            self.client_cpu,
            self.args.nice,
        )
        profiler: subprocess.Popen[bytes] | None = None
        try:
            ready = await client.expect("ready", 60 + n / 100)
            result.connected = ready["connected"]
            result.connect_s = ready["seconds"]
            if ready["failed"]:
                (result.errors if ready["failed"] * 2 > n else result.notes).append(
                    f"{ready['failed']} of {n} viewers could not connect: {ready['errors']}"
                )
            rss1 = await settled_rss(target.pid)
            result.rss_per_viewer_kib = (rss1 - rss0) / max(1, result.connected) / 1024
            await client.request({"cmd": "start"}, "started", 10)
            if args.profile:
                profiler = self._start_profiler(target, result)
            cpu0 = common.cpu_seconds(target.pid)
            wait0 = common.run_queue_wait_seconds(target.pid)
            window0 = time.monotonic()
            t0_ns = time.time_ns() + 100_000_000
            sent = await send(t0_ns)
            drain_started = time.monotonic()
            await self._drain(client)
            result.drain_s = time.monotonic() - drain_started
            result.server_cpu_s = common.cpu_seconds(target.pid) - cpu0
            wait1 = common.run_queue_wait_seconds(target.pid)
            if wait0 is not None and wait1 is not None:
                result.server_wait_pct = 100 * (wait1 - wait0) / (time.monotonic() - window0)
            report = await client.request(
                {"cmd": "report", "expect_finals": self.finals}, "report", 60
            )
        finally:
            if profiler is not None:
                common.stop_process(profiler, 20)
            await client.stop()
        self._fill(result, sent, report, t0_ns)

    async def _drain(self, client: Child) -> None:
        """Wait until every viewer has every final (the last event is one), or progress stops."""
        deadline = time.monotonic() + self._drain_max()
        last_frames, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            st = await client.request({"cmd": "stats", "expect_finals": self.finals}, "stats", 30)
            if st["open"] and st["complete"] >= st["open"]:
                return
            if st["frames"] != last_frames:
                last_frames, last_change = st["frames"], time.monotonic()
            elif time.monotonic() - last_change > 5:
                return
            await asyncio.sleep(0.2)

    def _start_profiler(self, target: Target, result: Result) -> subprocess.Popen[bytes] | None:
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            result.errors.append("--profile: py-spy is not installed")
            return None
        out = Path(self.args.profile) / f"{target.name}-{result.viewers}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        result.profile = str(out)
        duration = max(1, math.ceil(self.events / self.rate))
        with out.with_suffix(".log").open("wb") as log:
            return subprocess.Popen(
                [
                    *(py_spy, "record", "--pid", str(target.pid), "--duration", str(duration)),
                    *("--rate", "200", "--format", "raw", "--nonblocking", "-o", str(out)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _fill(self, result: Result, sent: dict[str, Any], report: dict[str, Any], t0: int) -> None:
        n = result.connected
        result.callback_errors = sent["errors"]
        if sent["errors"]:
            result.notes.append(f"{sent['errors']} callbacks failed: {sent.get('error_sample')}")
        result.finals_sent = sent["finals"]
        result.slip_max_ms = sent["slip_max_ns"] / 1e6
        result.ack_p50_ms = _ms(sent["ack_ns"], 50)
        result.ack_p99_ms = _ms(sent["ack_ns"], 99)
        result.partial_frames = report["partials"]
        result.final_frames = report["finals"]
        result.finals_delivered = report["finals"]
        result.viewers_all_finals = report["viewers_all_finals"]
        result.closes = report["closes"]
        result.lost = report["lost"]
        if result.frames:
            result.mean_frame_bytes = report["caption_bytes"] / result.frames
        if report["last_rx_ns"] > t0 and result.frames:
            # At least the sending time: a server that keeps up delivers at the offered rate.
            result.wall_s = max((report["last_rx_ns"] - t0) / 1e9, self.events / self.rate)
            result.deliveries_per_s = result.frames / result.wall_s
            result.client_cpu_pct = 100 * report["cpu_s"] / result.wall_s
        if result.server_cpu_s:
            result.per_core = result.frames / result.server_cpu_s
        sched, lat, final = report["scheduled_ns"], report["latency_ns"], report["final"]
        result.partial_p50_ms = _ms((x for x, f in zip(lat, final, strict=True) if not f), 50)
        result.partial_p99_ms = _ms((x for x, f in zip(lat, final, strict=True) if not f), 99)
        result.final_p50_ms = _ms((x for x, f in zip(lat, final, strict=True) if f), 50)
        result.final_p99_ms = _ms((x for x, f in zip(lat, final, strict=True) if f), 99)
        span = self.events / self.rate * 1e9
        first = [x for s, x in zip(sched, lat, strict=True) if s - t0 < span / 3]
        last = [x for s, x in zip(sched, lat, strict=True) if s - t0 >= 2 * span / 3]
        result.first_third_p50_ms, result.first_third_p99_ms = _ms(first, 50), _ms(first, 99)
        result.last_third_p50_ms, result.last_third_p99_ms = _ms(last, 50), _ms(last, 99)
        if result.frames == 0:
            result.errors.append("no caption reached any viewer")
        if result.server_wait_pct is not None and result.server_wait_pct > 5:
            result.notes.append(
                f"the server waited for its core {result.server_wait_pct:.0f}% of the time "
                "(other work on the machine): these numbers understate it; try --nice -20"
            )
        if n and report["open"] < n:
            result.notes.append(f"{n - report['open']} viewers were disconnected: {result.closes}")


# --- output ----------------------------------------------------------------------------


def _f(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _lat(p50: float | None, p99: float | None) -> str:
    return f"{_f(p50, '{:.1f}')}/{_f(p99, '{:.1f}')}"


COLUMNS = (
    ("viewers", 7),
    ("server", 8),
    ("deliv/s", 8),
    ("offered/s", 9),
    ("srv CPU s", 9),
    ("deliv/CPU-s", 11),
    ("partial p50/p99 ms", 18),
    ("final p50/p99 ms", 17),
    ("finals ok", 11),
    ("p50 1st->last 3rd ms", 20),
    ("KiB/viewer", 10),
    ("frame B", 7),
    ("client CPU", 10),
)


def render(results: Sequence[Result], args: argparse.Namespace, elapsed: float) -> str:
    lines = [
        f"fan-out: {args.rate:g} events/s for {args.seconds:g} s "
        f"({event_count(args.seconds, args.rate)} events, a final every {EVENTS_PER_SENTENCE}th), "
        f"server on core {SERVER_CPU}, load client on core {CLIENT_CPU}, "
        f"{args.probes} latency probes per run; Python {sys.version.split()[0]}, "
        f"websockets {websockets_version}, {args.cores} cores",
        "",
        "  ".join(name.rjust(width) for name, width in COLUMNS),
    ]
    for r in results:
        grows = {None: "", True: " GROWS", False: " flat"}[r.backlog_grows]
        cells = (
            str(r.viewers),
            r.server,
            _f(r.deliveries_per_s),
            _f(r.offered_per_s),
            _f(r.server_cpu_s, "{:.2f}"),
            _f(r.per_core),
            _lat(r.partial_p50_ms, r.partial_p99_ms),
            _lat(r.final_p50_ms, r.final_p99_ms),
            f"{r.viewers_all_finals}/{r.connected}",
            f"{_f(r.first_third_p50_ms, '{:.1f}')}->{_f(r.last_third_p50_ms, '{:.1f}')}{grows}",
            _f(r.rss_per_viewer_kib, "{:.1f}"),
            _f(r.mean_frame_bytes),
            _f(r.client_cpu_pct, "{:.0f}%"),
        )
        lines.append("  ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    lines.append("")
    for r in results:
        extra = (
            f"{r.viewers:>6} {r.server:<8}: frames {r.frames} ({r.partial_frames} partial, "
            f"{r.final_frames} final of {r.finals_expected * r.connected} expected), "
            f"p99 1st->last third {_f(r.first_third_p99_ms, '{:.1f}')}->"
            f"{_f(r.last_third_p99_ms, '{:.1f}')} ms, last delivery "
            f"{_f(r.wall_s, '{:.1f}')} s after start, sender slip max "
            f"{_f(r.slip_max_ms, '{:.1f}')} ms"
        )
        if r.server == "relay":
            extra += f", callback ack p50/p99 {_lat(r.ack_p50_ms, r.ack_p99_ms)} ms"
        if r.server_wait_pct is not None:
            extra += f", server waited for its core {r.server_wait_pct:.1f}% of the time"
        if r.closes:
            extra += f", closes {r.closes}"
        if r.profile:
            extra += f", profile {r.profile}"
        lines.append(extra)
        lines.extend(f"{'':>16}NOTE {e}" for e in r.notes)
        lines.extend(f"{'':>16}ERROR (run broken) {e}" for e in r.errors)
    lines.append("")
    by_n: dict[int, dict[str, Result]] = {}
    for r in results:
        by_n.setdefault(r.viewers, {})[r.server] = r
    for n, pair in by_n.items():
        relay = pair.get("relay")
        for name in ("baseline", "prepared"):
            other = pair.get(name)
            if relay and other and relay.per_core and other.per_core:
                lines.append(
                    f"{n:>6} viewers: relay/{name} deliveries per CPU-second = "
                    f"{relay.per_core / other.per_core:.2f}x, deliveries/s = "
                    f"{(relay.deliveries_per_s or 0) / (other.deliveries_per_s or 1):.2f}x"
                )
    lines.extend(["", *targets(by_n), "", f"total time {elapsed:.0f} s"])
    return "\n".join(lines)


def targets(by_n: dict[int, dict[str, Result]]) -> list[str]:
    """The issue's targets, checked where this run measured them."""
    out = ["targets (issue 3):"]

    def check(ok: bool, text: str) -> None:
        out.append(f"  [{'met ' if ok else 'MISS'}] {text}")

    if (r := by_n.get(100, {}).get("relay")) and r.partial_p99_ms is not None:
        p99 = max(r.partial_p99_ms, r.final_p99_ms or 0)
        check(p99 <= 5, f"p99 <= 5 ms at 100 viewers: {p99:.1f} ms")
    pair = by_n.get(5000, {})
    if (r := pair.get("relay")) and (b := pair.get("baseline")) and r.per_core and b.per_core:
        ratio = r.per_core / b.per_core
        check(ratio >= 1.5, f">= 1.5x the bare library's deliveries per core at 5k: {ratio:.2f}x")
    if (r := by_n.get(10000, {}).get("relay")) and r.connected:
        check(
            r.backlog_grows is False,
            "bounded backlog at 10k (latency does not grow): "
            f"p50 {_f(r.first_third_p50_ms, '{:.1f}')} -> {_f(r.last_third_p50_ms, '{:.1f}')} ms",
        )
        check(
            r.viewers_all_finals == r.connected and r.connected == r.viewers,
            f"every final delivered at 10k: {r.viewers_all_finals}/{r.viewers} viewers",
        )
        check(
            r.final_p99_ms is not None and r.final_p99_ms <= 500,
            f"final p99 <= 500 ms at 10k: {_f(r.final_p99_ms, '{:.1f}')} ms",
        )
    kib = [
        r.rss_per_viewer_kib
        for p in by_n.values()
        if (r := p.get("relay")) and r.rss_per_viewer_kib is not None and r.viewers >= 1000
    ]
    if kib:
        check(max(kib) <= 16, f"<= 16 KiB RSS per idle viewer (N >= 1000): max {max(kib):.1f} KiB")
    return out


# --- main ------------------------------------------------------------------------------


def _parse_viewers(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 or v > 20000 for v in values):
        raise argparse.ArgumentTypeError("viewer counts must be 1..20000, comma-separated")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--viewers", type=_parse_viewers, default=[100, 1000, 5000, 10000])
    p.add_argument("--seconds", type=float, default=20.0, help="sending time per run")
    p.add_argument("--rate", type=float, default=10.0, help="caption events per second")
    p.add_argument("--probes", type=int, default=200, help="viewers that measure latency")
    p.add_argument(
        "--servers",
        default="relay,baseline",
        help="which servers to measure, of relay, baseline (bare websockets broadcast) and "
        "prepared (a reference: bare websockets, one frame written to every transport)",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 50 viewers, 3 s")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument("--profile", type=Path, help="py-spy (raw stacks) of each server into DIR")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=10.0,
        help="before each run, wait up to this many seconds for other load to stop (--quick: 0)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority of the benchmark's processes and of its session's "
        "autogroup (negative: ahead of other work on a shared machine; needs root)",
    )
    p.add_argument("--verbose", action="store_true")
    # Helper processes.
    p.add_argument("--role", choices=("client", "baseline", "prepared"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--path", default=f"/v1/captions/{STREAM_ID}", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    return p


async def orchestrate(args: argparse.Namespace) -> list[Result]:
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    results: list[Result] = []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        bench = Bench(args, session)
        for n in args.viewers:
            for server in servers:
                print(f"... {server} with {n} viewers", file=sys.stderr, flush=True)
                results.append(await bench.run(server, n))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.role == "client":
        try:
            client_main(args.port, args.path, args.n, args.probes)
        except KeyboardInterrupt:
            return 130
        return 0
    if args.role in ("baseline", "prepared"):
        asyncio.run(baseline_main(args.port, prepared=args.role == "prepared"))
        return 0
    if args.quick:
        args.viewers, args.seconds, args.wait_quiet = [50], 3.0, 0.0
    if args.rate <= 0 or args.seconds <= 0 or args.seconds > 600:
        print("fanout: --rate must be > 0 and --seconds in (0, 600]", file=sys.stderr)
        return 2
    if set(args.servers.split(",")) - {"relay", "baseline", "prepared"}:
        print("fanout: --servers takes relay, baseline and/or prepared", file=sys.stderr)
        return 2
    common.raise_fd_limit()
    args.cores = common.cpu_count()  # before this process pins itself
    if args.cores < 2:
        print("fanout: fewer than 2 cores: server and client share one", file=sys.stderr)
    else:
        common.pin_self(CLIENT_CPU)  # the callback sender stays off the server's core
    started = time.monotonic()
    with common.priority(args.nice) if args.nice else contextlib.nullcontext():
        results = asyncio.run(orchestrate(args))
    print(render(results, args, time.monotonic() - started))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    broken = [r for r in results if r.errors]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
