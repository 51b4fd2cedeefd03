"""The shared test speech (../shared/audio) and its reference texts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from relay.engines.local.source import default_ffmpeg


def _audio_dir() -> Path:
    """$RELAY_TEST_AUDIO, else ../shared/audio beside the checkout (a clone elsewhere: /work)."""
    candidates = [
        Path(__file__).resolve().parents[2] / "shared" / "audio",
        Path("/work/shared/audio"),
    ]
    if "RELAY_TEST_AUDIO" in os.environ:
        candidates.insert(0, Path(os.environ["RELAY_TEST_AUDIO"]))
    for candidate in candidates:
        if (candidate / "transcripts.json").is_file():
            return candidate
    raise FileNotFoundError(f"test speech not found in any of {candidates}; set RELAY_TEST_AUDIO")


AUDIO_DIR = _audio_dir()


def reference(name: str) -> str:
    transcripts = json.loads((AUDIO_DIR / "transcripts.json").read_text())
    text: str = transcripts[name]["text"]
    return text


def wav(name: str) -> Path:
    return AUDIO_DIR / f"{name}.wav"


def make_wav(path: Path, lavfi: str, seconds: float) -> Path:
    """A 16 kHz mono WAV of ``seconds`` from an ffmpeg lavfi source (silence, noise, tones)."""
    subprocess.run(
        [
            default_ffmpeg(),
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            lavfi,
            "-t",
            str(seconds),
            "-ac",
            "1",
            "-ar",
            "16000",
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return path
