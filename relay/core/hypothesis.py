"""What the local recognizer hands to the streaming policy: one hypothesis of a window.

Times are seconds of stream audio (0 = the first sample the engine read), absolute, so that
hypotheses of successive, overlapping windows can be compared word by word.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HypWord:
    text: str  # as the model spells it, with its leading space (" Hello")
    start: float
    end: float
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class Hypothesis:
    """The recognizer's reading of the audio ``[window_start, audio_end)``.

    ``segment_ends`` are the end times of the model's own segments (timestamp tokens), which
    usually fall on sentence ends. ``no_speech_prob`` and ``avg_logprob`` are the decoder's, for
    the window as a whole; they help to tell speech from a hallucination over silence.
    """

    words: tuple[HypWord, ...]
    window_start: float
    audio_end: float
    segment_ends: tuple[float, ...] = ()
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
