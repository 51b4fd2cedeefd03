"""The viewer WebSocket over real loopback connections (SPEC §3.4)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.core import viewer_token
from tests.support import Harness, recv_json, recv_until, running_relay


async def test_viewer_of_a_stream_not_started_waits_for_it(harness: Harness) -> None:
    async with harness.viewer("later") as ws:
        assert await recv_json(ws) == {
            "type": "hello",
            "stream_id": "later",
            "state": "idle",
            "seq": 0,
        }
        rec = await harness.attach("later")
        await rec.final(0, "Now we are live.", 0, 1500)
        seen = await recv_until(ws, lambda m: m["type"] == "final")
        assert [m.get("state") for m in seen if m["type"] == "state"] == ["starting", "running"]
        assert seen[-1]["text"] == "Now we are live."


async def test_since_replays_missed_finals_then_the_partial(harness: Harness) -> None:
    rec = await harness.attach("resume")
    for i in range(5):
        await rec.final(i, f"Sentence {i}.", i * 1000, i * 1000 + 900)
    await rec.partial(5, "and now", 5500)
    async with harness.viewer("resume", "since=2") as ws:
        hello = await recv_json(ws)
        assert (hello["type"], hello["seq"]) == ("hello", 6)
        got = [await recv_json(ws) for _ in range(4)]
    assert [(m["type"], m["seq"]) for m in got] == [
        ("final", 3),
        ("final", 4),
        ("final", 5),
        ("partial", 6),
    ]
    assert [m["text"] for m in got] == ["Sentence 2.", "Sentence 3.", "Sentence 4.", "and now"]
    async with harness.viewer("resume", "since=0") as ws:
        await recv_json(ws)
        assert [(await recv_json(ws))["seq"] for _ in range(6)] == [1, 2, 3, 4, 5, 6]


async def test_no_event_is_lost_or_repeated_across_a_reconnect(harness: Harness) -> None:
    rec = await harness.attach("gapless")
    finals: dict[int, int] = {}

    async def speak() -> None:
        for i in range(60):
            await rec.final(i, f"s{i}", i, i + 1)

    speaker = asyncio.create_task(speak())
    last = 0
    while len(finals) < 60:
        async with harness.viewer("gapless", f"since={last}") as ws:
            await recv_json(ws)
            for _ in range(7):  # take a few, then drop the connection mid-stream
                try:
                    message = await recv_json(ws, timeout=2)
                except TimeoutError:
                    break
                if message["type"] == "final":
                    assert message["seq"] > last
                    finals[message["index"]] = finals.get(message["index"], 0) + 1
                    last = message["seq"]
    await speaker
    assert sorted(finals) == list(range(60)) and set(finals.values()) == {1}


async def test_lang_sends_the_translation_where_one_exists(harness: Harness) -> None:
    rec = await harness.attach("tr", translate=["cn"])
    async with harness.viewer("tr", "lang=cn") as cn, harness.viewer("tr") as src:
        await recv_json(cn), await recv_json(src)
        await rec.final(0, "Good evening.", 0, 900, translations={"cn": "晚上好。"})
        await rec.final(1, "Untranslated.", 900, 1800)
        cn_seen = await recv_until(cn, lambda m: m.get("index") == 1)
        src_seen = await recv_until(src, lambda m: m.get("index") == 1)
    cn_finals = [m for m in cn_seen if m["type"] == "final"]
    src_finals = [m for m in src_seen if m["type"] == "final"]
    assert [m["text"] for m in cn_finals] == ["晚上好。", "Untranslated."]
    assert [m["text"] for m in src_finals] == ["Good evening.", "Untranslated."]
    assert cn_finals[0]["translations"] == {"cn": "晚上好。"}


async def test_delete_sends_state_and_viewers_stay_for_the_next_task(harness: Harness) -> None:
    rec = await harness.attach("again")
    async with harness.viewer("again") as ws:
        await recv_json(ws)
        await rec.final(0, "First task.", 0, 100)
        async with harness.session.delete(f"{harness.http}/v1/streams/again") as resp:
            assert resp.status == 200
            assert (await resp.json())["state"] == "terminated"
        seen = await recv_until(ws, lambda m: m.get("state") == "terminated")
        assert seen[-1]["reason"] == "stopped"
        rec2 = await harness.attach("again")
        await rec2.final(0, "Second task.", 0, 100)
        seen = await recv_until(ws, lambda m: m["type"] == "final")
        assert seen[-1]["text"] == "Second task."
        assert seen[-1]["seq"] == 2  # the stream's seq runs on across tasks


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/captions/", 404),
        ("/elsewhere", 404),
        ("/v1/captions/x?since=-1", 400),
        ("/v1/captions/x?since=abc", 400),
        ("/v1/captions/x?lang=%3Cscript%3E", 400),
    ],
)
async def test_bad_viewer_requests_are_refused_at_the_handshake(
    harness: Harness, path: str, status: int
) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(harness.ws + path, open_timeout=5):
            pass
    assert info.value.response.status_code == status


async def test_viewer_tokens_when_a_secret_is_set() -> None:
    async with running_relay(viewer_secret="s3cret") as h:
        good = viewer_token.issue("s3cret", "tok", int(time.time()) + 60)
        async with h.viewer("tok", f"token={good}") as ws:
            assert (await recv_json(ws))["type"] == "hello"
        for token in (
            "",
            viewer_token.issue("s3cret", "other", int(time.time()) + 60),
            viewer_token.issue("s3cret", "tok", int(time.time()) - 1),
        ):
            with pytest.raises(InvalidStatus) as info:
                async with h.viewer("tok", f"token={token}"):
                    pass
            assert info.value.response.status_code == 401


def _raw_viewer(port: int, path: str) -> socket.socket:
    """A viewer that connects and then never reads a byte, with a tiny receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return sock


async def test_a_viewer_that_never_reads_is_closed_1013_and_others_get_everything() -> None:
    N = 400
    async with running_relay(viewer_max_pending_bytes=64 * 1024) as h:
        rec = await h.attach("slow")
        port = int(h.ws.rsplit(":", 1)[1])
        stuck = _raw_viewer(port, "/v1/captions/slow")
        await asyncio.sleep(0.2)
        async with h.viewer("slow") as ws:
            await recv_json(ws)
            text = "x" * 16000  # enough to fill the kernel's socket buffers fast
            received: list[dict[str, Any]] = []

            async def read_all() -> None:
                while len([m for m in received if m["type"] == "final"]) < N:
                    received.append(json.loads(await ws.recv()))

            reader = asyncio.create_task(read_all())
            for i in range(N):
                await rec.partial(i, text, i * 10)
                await rec.final(i, f"{i} {text}", i * 10, i * 10 + 5)
            async with asyncio.timeout(20):
                await reader
        finals = [m["index"] for m in received if m["type"] == "final"]
        assert finals == list(range(N))
        async with h.session.get(f"{h.http}/metrics") as resp:
            assert 'relay_viewer_disconnects_total{reason="slow"} 1.0' in await resp.text()
        assert h.relay.hub.count("slow") == 0
        # the stuck viewer gets its close frame (1013) at the end of what it was sent
        stuck.setblocking(False)
        data = bytearray()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(10):
            while b"\x88" not in data[-200:]:
                chunk = await loop.sock_recv(stuck, 1 << 20)
                if not chunk:
                    break
                data += chunk
        close_at = data.rfind(b"\x88")
        assert close_at >= 0 and int.from_bytes(data[close_at + 2 : close_at + 4], "big") == 1013
        stuck.close()


async def test_slow_viewer_gets_the_newest_partial_not_every_one() -> None:
    async with running_relay() as h:
        rec = await h.attach("coalesce")
        async with h.viewer("coalesce") as ws:
            await recv_json(ws)
            ws.transport.pause_reading()  # stop reading, as a busy client would
            for i in range(300):
                await rec.partial(0, f"word {i} " + "y" * 16000, i)
            await rec.final(0, "done", 0, 400)
            ws.transport.resume_reading()
            seen = await recv_until(ws, lambda m: m["type"] == "final", timeout=10)
        partials = [m for m in seen if m["type"] == "partial"]
        assert len(partials) < 300  # coalesced while the viewer lagged
        seqs = [m["seq"] for m in seen if "seq" in m]
        assert seqs == sorted(seqs)
        assert seen[-1]["text"] == "done"


async def test_shutdown_closes_viewers_with_1001() -> None:
    async with running_relay() as h:
        ws = await h.viewer("bye")
        await recv_json(ws)
    with pytest.raises(ConnectionClosed):
        await recv_json(ws)
    assert ws.close_code == 1001


async def test_a_flood_of_viewers_past_the_limit_gets_503_and_the_rest_are_served() -> None:
    async with running_relay(max_viewers=20) as h:
        results = await asyncio.gather(
            *(h.viewer("crowd").__aenter__() for _ in range(40)), return_exceptions=True
        )
        admitted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, InvalidStatus)]
        assert len(admitted) == 20 and len(refused) == 20
        assert {r.response.status_code for r in refused} == {503}
        rec = await h.attach("crowd")
        await rec.final(0, "Everyone admitted hears this.", 0, 100)
        for ws in admitted:
            seen = await recv_until(ws, lambda m: m["type"] == "final")
            assert seen[-1]["text"] == "Everyone admitted hears this."
            await ws.close()
