"""Helpers shared by the benchmarks: processes, the relay under test, signed callbacks.

Everything here runs on loopback. Subprocesses are started from the calling (main) thread
through a small launcher that pins them to a core, raises their open-file limit and asks
the kernel to send them SIGTERM should the benchmark die without cleaning up (Linux
``PR_SET_PDEATHSIG``; it fires when the *thread* that started the child exits, so start
children from the main thread only).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

# Runs in the child before exec: parent-death signal, CPU pinning, open-file limit.
_LAUNCHER = """\
import ctypes, os, resource, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
except Exception:
    pass
cpu = int(sys.argv[1])
if cpu >= 0 and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {cpu})
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard == resource.RLIM_INFINITY or soft < hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if int(sys.argv[2]):
    os.setpriority(os.PRIO_PROCESS, 0, int(sys.argv[2]))
os.execv(sys.argv[3], sys.argv[3:])
"""


# --- this process ---------------------------------------------------------------------


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin_self(cpu: int | None) -> None:
    """Pin this process to one CPU (no-op for None or where affinity is not supported)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


@contextlib.contextmanager
def priority(nice: int) -> Iterator[None]:
    """Run with this process, and its session's autogroup, at scheduling priority ``nice``.

    With ``sched_autogroup`` on (most desktop and VM kernels), CPU time is shared fairly
    between *sessions* first and ``nice`` only ranks processes within one: on a machine
    where other sessions keep the cores busy, only the autogroup's nice value buys the
    benchmark its cores. Children started meanwhile are in the same autogroup. The
    autogroup's value is restored on exit (it outlives this process otherwise).
    """
    autogroup = Path("/proc/self/autogroup")
    before: str | None = None
    with contextlib.suppress(OSError, IndexError):
        before = autogroup.read_text().split("nice")[1].strip()
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    with contextlib.suppress(OSError):
        autogroup.write_text(str(nice))
    try:
        yield
    finally:
        if before is not None:
            with contextlib.suppress(OSError):
                autogroup.write_text(before)


def run_queue_wait_seconds(pid: int) -> float | None:
    """Seconds the main thread of ``pid`` spent runnable but waiting for a CPU (schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def free_port() -> int:
    """A TCP port free on loopback right now (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --- other processes --------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes."""
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def core_busy_seconds(cpu: int | None = None) -> float:
    """CPU seconds core ``cpu`` (None: all cores) spent not idle since boot, from /proc/stat.

    Counts user, nice, system, irq, softirq and steal time: whatever kept the core from
    the processes that wanted it. Compare with :func:`cpu_seconds` of the process pinned
    there to see how much of the core something else took.
    """
    name = b"cpu" if cpu is None else f"cpu{cpu}".encode()
    with open("/proc/stat", "rb") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] == name:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
                return (user + nice + system + irq + softirq + steal) / _CLK_TCK
    raise RuntimeError(f"no {name.decode()} line in /proc/stat")


def wait_quiet(max_busy: float = 0.15, timeout: float = 0.0, sample: float = 1.0) -> float:
    """Wait (up to ``timeout`` s) until the machine uses less than ``max_busy`` cores.

    Measures over ``sample`` seconds, while the caller is idle; returns the last busy
    fraction (in cores) seen. Other work on a benchmark machine skews every number.
    """
    deadline = time.monotonic() + timeout
    while True:
        before = core_busy_seconds()
        time.sleep(sample)
        busy = (core_busy_seconds() - before) / sample
        if busy < max_busy or time.monotonic() >= deadline:
            return busy


def launch_argv(argv: Sequence[str], cpu: int | None, nice: int = 0) -> list[str]:
    """``argv`` wrapped in the launcher: pinned to ``cpu``, fd limit raised, parent-death
    signal, and scheduling priority ``nice`` when not 0 (negative values need root)."""
    return [sys.executable, "-c", _LAUNCHER, str(-1 if cpu is None else cpu), str(nice), *argv]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout``; return the exit code (None if unknown)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    return proc.returncode


async def stop_async_process(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    """The asyncio flavour of :func:`stop_process`."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        async with asyncio.timeout(timeout):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await proc.wait()


def tail(path: Path, limit: int = 2000) -> str:
    """The last ``limit`` characters of a text file ('' if it cannot be read)."""
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


# --- the relay under test --------------------------------------------------------------


@dataclass
class RelayServer:
    """A ``python -m relay serve`` subprocess on loopback."""

    proc: subprocess.Popen[bytes]
    http_port: int
    ws_port: int
    log_path: Path
    _log_file: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def http_base(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def ws_base(self) -> str:
        return f"ws://{HOST}:{self.ws_port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, limit: int = 2000) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return tail(self.log_path, limit)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Graceful stop (SIGTERM: viewers get 1001), SIGKILL past ``timeout``."""
        try:
            return stop_process(self.proc, timeout)
        finally:
            self._log_file.close()


def start_relay(
    *,
    http_port: int | None = None,
    ws_port: int | None = None,
    cpu: int | None = 0,
    env: Mapping[str, str] | None = None,
    log_level: str = "warning",
    log_dir: Path | None = None,
    nice: int = 0,
) -> RelayServer:
    """Start the relay daemon (embedded defaults: memory store) on loopback ports.

    ``env`` adds or overrides ``RELAY_*`` variables. Its log (stderr and stdout) goes to a
    file, see :meth:`RelayServer.log_tail`. Call :func:`wait_relay_ready` next.
    """
    http_port = http_port or free_port()
    ws_port = ws_port or free_port()
    # Embedded defaults: no RELAY_* setting leaks in from the caller's environment.
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    child_env.update(
        {
            "RELAY_HTTP_HOST": HOST,
            "RELAY_HTTP_PORT": str(http_port),
            "RELAY_WS_HOST": HOST,
            "RELAY_WS_PORT": str(ws_port),
            "RELAY_LOG_LEVEL": log_level,
            "RELAY_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
    )
    child_env.update(env or {})
    fd, name = tempfile.mkstemp(prefix="relay-bench-", suffix=".log", dir=log_dir)
    log_file = os.fdopen(fd, "wb")
    try:
        proc = subprocess.Popen(
            launch_argv([sys.executable, "-m", "relay", "serve"], cpu, nice),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=ROOT,
        )
    except BaseException:
        log_file.close()
        raise
    return RelayServer(proc, http_port, ws_port, Path(name), log_file)


async def wait_relay_ready(
    session: aiohttp.ClientSession, server: RelayServer, timeout: float = 30.0
) -> None:
    """Wait until ``/healthz`` answers 200 and the viewer port accepts connections."""
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise RuntimeError(f"relay exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            async with asyncio.timeout(2):
                async with session.get(f"{server.http_base}/healthz") as resp:
                    if resp.status == 200:
                        _, writer = await asyncio.open_connection(HOST, server.ws_port)
                        writer.close()
                        return
        except (OSError, aiohttp.ClientError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"relay not ready after {timeout:.0f} s:\n{server.log_tail()}")
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Attached:
    """A stream whose (attached) Alibaba task sends signed callbacks to ``callback_url``."""

    stream_id: str
    task_id: str
    auth_key: str = field(repr=False)
    callback_url: str
    viewer_url: str


async def attach_stream(
    session: aiohttp.ClientSession,
    server: RelayServer,
    stream_id: str,
    *,
    task_id: str | None = None,
    auth_key: str | None = None,
    control_token: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Attached:
    """``POST /v1/streams`` in attach mode; return where to send the task's callbacks."""
    task_id = task_id or f"asr-bench-{uuid.uuid4()}"
    auth_key = auth_key or secrets.token_hex(16)
    body = {"stream_id": stream_id, "engine": "aliyun", "task_id": task_id, "auth_key": auth_key}
    body.update(extra or {})
    headers = {"Authorization": f"Bearer {control_token}"} if control_token else {}
    async with asyncio.timeout(10):
        async with session.post(
            f"{server.http_base}/v1/streams", json=body, headers=headers
        ) as resp:
            payload = await resp.json(content_type=None)
            if resp.status != 201:
                raise RuntimeError(f"attach {stream_id}: HTTP {resp.status} {payload}")
    return Attached(stream_id, task_id, auth_key, payload["callback_url"], payload["viewer_url"])


# --- Alibaba Cloud Live ASR callbacks -------------------------------------------------

NLS_SUCCESS = 20000000


def asr_sig(sig_time: str, callback_url: str, auth_key: str) -> str:
    """``ASR-SIG = md5("{SIG-TIME}/{callback URL}/{AuthKey}")``, lowercase hex."""
    data = f"{sig_time}/{callback_url}/{auth_key}".encode()
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def signed_headers(callback_url: str, auth_key: str, now: float | None = None) -> dict[str, str]:
    """The headers of one signed callback (SIG-TIME in seconds)."""
    sig_time = str(int(time.time() if now is None else now))
    return {
        "SIG-TIME": sig_time,
        "ASR-SIG": asr_sig(sig_time, callback_url, auth_key),
        "Content-Type": "application/json",
    }


def callback_body(
    task_id: str,
    name: str,
    payload: Mapping[str, Any],
    *,
    message_id: str | None = None,
    language: str = "en",
    status: int = NLS_SUCCESS,
    now_ms: int | None = None,
) -> bytes:
    """A callback body in the Alibaba contract shape (``content`` is a JSON *string*)."""
    header = {
        "nls_task_id": task_id.removeprefix("asr-")[:32],
        "task_key": f"tl_bench_{task_id[-8:]}",
        "namespace": "SpeechTranscriber",
        "name": name,
        "task_id": task_id,
        "message_id": message_id or uuid.uuid4().hex,
        "status_text": "Success." if status == NLS_SUCCESS else "Failed.",
        "status": status,
    }
    outer = {
        "task_id": task_id,
        "sdk_app_id": "",
        "channel_id": "",
        "rtc_user_id": "",
        "callback_time_stamp": time.time_ns() // 1_000_000 if now_ms is None else now_ms,
        "language": language,
        "content": json.dumps({"header": header, "payload": dict(payload)}, ensure_ascii=False),
    }
    return json.dumps(outer, ensure_ascii=False).encode()


def partial_payload(
    index: int, time_ms: int, fixed: str, unfixed: str, words: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Payload of a ``TranscriptionResultChanged`` event."""
    return {
        "result": fixed + unfixed,
        "confidence": 0.0,
        "words": list(words),
        "index": index,
        "time": time_ms,
        "fixed_result": fixed,
        "unfixed_result": unfixed,
        "status": 0,
    }


def final_payload(
    index: int, time_ms: int, begin_ms: int, text: str, words: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Payload of a ``SentenceEnd`` event."""
    return {
        "index": index,
        "time": time_ms,
        "begin_time": begin_ms,
        "result": text,
        "confidence": 0.9,
        "words": list(words),
        "status": 0,
    }


async def post_callback(
    session: aiohttp.ClientSession,
    attached: Attached,
    body: bytes,
    *,
    timeout: float = 10.0,
) -> tuple[int, float]:
    """Sign and POST one callback; return (HTTP status, seconds to the acknowledgement)."""
    headers = signed_headers(attached.callback_url, attached.auth_key)
    started = time.perf_counter()
    async with asyncio.timeout(timeout):
        async with session.post(attached.callback_url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status, time.perf_counter() - started


# --- numbers ---------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when there are none)."""
    if not sorted_values:
        return None
    rank = min(len(sorted_values), max(1, math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


# --- helper processes: JSON lines over stdin/stdout --------------------------------------


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


class Child:
    """A benchmark's helper process, spoken to in JSON lines over stdin/stdout."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @classmethod
    async def start(
        cls,
        script: Path,
        name: str,
        role_args: Sequence[str],
        cpu: int | None,
        nice: int = 0,
    ) -> Child:
        """Run ``script`` with ``role_args`` (pinned to ``cpu``); its stderr goes to a log file."""
        fd, log_name = tempfile.mkstemp(prefix=f"{script.stem}-{name}-", suffix=".log")
        try:
            argv = launch_argv([sys.executable, str(script.resolve()), *role_args], cpu, nice)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=fd,
                limit=64 << 20,
                cwd=ROOT,
            )
        finally:
            os.close(fd)
        return cls(name, proc, Path(log_name))

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                line = await self.proc.stdout.readline()
        except TimeoutError:
            raise RuntimeError(
                f"{self.name}: no {event!r} within {timeout:.0f} s\n{tail(self.log_path)}"
            ) from None
        if not line:
            await self.proc.wait()
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}\n{tail(self.log_path)}"
            )
        msg: dict[str, Any] = json.loads(line)
        if msg.get("event") == "error":
            raise RuntimeError(f"{self.name}: {msg.get('error')}")
        if msg.get("event") != event:
            raise RuntimeError(f"{self.name}: expected {event!r}, got {msg}")
        return msg

    async def request(self, obj: dict[str, Any], event: str, timeout: float) -> dict[str, Any]:
        await self.send(obj)
        return await self.expect(event, timeout)

    async def stop(self) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                self.proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.proc.wait()
        await stop_async_process(self.proc, 5)
        with contextlib.suppress(OSError):
            self.log_path.unlink()


# --- server frames, parsed by the cheap load clients ------------------------------------


def frame_header(buf: bytes | bytearray, pos: int, n: int) -> tuple[int, int] | None:
    """(header length, payload length) of the unmasked server frame at ``buf[pos:n]``.

    None when the header or payload is not complete yet.
    """
    if n - pos < 2:
        return None
    length = buf[pos + 1] & 0x7F
    hdr = 2
    if length == 126:
        if n - pos < 4:
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
        hdr = 4
    elif length == 127:
        if n - pos < 10:
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        hdr = 10
    if pos + hdr + length > n:
        return None
    return hdr, length
