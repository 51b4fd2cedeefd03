"""Tests for relay.core.rate: the client-side limit on cloud API calls."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.rate import RateLimiter


def test_a_burst_goes_at_once_then_calls_are_spaced() -> None:
    limiter = RateLimiter(10, burst=3)
    waits = [limiter.reserve(0.0) for _ in range(6)]
    assert waits == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3])


def test_an_idle_limiter_refills() -> None:
    limiter = RateLimiter(10, burst=2)
    for _ in range(5):
        limiter.reserve(0.0)
    assert limiter.reserve(10.0) == 0
    assert limiter.reserve(10.0) == 0
    assert limiter.reserve(10.0) == pytest.approx(0.1)


@pytest.mark.parametrize("rate", [0, -1, math.inf, math.nan])
def test_bad_rates_are_rejected(rate: float) -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        RateLimiter(rate)


def test_bad_burst_and_time_are_rejected() -> None:
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(1, burst=0)
    with pytest.raises(ValueError, match="now"):
        RateLimiter(1).reserve(math.nan)


@given(
    rate=st.floats(min_value=0.5, max_value=50),
    burst=st.integers(min_value=1, max_value=10),
    gaps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=80),
)
def test_no_window_holds_more_calls_than_the_limit(
    rate: float, burst: int, gaps: list[float]
) -> None:
    limiter = RateLimiter(rate, burst=burst)
    now, starts = 0.0, []
    for gap in gaps:
        now += gap
        wait = limiter.reserve(now)
        assert wait >= 0
        starts.append(now + wait)
    assert starts == sorted(starts)  # callers go in the order they asked
    assert_within_limit(starts, rate, burst, eps=1e-9)


@given(rate=st.floats(min_value=0.5, max_value=50), burst=st.integers(min_value=1, max_value=10))
def test_calls_slower_than_the_rate_never_wait(rate: float, burst: int) -> None:
    limiter = RateLimiter(rate, burst=burst)
    for k in range(50):
        assert limiter.reserve(k / rate * 1.0001) == 0


def test_try_acquire_refuses_past_the_burst_without_booking() -> None:
    limiter = RateLimiter(10, burst=2)
    assert limiter.try_acquire(0.0) is None and limiter.try_acquire(0.0) is None
    wait = limiter.try_acquire(0.0)
    assert wait == pytest.approx(0.1)
    assert limiter.try_acquire(0.05) == pytest.approx(0.05)  # refusals booked nothing
    assert limiter.try_acquire(0.1) is None


@given(
    rate=st.floats(min_value=0.5, max_value=50),
    burst=st.integers(min_value=1, max_value=10),
    gaps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=80),
)
def test_try_acquire_admits_no_more_than_the_limit_and_its_retry_after_is_true(
    rate: float, burst: int, gaps: list[float]
) -> None:
    limiter = RateLimiter(rate, burst=burst)
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap
        wait = limiter.try_acquire(now)
        if wait is None:
            admitted.append(now)
        else:
            assert wait > 0
            probe = RateLimiter(rate, burst=burst)  # same history, then asked at now + wait
            for t in admitted:
                assert probe.try_acquire(t) is None
            assert probe.try_acquire(now + wait) is None
    # Admitted up to a nanosecond early (float rounding), times the rate.
    assert_within_limit(admitted, rate, burst, eps=1e-6)


def assert_within_limit(starts: list[float], rate: float, burst: int, *, eps: float) -> None:
    """Any window of length w holds at most burst + w * rate of the (sorted) call starts."""
    for i, first in enumerate(starts):
        for j in range(i, len(starts)):
            assert j - i + 1 <= burst + (starts[j] - first) * rate + eps
