"""Tests of viewer tokens: HMAC, expiry, stream-scoped (SPEC §3.4)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.viewer_token import check, issue

SECRET = "s3cret"
STREAM = "stream-1"
EXPIRES = 1_900_000_000
HEX = "0123456789abcdef"


def valid(token: str | None, *, now: float = EXPIRES - 60, stream: str = STREAM) -> bool:
    return check(SECRET, stream, token, now=now)


def replace_at(text: str, i: int, char: str) -> str:
    return text[:i] + char + text[i + 1 :]


# Expiries of at most 12 digits: the longest check reads (year 33658 in seconds).
expiries = st.integers(min_value=0, max_value=10**12 - 1)
secrets_ = st.text(min_size=1, max_size=30)
streams = st.text(min_size=1, max_size=30)


# --- examples ------------------------------------------------------------------------


def test_token_format() -> None:
    token = issue(SECRET, STREAM, EXPIRES)
    expiry, dot, mac = token.partition(".")
    assert (expiry, dot) == (str(EXPIRES), ".")
    want = hmac.new(SECRET.encode(), f"{STREAM}.{EXPIRES}".encode(), hashlib.sha256).hexdigest()
    assert mac == want


def test_valid_before_expiry() -> None:
    token = issue(SECRET, STREAM, EXPIRES)
    assert valid(token, now=0)
    assert valid(token, now=EXPIRES - 1)
    assert valid(token, now=EXPIRES - 0.001)


@pytest.mark.parametrize("now", [EXPIRES, EXPIRES + 0.001, EXPIRES + 1, 10.0**12])
def test_invalid_at_and_after_expiry(now: float) -> None:
    assert not valid(issue(SECRET, STREAM, EXPIRES), now=now)


def test_scoped_to_its_stream() -> None:
    token = issue(SECRET, STREAM, EXPIRES)
    for other in ("stream-2", "stream-1 ", "Stream-1", "stream-", "", "stream-1.1900000000"):
        assert not valid(token, stream=other)


def test_stream_with_dots_is_not_confused_with_the_expiry() -> None:
    # The MAC covers "{stream}.{expiry}": "a.1" expiring at 2 must not pass for "a".
    token = issue(SECRET, "a.1", 2)
    assert check(SECRET, "a.1", token, now=1)
    assert not check(SECRET, "a", token, now=1)


def test_other_secret_is_invalid() -> None:
    assert not check("other", STREAM, issue(SECRET, STREAM, EXPIRES), now=0)


def test_extending_the_expiry_is_invalid() -> None:
    mac = issue(SECRET, STREAM, EXPIRES).partition(".")[2]
    assert not valid(f"{EXPIRES + 3600}.{mac}")


def test_uppercase_mac_is_invalid() -> None:
    expiry, _, mac = issue(SECRET, STREAM, EXPIRES).partition(".")
    assert mac != mac.upper()
    assert not valid(f"{expiry}.{mac.upper()}")


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        ".",
        "garbage",
        str(EXPIRES),
        f"{EXPIRES}.",
        f".{'0' * 64}",
        f"{EXPIRES}.{'0' * 64}",
        f"-{EXPIRES}.{'0' * 64}",
        f"+{EXPIRES}.{'0' * 64}",
        f"{EXPIRES}.5.{'0' * 64}",
        f"{'9' * 13}.{'0' * 64}",
        "１９００００００００.abc",  # full-width digits  # noqa: RUF001
        f"{EXPIRES}.\udcff",  # a surrogate-escaped byte, as aiohttp decodes bad UTF-8
        "\udcff.\udcff",
        "\x00" * 80,
    ],
)
def test_garbage_is_invalid(token: str | None) -> None:
    assert not valid(token, now=0)


# --- properties ----------------------------------------------------------------------


@given(secrets_, streams, expiries, st.floats(allow_nan=False, allow_infinity=False))
def test_issued_token_is_valid_exactly_before_its_expiry(
    secret: str, stream: str, expires_at: int, now: float
) -> None:
    assert check(secret, stream, issue(secret, stream, expires_at), now=now) is (now < expires_at)


@given(secrets_, streams, streams, expiries)
def test_token_of_another_stream_is_invalid(
    secret: str, stream: str, other: str, expires_at: int
) -> None:
    token = issue(secret, stream, expires_at)
    assert check(secret, other, token, now=0) is (other == stream and expires_at > 0)


@given(secrets_, streams, expiries, st.data())
def test_any_tampered_character_is_invalid(
    secret: str, stream: str, expires_at: int, data: st.DataObject
) -> None:
    token = issue(secret, stream, expires_at)
    i = data.draw(st.integers(0, len(token) - 1), label="position")
    others = st.sampled_from(HEX + ".") | st.characters()
    char = data.draw(others.filter(lambda c: c != token[i]), label="char")
    tampered = replace_at(token, i, char)
    assert not check(secret, stream, tampered, now=-1)


@given(secrets_, streams, expiries, st.text(min_size=1, max_size=4))
def test_extended_or_truncated_token_is_invalid(
    secret: str, stream: str, expires_at: int, extra: str
) -> None:
    token = issue(secret, stream, expires_at)
    assert not check(secret, stream, token + extra, now=-1)
    assert not check(secret, stream, token[: -len(extra)], now=-1)


@given(secrets_, streams, st.text(max_size=100), st.floats(allow_nan=False))
def test_arbitrary_text_is_never_valid(secret: str, stream: str, token: str, now: float) -> None:
    assert not check(secret, stream, token, now=now)
