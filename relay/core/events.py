"""The vocabulary of the caption path, as small frozen dataclasses.

Two families:

* **Recognizer events** come in: one per callback (cloud) or per policy step (local engine),
  named after the NLS SpeechTranscriber events of the Alibaba contract.
* **Caption events** go out: what the merger decides viewers should see. They carry no
  sequence number; the store assigns the per-stream ``seq`` when it publishes them
  (see :class:`Published`), so that several relay instances share one numbering.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _empty() -> Mapping[str, str]:
    # A factory, not ``default=_EMPTY``: before 3.12 a mappingproxy is unhashable, which
    # dataclasses reject as a mutable default. Every instance still shares ``_EMPTY``.
    return _EMPTY


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start_ms: int
    end_ms: int


# --- recognizer events (in) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TranscriptionStarted:
    pass


@dataclass(frozen=True, slots=True)
class SentenceBegin:
    index: int
    time_ms: int


@dataclass(frozen=True, slots=True)
class ResultChanged:
    """An intermediate hypothesis of sentence ``index`` (``TranscriptionResultChanged``).

    ``fixed`` is the prefix the recognizer will not change any more, ``unfixed`` the tail
    that may still change. ``time_ms`` is the audio time processed so far; it orders
    hypotheses of one sentence.
    """

    index: int
    time_ms: int
    text: str
    fixed: str = ""
    unfixed: str = ""
    words: tuple[Word, ...] = ()


@dataclass(frozen=True, slots=True)
class SentenceEnd:
    index: int
    time_ms: int
    begin_ms: int
    text: str
    words: tuple[Word, ...] = ()
    translations: Mapping[str, str] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class Translated:
    """Translations of sentence ``index`` delivered apart from its ``SentenceEnd``."""

    index: int
    translations: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class TranscriptionCompleted:
    pass


@dataclass(frozen=True, slots=True)
class TaskFailed:
    status: int
    reason: str


RecognizerEvent = (
    TranscriptionStarted
    | SentenceBegin
    | ResultChanged
    | SentenceEnd
    | Translated
    | TranscriptionCompleted
    | TaskFailed
)


# --- caption events (out) ------------------------------------------------------------


class TaskState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    TERMINATED = "terminated"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self in (TaskState.TERMINATED, TaskState.FAILED)


@dataclass(frozen=True, slots=True)
class Partial:
    index: int
    text: str
    stable: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Final:
    index: int
    text: str
    start_ms: int
    end_ms: int
    words: tuple[Word, ...] = ()
    translations: Mapping[str, str] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class StateChanged:
    state: TaskState
    reason: str = ""


CaptionEvent = Partial | Final | StateChanged


@dataclass(frozen=True, slots=True)
class Published:
    """A caption event as the store published it: numbered within its stream.

    ``seq`` grows by one per published partial or final. State changes are not numbered
    (``seq`` is the stream's current seq when they were published) and are not kept in
    the caption log.
    """

    stream_id: str
    seq: int
    event: CaptionEvent
