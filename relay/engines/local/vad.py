"""Voice activity: is anybody speaking? Silero VAD, as packaged with faster-whisper.

The model file ships inside the faster-whisper wheel (nothing is downloaded). Calls are
blocking (onnxruntime, ~1 ms per second of audio): run :meth:`speech_spans` off the loop.
"""

from __future__ import annotations

import numpy as np
from faster_whisper.vad import get_vad_model  # type: ignore[import-untyped]

SAMPLE_RATE = 16000
FRAME = 512  # samples per VAD decision (32 ms)


class SpeechDetector:
    """Feed consecutive audio; learn where speech is and whether it goes on now."""

    def __init__(self, threshold: float = 0.5) -> None:
        self._model = get_vad_model()
        self._threshold = threshold
        self._carry = np.zeros(0, np.float32)
        self._carry_start = 0.0
        self.speaking = False
        self.silent_since: float | None = 0.0  # stream time the current silence began

    def speech_spans(self, audio: np.ndarray, start: float) -> list[tuple[float, float]]:
        """Speech within ``audio`` (which starts at stream time ``start``), as time spans."""
        if len(self._carry):
            audio = np.concatenate((self._carry, audio))
            start = self._carry_start
        usable = len(audio) // FRAME * FRAME
        self._carry = audio[usable:].copy()
        self._carry_start = start + usable / SAMPLE_RATE
        if usable == 0:
            return []
        # A copy: the packaged model writes into its input.
        probs = np.asarray(self._model(audio[:usable].copy())).reshape(-1)
        spans: list[tuple[float, float]] = []
        for i, p in enumerate(probs):
            t = start + i * FRAME / SAMPLE_RATE
            if p >= self._threshold:
                if spans and abs(spans[-1][1] - t) < 1e-6:
                    spans[-1] = (spans[-1][0], t + FRAME / SAMPLE_RATE)
                else:
                    spans.append((t, t + FRAME / SAMPLE_RATE))
                self.speaking, self.silent_since = True, None
            elif self.speaking or self.silent_since is None:
                self.speaking, self.silent_since = False, t
        return spans
