"""The documented QPS limit (20 calls/s per action per account) as token buckets. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RateLimiter:
    """One bucket per key (access key id, action), ``rate`` tokens/s, ``burst`` deep.

    :meth:`take` is called with the time; it returns None when the call may proceed, else
    the seconds until a token is back (the ``x-acs-retry-after`` to answer). Keys come from
    verified access keys and a fixed set of actions, so the table stays small.
    """

    rate: float = 20.0
    burst: float = 20.0
    _buckets: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    def take(self, key: tuple[str, str], now: float) -> float | None:
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return None
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate
