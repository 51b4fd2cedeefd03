"""The documented QPS limit (20 calls/s per action per account), refusing past it. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.core.rate import RateLimiter


@dataclass(slots=True)
class KeyedRateLimiter:
    """One :class:`~relay.core.rate.RateLimiter` per key (access key id, action).

    :meth:`take` is called with the time; it returns None when the call may proceed, else
    the seconds until it could (the ``x-acs-retry-after`` to answer). Keys come from
    verified access keys and a fixed set of actions, so the table stays small.
    """

    rate: float = 20.0
    burst: int = 20
    _limiters: dict[tuple[str, str], RateLimiter] = field(default_factory=dict)

    def take(self, key: tuple[str, str], now: float) -> float | None:
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = RateLimiter(self.rate, burst=self.burst)
        return limiter.try_acquire(now)
