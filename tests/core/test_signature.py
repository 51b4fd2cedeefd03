"""Tests of the ASR-SIG callback signature (contract §4, SPEC §3.2)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from relay.core.signature import Verdict, sig_time_seconds, sign, verify

# The contract's worked examples (contracts/aliyun-live-rtc-asr.md §4).
URL = "http://127.0.0.1:8080/asr/callback"
KEY = "abcd"
SIG_TIME_S = "1723433155"
SIG_TIME_MS = "1723433155645"
SIG_S = "26da90d716dc3e26a3c26af93664440b"
SIG_MS = "3b93be658bfb5ab872e712987881c34f"

SKEW = 300.0
HEX = "0123456789abcdef"


def check(
    sig_time: str | None,
    asr_sig: str | None,
    *,
    now: float,
    url: str = URL,
    key: str = KEY,
    max_skew_s: float = SKEW,
) -> Verdict:
    return verify(sig_time, asr_sig, callback_url=url, auth_key=key, now=now, max_skew_s=max_skew_s)


def signed(sig_time: str, *, now: float, max_skew_s: float = SKEW) -> Verdict:
    """The verdict on a correctly signed callback sent at ``sig_time``."""
    return check(sig_time, sign(sig_time, URL, KEY), now=now, max_skew_s=max_skew_s)


def replace_at(text: str, i: int, char: str) -> str:
    return text[:i] + char + text[i + 1 :]


def aiohttp_header(raw: bytes) -> str:
    """A header value as aiohttp hands it over: UTF-8 with surrogateescape."""
    return raw.decode("utf-8", "surrogateescape")


# Strategies -------------------------------------------------------------------------

seconds = st.integers(min_value=10**9, max_value=10**10 - 1)  # 10-digit epoch seconds
milliseconds = st.integers(min_value=10**12, max_value=10**13 - 1)  # 13-digit epoch ms
urls = st.text(min_size=1, max_size=80)
keys = st.text(min_size=1, max_size=40)
digit_times = st.one_of(seconds, milliseconds).map(str)


# --- sign ----------------------------------------------------------------------------


def test_contract_example_with_seconds() -> None:
    assert sign(SIG_TIME_S, URL, KEY) == SIG_S


def test_contract_example_with_milliseconds() -> None:
    assert sign(SIG_TIME_MS, URL, KEY) == SIG_MS


@given(digit_times, urls, keys)
def test_sign_is_32_lowercase_hex(sig_time: str, url: str, key: str) -> None:
    digest = sign(sig_time, url, key)
    assert len(digest) == 32
    assert set(digest) <= set(HEX)


# --- verify: the worked examples -----------------------------------------------------


def test_contract_example_verifies_with_seconds() -> None:
    assert check(SIG_TIME_S, SIG_S, now=1723433155.0) is Verdict.OK


def test_contract_example_verifies_with_milliseconds() -> None:
    assert check(SIG_TIME_MS, SIG_MS, now=1723433156.0) is Verdict.OK


def test_signature_of_the_other_unit_is_bad() -> None:
    # The hash covers the header string exactly as received: units are not interchangeable.
    assert check(SIG_TIME_S, SIG_MS, now=1723433155.0) is Verdict.BAD
    assert check(SIG_TIME_MS, SIG_S, now=1723433155.0) is Verdict.BAD


def test_uppercase_hex_is_accepted() -> None:
    assert check(SIG_TIME_S, SIG_S.upper(), now=1723433155.0) is Verdict.OK


def test_verdicts_are_the_spec_error_codes() -> None:
    verdicts = [Verdict.MISSING, Verdict.BAD, Verdict.STALE, Verdict.OK]
    codes = ["missing_signature", "bad_signature", "stale_signature", "ok"]
    assert [v.value for v in verdicts] == codes


# --- verify: missing headers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sig_time", "asr_sig"),
    [
        (None, SIG_S),
        ("", SIG_S),
        (SIG_TIME_S, None),
        (SIG_TIME_S, ""),
        (None, None),
        ("", ""),
    ],
)
def test_missing_header_is_missing(sig_time: str | None, asr_sig: str | None) -> None:
    assert check(sig_time, asr_sig, now=1723433155.0) is Verdict.MISSING


# --- verify: bad signatures ----------------------------------------------------------


@pytest.mark.parametrize(
    "asr_sig",
    [
        "0" * 32,
        SIG_S[:-1],  # too short
        SIG_S + "0",  # too long
        SIG_MS,
        "not a signature",
        "é" * 32,
    ],
)
def test_wrong_signature_is_bad(asr_sig: str) -> None:
    assert check(SIG_TIME_S, asr_sig, now=1723433155.0) is Verdict.BAD


def test_signature_is_checked_before_the_time() -> None:
    # A stale callback with a wrong signature learns nothing about the window.
    assert check(SIG_TIME_S, "0" * 32, now=0.0) is Verdict.BAD
    assert check("garbage", "0" * 32, now=0.0) is Verdict.BAD


def test_wrong_url_or_key_is_bad() -> None:
    assert check(SIG_TIME_S, SIG_S, now=1723433155.0, url=URL + "/") is Verdict.BAD
    assert check(SIG_TIME_S, SIG_S, now=1723433155.0, key="abce") is Verdict.BAD


@given(digit_times, urls, keys)
def test_sign_then_verify_is_ok(sig_time: str, url: str, key: str) -> None:
    now = sig_time_seconds(sig_time)
    assert now is not None
    verdict = verify(
        sig_time, sign(sig_time, url, key), callback_url=url, auth_key=key, now=now, max_skew_s=0
    )
    assert verdict is Verdict.OK


@given(digit_times, st.data())
def test_any_flipped_signature_character_is_bad(sig_time: str, data: st.DataObject) -> None:
    good = sign(sig_time, URL, KEY)
    i = data.draw(st.integers(0, len(good) - 1), label="position")
    char = data.draw(st.characters().filter(lambda c: c.lower() != good[i]), label="char")
    now = sig_time_seconds(sig_time)
    assert now is not None
    assert check(sig_time, replace_at(good, i, char), now=now) is Verdict.BAD


@given(digit_times, st.data())
def test_any_flipped_sig_time_digit_is_bad(sig_time: str, data: st.DataObject) -> None:
    asr_sig = sign(sig_time, URL, KEY)
    i = data.draw(st.integers(0, len(sig_time) - 1), label="position")
    char = data.draw(st.sampled_from("0123456789").filter(lambda c: c != sig_time[i]))
    forged = replace_at(sig_time, i, char)
    forged_at = sig_time_seconds(forged)
    assert forged_at is not None
    # Even when the forged time is perfectly fresh, the signature gives it away.
    assert check(forged, asr_sig, now=forged_at) is Verdict.BAD


@given(digit_times, urls, keys, st.data())
def test_any_flipped_url_character_is_bad(
    sig_time: str, url: str, key: str, data: st.DataObject
) -> None:
    asr_sig = sign(sig_time, url, key)
    i = data.draw(st.integers(0, len(url) - 1), label="position")
    char = data.draw(st.characters().filter(lambda c: c != url[i]), label="char")
    now = sig_time_seconds(sig_time)
    assert now is not None
    other = replace_at(url, i, char)
    assert check(sig_time, asr_sig, now=now, url=other, key=key) is Verdict.BAD


@given(digit_times, urls, keys, st.data())
def test_any_flipped_key_character_is_bad(
    sig_time: str, url: str, key: str, data: st.DataObject
) -> None:
    asr_sig = sign(sig_time, url, key)
    i = data.draw(st.integers(0, len(key) - 1), label="position")
    char = data.draw(st.characters().filter(lambda c: c != key[i]), label="char")
    now = sig_time_seconds(sig_time)
    assert now is not None
    other = replace_at(key, i, char)
    assert check(sig_time, asr_sig, now=now, url=url, key=other) is Verdict.BAD


# --- verify: freshness ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig_time", "sent_at"),
    [(SIG_TIME_S, 1723433155.0), ("1723433155500", 1723433155.5)],
    ids=["seconds", "milliseconds"],
)
@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0.0, Verdict.OK),
        (SKEW, Verdict.OK),  # exactly at the bound: accepted
        (-SKEW, Verdict.OK),  # sent from the future, exactly at the bound
        (SKEW + 0.5, Verdict.STALE),  # just past it
        (-SKEW - 0.5, Verdict.STALE),  # too far in the future
        (86400.0, Verdict.STALE),
    ],
)
def test_skew_boundaries(sig_time: str, sent_at: float, offset: float, expected: Verdict) -> None:
    assert signed(sig_time, now=sent_at + offset) is expected


@given(seconds, st.integers(-10_000, 10_000), st.integers(0, 5_000))
def test_seconds_fresh_exactly_within_the_window(sent: int, offset: int, skew: int) -> None:
    verdict = signed(str(sent), now=float(sent + offset), max_skew_s=float(skew))
    assert verdict is (Verdict.OK if abs(offset) <= skew else Verdict.STALE)


@given(seconds, st.booleans(), st.integers(-10_000, 10_000), st.integers(0, 5_000))
def test_milliseconds_fresh_exactly_within_the_window(
    sent: int, half: bool, offset: int, skew: int
) -> None:
    # Whole and half seconds are exact in binary floating point, so the bound is exact too.
    sig_time = str(sent * 1000 + (500 if half else 0))
    sent_at = sent + (0.5 if half else 0.0)
    verdict = signed(sig_time, now=sent_at + offset, max_skew_s=float(skew))
    assert verdict is (Verdict.OK if abs(offset) <= skew else Verdict.STALE)


@pytest.mark.parametrize(
    "sig_time",
    [
        "garbage",
        "1723433155.5",  # not an integer
        "-1723433155",
        "+1723433155",
        " 1723433155",
        "1723433155 ",
        "0x66b9a0c3",
        "１７２３４３３１５５",  # full-width digits  # noqa: RUF001
        "١٧٢٣٤٣٣١٥٥",  # Arabic-Indic digits
        "1" * 17,  # too long to be a time
        "1e9",
    ],
)
def test_signed_but_unreadable_time_is_stale(sig_time: str) -> None:
    # Correctly signed (the hash covers any string), but no time can be read from it.
    assert signed(sig_time, now=1723433155.0) is Verdict.STALE


def test_non_utf8_sig_time_header_is_bad_not_an_exception() -> None:
    # aiohttp decodes header bytes with surrogateescape: b"\xff" arrives as "\udcff".
    sig_time = aiohttp_header(b"1723433155\xff")
    assert check(sig_time, SIG_S, now=1723433155.0) is Verdict.BAD


def test_non_utf8_asr_sig_header_is_bad_not_an_exception() -> None:
    asr_sig = aiohttp_header(SIG_S[:-1].encode() + b"\xff")
    assert check(SIG_TIME_S, asr_sig, now=1723433155.0) is Verdict.BAD


@given(st.binary(max_size=40), st.binary(max_size=40), st.floats(allow_nan=False))
def test_any_header_bytes_give_a_verdict_never_ok(
    sig_time: bytes, asr_sig: bytes, now: float
) -> None:
    verdict = check(aiohttp_header(sig_time), aiohttp_header(asr_sig), now=now)
    assert verdict in (Verdict.MISSING, Verdict.BAD, Verdict.STALE)


# --- sig_time_seconds ----------------------------------------------------------------


def test_sig_time_seconds_of_the_contract_examples() -> None:
    assert sig_time_seconds(SIG_TIME_S) == 1723433155.0
    assert sig_time_seconds(SIG_TIME_MS) == pytest.approx(1723433155.645)


@given(seconds)
def test_ten_digits_are_seconds(value: int) -> None:
    assert sig_time_seconds(str(value)) == float(value)


@given(milliseconds)
def test_thirteen_digits_are_milliseconds(value: int) -> None:
    assert sig_time_seconds(str(value)) == value / 1000


@given(st.text(max_size=20))
def test_sig_time_seconds_only_reads_ascii_digits(text: str) -> None:
    assume(not (text.isascii() and text.isdigit()))
    assert sig_time_seconds(text) is None
