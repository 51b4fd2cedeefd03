"""Callback ingestion over real HTTP: every outcome of SPEC §3.2, and its isolation."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from structlog.testing import capture_logs

from relay.core import signature
from relay.core.events import CaptionEvent, Published
from tests.support import Harness, recv_json, recv_until


def metric(text: str, name: str, **labels: str) -> float:
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def metrics_text(h: Harness) -> str:
    async with h.session.get(f"{h.http}/metrics") as resp:
        return await resp.text()


async def stream_info(h: Harness, stream_id: str) -> dict[str, object]:
    async with h.session.get(f"{h.http}/v1/streams/{stream_id}") as resp:
        assert resp.status == 200
        info = await resp.json()
        assert isinstance(info, dict)
        return info


async def test_signed_partial_and_final_reach_a_viewer(harness: Harness) -> None:
    rec = await harness.attach("s1")
    async with harness.viewer("s1") as ws:
        hello = await recv_json(ws)
        assert hello == {"type": "hello", "stream_id": "s1", "state": "starting", "seq": 0}
        assert await rec.partial(0, "hello every", 900, fixed="hello", unfixed=" every") == (
            200,
            {},
        )
        state = await recv_json(ws)
        assert state == {
            "type": "state",
            "stream_id": "s1",
            "state": "running",
            "reason": "activity",
        }
        partial = await recv_json(ws)
        assert partial == {
            "type": "partial",
            "stream_id": "s1",
            "seq": 1,
            "index": 0,
            "text": "hello every",
            "stable": "hello",
            "start_ms": 900,
            "end_ms": 900,
        }
        words = [{"startTime": 0, "endTime": 400, "text": "Hello"}]
        assert (await rec.final(0, "Hello everyone.", 0, 1820, words=words))[0] == 200
        final = await recv_json(ws)
        assert final == {
            "type": "final",
            "stream_id": "s1",
            "seq": 2,
            "index": 0,
            "text": "Hello everyone.",
            "start_ms": 0,
            "end_ms": 1820,
            "words": [{"text": "Hello", "start_ms": 0, "end_ms": 400}],
            "translations": {},
        }
    info = await stream_info(harness, "s1")
    assert info["state"] == "running"
    assert info["counters"] == {
        "callbacks": 2,
        "partials": 1,
        "finals": 1,
        "viewers": 0,
        "rejected": 0,
    }
    assert info["last_result_at"] is not None


@pytest.mark.parametrize("sig_time_unit", ["s", "ms"])
async def test_sig_time_in_seconds_or_milliseconds(harness: Harness, sig_time_unit: str) -> None:
    rec = await harness.attach("units")
    now = time.time()
    sig_time = str(int(now)) if sig_time_unit == "s" else str(int(now * 1000))
    status, _ = await rec.post(
        rec.body("SentenceBegin", {"index": 0, "time": 0}), rec.headers(sig_time)
    )
    assert status == 200


async def reject_case(
    h: Harness, rec: object, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, object]]:
    assert hasattr(rec, "callback_url")
    async with h.session.post(rec.callback_url, data=body, headers=headers) as resp:
        payload = await resp.json()
        assert isinstance(payload, dict)
        return resp.status, payload


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("no_headers", 401, "missing_signature"),
        ("no_sig", 401, "missing_signature"),
        ("bad_sig", 401, "bad_signature"),
        ("other_key", 401, "bad_signature"),
        ("stale", 401, "stale_signature"),
        ("future", 401, "stale_signature"),
        ("garbage_time", 401, "stale_signature"),
        ("not_json", 400, "malformed_json"),
        ("json_array", 400, "malformed_json"),
        ("content_not_json", 400, "malformed_content"),
        ("no_header", 400, "malformed_content"),
        ("wrong_task", 400, "malformed_content"),
    ],
)
async def test_rejections_are_answered_counted_and_isolated(
    harness: Harness, case: str, status: int, code: str
) -> None:
    rec = await harness.attach("victim")
    bystander = await harness.attach("bystander")
    good = rec.body("SentenceBegin", {"index": 0, "time": 0})
    headers = rec.headers()
    now = int(time.time())
    body = good
    match case:
        case "no_headers":
            headers = {}
        case "no_sig":
            del headers["ASR-SIG"]
        case "bad_sig":
            headers["ASR-SIG"] = "0" * 32
        case "other_key":
            headers["ASR-SIG"] = signature.sign(headers["SIG-TIME"], rec.callback_url, "guess")
        case "stale":
            headers = rec.headers(str(now - 301))
        case "future":
            headers = rec.headers(str(now + 301))
        case "garbage_time":
            headers = rec.headers("yesterday")
        case "not_json":
            body = b"{not json"
        case "json_array":
            body = b"[1, 2]"
        case "content_not_json":
            body = b'{"task_id": "%s", "content": "{oops"}' % rec.task_id.encode()
        case "no_header":
            body = b'{"task_id": "%s", "content": "{\\"payload\\": {}}"}' % rec.task_id.encode()
        case "wrong_task":
            body = good.replace(rec.task_id.encode(), b"asr-someone-else")
    async with harness.viewer("bystander") as ws:
        await recv_json(ws)  # hello
        with capture_logs() as logs:
            got = await reject_case(harness, rec, body, headers)
        assert got == (status, {"error": {"code": code, "message": got[1]["error"]["message"]}})  # type: ignore[index]
        rejected = [e for e in logs if e["event"] == "callback.rejected"]
        assert len(rejected) == 1 and rejected[0]["code"] == code
        assert rec.auth_key not in repr(logs)
        # the bystander still gets its captions
        assert (await bystander.partial(0, "still here", 100))[0] == 200
        seen = await recv_until(ws, lambda m: m["type"] == "partial")
        assert seen[-1]["text"] == "still here"
    assert metric(await metrics_text(harness), "relay_callbacks_total", result=code) == 1
    info = await stream_info(harness, "victim")
    assert info["counters"]["rejected"] == 1  # type: ignore[index]
    assert info["counters"]["callbacks"] == 0  # type: ignore[index]
    assert info["state"] == "starting"


async def test_unknown_callback_url_is_404(harness: Harness) -> None:
    async with harness.session.post(f"{harness.http}/v1/callbacks/aliyun/nope", data=b"{}") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "unknown_callback"
    assert (
        metric(await metrics_text(harness), "relay_callbacks_total", result="unknown_callback") == 1
    )


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_over_64_kib_is_413(harness: Harness, chunked: bool) -> None:
    rec = await harness.attach("big")
    body = rec.body("SentenceEnd", {"index": 0, "time": 1, "begin_time": 0, "result": "x" * 70_000})

    async def chunks() -> object:
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    data: object = chunks() if chunked else body
    async with harness.session.post(rec.callback_url, data=data, headers=rec.headers()) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "body_too_large"
    # a body just under the limit is fine
    ok = rec.body("SentenceEnd", {"index": 0, "time": 1, "begin_time": 0, "result": "x" * 60_000})
    assert (await rec.post(ok))[0] == 200


async def test_redelivery_is_accepted_and_changes_nothing(harness: Harness) -> None:
    rec = await harness.attach("dup")
    body = rec.body(
        "SentenceEnd",
        {"index": 3, "time": 900, "begin_time": 0, "result": "Once."},
        message_id="same",
    )
    async with harness.viewer("dup") as ws:
        await recv_json(ws)
        assert (await rec.post(body))[0] == 200
        assert (await rec.post(body))[0] == 200  # exact redelivery: same message_id
        # a different message id is processed again, but a final never changes
        again = rec.body(
            "SentenceEnd", {"index": 3, "time": 950, "begin_time": 0, "result": "Twice."}
        )
        assert (await rec.post(again))[0] == 200
        await rec.partial(4, "next", 1000)
        seen = await recv_until(ws, lambda m: m["type"] == "partial")
    finals = [m for m in seen if m["type"] == "final"]
    assert [f["text"] for f in finals] == ["Once."]
    text = await metrics_text(harness)
    assert metric(text, "relay_callbacks_total", result="duplicate") == 1
    assert metric(text, "relay_callbacks_total", result="accepted") == 3


async def test_task_failed_ends_the_task_and_later_callbacks_get_404(harness: Harness) -> None:
    rec = await harness.attach("fails")
    async with harness.viewer("fails") as ws:
        await recv_json(ws)
        body = rec.body("TaskFailed", {}, status=40000004)
        assert (await rec.post(body))[0] == 200
        seen = await recv_until(ws, lambda m: m.get("state") == "failed")
        assert "40000004" in seen[-1]["reason"]
    status, payload = await rec.partial(0, "too late", 100)
    assert (status, payload["error"]["code"]) == (404, "task_ended")
    assert (await stream_info(harness, "fails"))["state"] == "failed"


async def test_transcription_completed_terminates(harness: Harness) -> None:
    rec = await harness.attach("done")
    await rec.post(rec.body("TranscriptionCompleted", {}))
    info = await stream_info(harness, "done")
    assert (info["state"], info["reason"]) == ("terminated", "completed")


async def test_concurrent_callbacks_of_many_streams(harness: Harness) -> None:
    recs = [await harness.attach(f"c{i}") for i in range(10)]

    async def speak(i: int) -> None:
        rec = recs[i]
        for n in range(20):
            assert (await rec.partial(n, f"p{n}", n * 100))[0] == 200
            assert (await rec.final(n, f"s{i}-{n}", n * 100, n * 100 + 50))[0] == 200

    await asyncio.gather(*(speak(i) for i in range(10)))
    for i in range(10):
        info = await stream_info(harness, f"c{i}")
        assert info["counters"]["finals"] == 20  # type: ignore[index]


async def test_store_failure_is_503_and_nothing_is_acknowledged(harness: Harness) -> None:
    from relay.errors import StoreUnavailable

    rec = await harness.attach("flaky")
    store = harness.relay.store
    original = store.publish

    async def broken(stream_id: str, event: CaptionEvent) -> Published:
        raise StoreUnavailable("store is down")

    store.publish = broken  # type: ignore[method-assign]
    try:
        status, payload = await rec.partial(0, "lost?", 10)
        assert (status, payload["error"]["code"]) == (503, "store_unavailable")
    finally:
        store.publish = original  # type: ignore[method-assign]
    # the sender retries (a new delivery of the same event) and it goes through
    assert (await rec.partial(0, "lost?", 10))[0] == 200


async def test_aiohttp_client_errors_do_not_break_the_server(harness: Harness) -> None:
    rec = await harness.attach("abort")
    # a client that announces a body and hangs up half way
    reader, writer = await asyncio.open_connection("127.0.0.1", int(harness.http.rsplit(":", 1)[1]))
    path = rec.callback_url.split("127.0.0.1", 1)[1].split("/", 1)[1]
    writer.write(f"POST /{path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{{".encode())
    await writer.drain()
    writer.close()
    assert (await rec.partial(0, "fine", 10))[0] == 200
    del reader
    assert isinstance(harness.session, aiohttp.ClientSession)
