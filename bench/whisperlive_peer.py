"""The WhisperLive peer of ``bench/live_engine.py``: its WebSocket server on loopback.

Runs inside ``bench/.venv-whisperlive`` (made by ``bench/setup_whisperlive.sh``), never in
the project's Python:

    bench/.venv-whisperlive/bin/python bench/whisperlive_peer.py --port 9090 --model DIR

``DIR`` is a CTranslate2 Whisper model directory (the benchmark passes the packaged tiny.en),
so nothing is downloaded. The client turns ``use_vad`` on in its options message.
"""

from __future__ import annotations

import argparse
import logging
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True, help="CTranslate2 Whisper model directory")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    if not os.path.isdir(args.model):
        raise SystemExit(f"no model directory at {args.model}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a path is given: never reach for a hub

    from whisper_live.server import TranscriptionServer  # type: ignore[import-not-found]

    # whisper_live.server calls logging.basicConfig(level=INFO) when imported.
    logging.getLogger().setLevel(args.log_level.upper())
    TranscriptionServer().run(
        args.host,
        args.port,
        backend="faster_whisper",
        faster_whisper_custom_model_path=args.model,
        single_model=True,
    )


if __name__ == "__main__":
    main()
