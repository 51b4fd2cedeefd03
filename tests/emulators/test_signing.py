"""POP request signatures, checked against requests the official SDK really made."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest
from aiohttp import web
from alibabacloud_live20161101 import models as live_models
from hypothesis import given
from hypothesis import strategies as st

from relay.emulators.signing import NonceMemory, PopError, Request, Verifier, pairs
from tests.emulators.support import AK_ID, AK_SECRET, sdk

HEX = "0123456789abcdef"


@dataclass(frozen=True)
class Captured:
    request: Request
    now: float  # the time the SDK signed it


def _capture() -> list[Captured]:
    """Run the SDK (both schemes) against a server that records what arrives."""
    seen: list[Captured] = []

    async def record(request: web.Request) -> web.Response:
        headers = dict(request.headers)
        raw_query = request.raw_path.partition("?")[2]
        query = pairs(raw_query)
        stamp = headers.get("x-acs-date") or dict(query)["Timestamp"]
        at = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        body = await request.read()
        seen.append(Captured(Request(request.method, request.path, query, headers, body), at))
        return web.json_response({"RequestId": "r", "RetCode": 2000, "TaskId": "asr-1"})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/", record)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        try:
            for v2 in (False, True):
                client = sdk(port, v2=v2)
                await client.create_rtc_asr_task_async(
                    live_models.CreateRtcAsrTaskRequest(
                        mode="live",
                        stream_url="rtmp://example.com/live/a b?x=1&y=é~",
                        language="en",
                        callback_url="http://127.0.0.1:1/cb?t=1",
                        auth_key="abcd",
                        translate_enabled=True,
                        target_languages="cn",
                        report_interval=-1,
                    )
                )
                await client.query_rtc_asr_tasks_async(live_models.QueryRtcAsrTasksRequest())
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return seen


@pytest.fixture(scope="module")
def captured() -> Iterator[list[Captured]]:
    yield _capture()


def verifier(secret: str = AK_SECRET) -> Verifier:
    return Verifier({AK_ID: secret}.get)


def acs3(captured: list[Captured]) -> Captured:
    return next(c for c in captured if "Authorization" in c.request.headers)


def v2(captured: list[Captured]) -> Captured:
    return next(c for c in captured if "Authorization" not in c.request.headers)


def test_both_schemes_from_the_sdk_verify(captured: list[Captured]) -> None:
    assert len(captured) == 4
    schemes = [verifier().verify(c.request, c.now).scheme.value for c in captured]
    assert schemes == ["ACS3-HMAC-SHA256"] * 2 + ["HMAC-SHA1"] * 2
    assert {verifier().verify(c.request, c.now).access_key_id for c in captured} == {AK_ID}


def _flip(text: str, at: int, alphabet: str) -> str:
    i = at % len(text)
    choices = [c for c in alphabet if c != text[i]]
    return text[:i] + choices[at % len(choices)] + text[i + 1 :]


def _reject(captured: Captured, v: Verifier | None = None) -> PopError:
    with pytest.raises(PopError) as info:
        (v or verifier()).verify(captured.request, captured.now)
    return info.value


@given(scheme=st.sampled_from(["acs3", "v2"]), which=st.integers(0, 1000), at=st.integers(0, 10**6))
def test_a_flipped_query_byte_breaks_it(
    captured: list[Captured], scheme: str, which: int, at: int
) -> None:
    c = acs3(captured) if scheme == "acs3" else v2(captured)
    query = [(k, v) for k, v in c.request.query if v and k != "Signature"]
    key = query[which % len(query)][0]
    changed = [(k, _flip(v, at, HEX + "xyz ") if k == key else v) for k, v in c.request.query]
    error = _reject(replace(c, request=replace(c.request, query=changed)))
    assert error.code in {
        "SignatureDoesNotMatch",
        "InvalidTimeStamp.Format",
        "InvalidTimeStamp.Expired",
        "InvalidParameter",
        "InvalidAccessKeyId.NotFound",
    }


@given(which=st.integers(0, 100), at=st.integers(0, 10**6))
def test_a_flipped_signed_header_byte_breaks_it(
    captured: list[Captured], which: int, at: int
) -> None:
    c = acs3(captured)
    signed = re.search(r"SignedHeaders=([^,]+)", c.request.headers["Authorization"])
    assert signed is not None
    names = signed.group(1).split(";")
    name = names[which % len(names)]
    headers = {
        k: (_flip(v, at, HEX + "XZ") if k.lower() == name else v)
        for k, v in c.request.headers.items()
    }
    error = _reject(replace(c, request=replace(c.request, headers=headers)))
    assert error.code != "SignatureNonceUsed"


@given(scheme=st.sampled_from(["acs3", "v2"]), at=st.integers(0, 10**6))
def test_a_flipped_signature_byte_breaks_it(captured: list[Captured], scheme: str, at: int) -> None:
    if scheme == "acs3":
        c = acs3(captured)
        auth = c.request.headers["Authorization"]
        head, _, sig = auth.rpartition("Signature=")
        headers = {**c.request.headers, "Authorization": head + "Signature=" + _flip(sig, at, HEX)}
        request = replace(c.request, headers=headers)
    else:
        c = v2(captured)
        query = [
            (k, _flip(v, at, "ABCabc+/=") if k == "Signature" else v) for k, v in c.request.query
        ]
        request = replace(c.request, query=query)
    error = _reject(replace(c, request=request))
    assert error.code == "SignatureDoesNotMatch" and error.status == 400


@given(scheme=st.sampled_from(["acs3", "v2"]), at=st.integers(0, 10**6))
def test_a_flipped_secret_byte_breaks_it(captured: list[Captured], scheme: str, at: int) -> None:
    c = acs3(captured) if scheme == "acs3" else v2(captured)
    error = _reject(c, verifier(_flip(AK_SECRET, at, "abcdef0123456789-")))
    assert error.code == "SignatureDoesNotMatch"
    assert not re.search(r"[0-9a-f]{40}|[A-Za-z0-9+/]{27}=", error.message)  # no signature


@pytest.mark.parametrize("scheme", ["acs3", "v2"])
@pytest.mark.parametrize("skew", [-901, 901])
def test_a_timestamp_past_15_minutes_is_expired(
    captured: list[Captured], scheme: str, skew: int
) -> None:
    c = acs3(captured) if scheme == "acs3" else v2(captured)
    verifier().verify(c.request, c.now + skew / abs(skew) * 899)  # inside the window
    error = _reject(replace(c, now=c.now + skew))
    assert (error.code, error.status) == ("InvalidTimeStamp.Expired", 400)


@pytest.mark.parametrize("scheme", ["acs3", "v2"])
def test_a_replayed_nonce_is_refused(captured: list[Captured], scheme: str) -> None:
    c = acs3(captured) if scheme == "acs3" else v2(captured)
    v = verifier()
    v.verify(c.request, c.now)
    error = _reject(replace(c, now=c.now + 60), v)
    assert (error.code, error.status) == ("SignatureNonceUsed", 400)


@pytest.mark.parametrize("scheme", ["acs3", "v2"])
def test_an_unknown_access_key_is_404(captured: list[Captured], scheme: str) -> None:
    c = acs3(captured) if scheme == "acs3" else v2(captured)
    error = _reject(c, Verifier({"someone-else": AK_SECRET}.get))
    assert (error.code, error.status) == ("InvalidAccessKeyId.NotFound", 404)


def test_the_body_must_match_its_hash(captured: list[Captured]) -> None:
    c = acs3(captured)
    error = _reject(replace(c, request=replace(c.request, body=b"x")))
    assert error.code == "SignatureDoesNotMatch" and "x-acs-content-sha256" in error.message


def test_absent_pieces_are_named(captured: list[Captured]) -> None:
    c = acs3(captured)
    no_auth = {k: v for k, v in c.request.headers.items() if k != "Authorization"}
    assert _reject(replace(c, request=replace(c.request, headers=no_auth))).code == (
        "IncompleteSignature"
    )
    cut = {**c.request.headers, "Authorization": "ACS3-HMAC-SHA256 Credential=" + AK_ID}
    assert _reject(replace(c, request=replace(c.request, headers=cut))).code == (
        "IncompleteSignature"
    )
    weak = re.sub(r"x-acs-signature-nonce;", "", c.request.headers["Authorization"])
    headers = {**c.request.headers, "Authorization": weak}
    error = _reject(replace(c, request=replace(c.request, headers=headers)))
    assert error.code == "IncompleteSignature" and "x-acs-signature-nonce" in error.message
    no_date = {k: v for k, v in c.request.headers.items() if k != "x-acs-date"}
    error = _reject(replace(c, request=replace(c.request, headers=no_date)))
    assert error.code == "MissingParameter" and "x-acs-date" in error.message
    r2 = v2(captured)
    query = [(k, v) for k, v in r2.request.query if k != "Timestamp"]
    error = _reject(replace(r2, request=replace(r2.request, query=query)))
    assert error.code == "MissingParameter" and "Timestamp" in error.message


def test_nonce_memory_is_bounded_and_forgets_old_nonces() -> None:
    memory = NonceMemory(window_s=10, max_entries=3)
    assert memory.check_and_add(("ak", "a"), 0)
    assert not memory.check_and_add(("ak", "a"), 5)
    assert memory.check_and_add(("ak", "a"), 11)  # past the window
    for i in range(10):
        memory.check_and_add(("ak", str(i)), 12)
    assert len(memory) <= 3
