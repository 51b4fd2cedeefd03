"""A rate limit: when may the next call go?

Pure (the time is passed in). Calls are spaced evenly at ``rate_per_s`` after an initial
``burst``. A client queues: :meth:`RateLimiter.reserve` books the next slot and says how long
to wait for it, so concurrent callers go in order instead of all retrying at once. A server
refuses: :meth:`RateLimiter.try_acquire` books only a call that may go now, and otherwise
says when one could (a retry-after).
"""

from __future__ import annotations

import math

_ROUNDING_S = 1e-9


class RateLimiter:
    """A token bucket of ``burst`` tokens refilled at ``rate_per_s``."""

    __slots__ = ("_burst", "_interval", "_next_free")

    def __init__(self, rate_per_s: float, *, burst: int = 1) -> None:
        if not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError(f"rate_per_s must be finite and > 0, got {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self._interval = 1.0 / rate_per_s
        self._burst = burst
        # GCRA's theoretical arrival time: the bucket is full again at ``_next_free``; a
        # call may go once ``now >= _next_free - (burst - 1) * interval``.
        self._next_free = -math.inf

    def reserve(self, now: float) -> float:
        """Book one call at ``now`` or later; return the seconds to wait before making it."""
        wait = self._wait(now)
        self._next_free = max(self._next_free, now) + self._interval
        return wait

    def try_acquire(self, now: float) -> float | None:
        """Book a call at ``now`` if it may go now (``None``); else, booking nothing, return
        the seconds until one may."""
        wait = self._wait(now)
        if wait > _ROUNDING_S:  # the sums behind _next_free drift by float rounding
            return round(wait, 9)
        self._next_free = max(self._next_free, now) + self._interval
        return None

    def _wait(self, now: float) -> float:
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now!r}")
        slack = (self._burst - 1) * self._interval
        return max(0.0, self._next_free - slack - now)
