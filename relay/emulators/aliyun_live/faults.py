"""Fault injection for callback delivery, decided by a seeded ``random.Random``. Pure.

Per callback, independently:

* ``duplicate`` (probability): deliver the same body (same message_id) a second time;
* ``drop`` (probability): the first attempt is lost (never sent) and the sender retries after
  its retry delay, like an unacknowledged delivery; a retry is never dropped, so nothing is lost;
* ``reorder`` (probability): hold it back and send it right after the next one;
* ``delay_ms``: added latency for every callback (the sender keeps the order);
* ``burst`` (N >= 2): hold callbacks and release N at once, sent concurrently.

Terminal callbacks (TranscriptionCompleted, TaskFailed) are never reordered or held: every
callback before them is released first, and the sender sends a batch only once the one
before it is delivered, so a terminal event is always last.

Calling contract: :meth:`FaultPlan.offer` each callback in order and send the batches it
returns, in order; :meth:`FaultPlan.flush` releases whatever is still held (at the end of a
task, or when the sender is idle).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Faults:
    duplicate: float = 0.0
    drop: float = 0.0
    reorder: float = 0.0
    delay_ms: int = 0
    burst: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("duplicate", "drop", "reorder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        if not 0 <= self.delay_ms <= 60_000:
            raise ValueError("delay_ms must be 0..60000")
        if not 0 <= self.burst <= 1000:
            raise ValueError("burst must be 0..1000")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Faults:
        """Build from the admin endpoint's JSON; unknown keys and bad types raise ValueError."""
        defaults = cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault: {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} must be a number")
            kwargs[key] = type(getattr(defaults, key))(value)  # int or float, as declared
        return cls(**kwargs)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Delivery(Generic[T]):
    item: T
    copies: int = 1  # 2: duplicated
    lose_first: bool = False  # the first attempt is dropped, a retry delivers it


Batch = tuple[Delivery[T], ...]  # sent concurrently; the next batch waits for this one


@dataclass(slots=True)
class FaultPlan(Generic[T]):
    faults: Faults
    # Reproducible choices, not secrets: the stdlib generator is the right tool.
    rng: random.Random = field(default_factory=random.Random)
    stream: int = 0
    reordered: int = 0  # callbacks sent after the one that followed them
    _reordered: Delivery[T] | None = None
    _burst: list[Delivery[T]] = field(default_factory=list)

    @classmethod
    def seeded(cls, faults: Faults, stream: int = 0) -> FaultPlan[T]:
        """A plan whose choices depend only on the seed and ``stream`` (e.g. a task number)."""
        plan = cls(faults, stream=stream)
        plan.configure(faults)
        return plan

    def configure(self, faults: Faults) -> None:
        """New faults from now on; what is held stays held until released."""
        self.faults = faults
        self.rng.seed(f"{faults.seed}:{self.stream}")

    @property
    def holding(self) -> bool:
        """Something is held back (a reorder or a burst): :meth:`flush` would release it."""
        return self._reordered is not None or bool(self._burst)

    def offer(self, item: T, *, terminal: bool = False) -> list[Batch[T]]:
        f, rng = self.faults, self.rng
        delivery = Delivery(
            item,
            copies=2 if rng.random() < f.duplicate else 1,
            lose_first=rng.random() < f.drop,
        )
        if terminal:
            return [*self.flush(), (delivery,)]
        ready: list[Delivery[T]] = []
        if self._reordered is not None:
            ready += [delivery, self._reordered]
            self._reordered = None
            self.reordered += 1
        elif rng.random() < f.reorder:
            self._reordered = delivery
        else:
            ready.append(delivery)
        self._burst += ready
        if f.burst < 2:  # (a burst left from before the faults changed goes out now)
            out, self._burst = self._burst, []
            return [(d,) for d in out]
        batches: list[Batch[T]] = []
        while len(self._burst) >= f.burst:
            batches.append(tuple(self._burst[: f.burst]))
            del self._burst[: f.burst]
        return batches

    def flush(self) -> list[Batch[T]]:
        held = self._burst
        if self._reordered is not None:
            held.append(self._reordered)
            self._reordered = None
        self._burst = []
        if not held:
            return []
        if self.faults.burst >= 2:
            return [tuple(held)]
        return [(d,) for d in held]
