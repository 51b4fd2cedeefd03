"""The embedded engine end to end: real ffmpeg, the real model, real viewers (SPEC §3.7).

Files are read at 1x (`realtime`), like a live stream, so each case takes as long as its audio.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.audio import make_wav, reference, wav
from tests.support import Harness, running_relay, watch_until_ended
from tests.wer import wer


async def start_local(h: Harness, stream_id: str, path: Path, **extra: Any) -> dict[str, Any]:
    body = {
        "stream_id": stream_id,
        "engine": "local",
        "source": {"url": path.as_uri(), "realtime": True},
        **extra,
    }
    async with h.session.post(f"{h.http}/v1/streams", json=body) as resp:
        created = await resp.json()
        assert resp.status == 201, created
        assert isinstance(created, dict)
        return created


@pytest.mark.parametrize("name", ["welcome_en_us", "numbers_en_gb"])
async def test_captions_from_a_live_file(name: str) -> None:
    async with running_relay() as h:
        watcher = asyncio.create_task(watch_until_ended(h, name, timeout=60))
        await asyncio.sleep(0.2)  # the viewer is there before the stream starts
        created = await start_local(h, name, wav(name))
        assert created["task_id"].startswith("local-")
        seen = await watcher
        async with h.session.get(f"{h.http}/v1/streams/{name}") as resp:
            info = await resp.json()
    states = [m["state"] for m in seen if m["type"] == "state"]
    assert states == ["starting", "running", "terminated"], states
    finals = [m for m in seen if m["type"] == "final"]
    partials = [m for m in seen if m["type"] == "partial"]
    assert finals and partials
    # partials come first: the first partial of each sentence precedes its final
    for final in finals:
        first_partial = next(
            (m for m in seen if m["type"] == "partial" and m["index"] == final["index"]), None
        )
        if first_partial is not None:
            assert first_partial["seq"] < final["seq"]
    assert [f["index"] for f in finals] == sorted(f["index"] for f in finals)
    text = " ".join(f["text"] for f in finals)
    error = wer(reference(name), text)
    assert error <= 0.15, (error, text)
    for final in finals:
        assert final["start_ms"] <= final["end_ms"]
        assert final["words"] and all(w["start_ms"] <= w["end_ms"] for w in final["words"])
    assert info["state"] == "terminated"
    assert info["latency"]["final"]["p50_ms"] > 0
    assert info["counters"]["finals"] == len(finals)


@pytest.mark.parametrize(
    "lavfi",
    ["anullsrc=r=16000:cl=mono", "anoisesrc=r=16000:a=0.02:c=pink"],
    ids=["silence", "quiet-noise"],
)
async def test_nothing_but_silence_or_noise_gives_no_captions(tmp_path: Path, lavfi: str) -> None:
    quiet = make_wav(tmp_path / "quiet.wav", lavfi, 8)
    async with running_relay() as h:
        watcher = asyncio.create_task(watch_until_ended(h, "quiet", timeout=40))
        await asyncio.sleep(0.2)
        await start_local(h, "quiet", quiet)
        seen = await watcher
    assert [m for m in seen if m["type"] in ("partial", "final")] == []
    assert [m["state"] for m in seen if m["type"] == "state"] == [
        "starting",
        "running",
        "terminated",
    ]


async def test_unreadable_media_fails_the_task_with_a_reason(tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF this is not audio at all" * 100)
    async with running_relay() as h:
        watcher = asyncio.create_task(watch_until_ended(h, "junk", timeout=30))
        await asyncio.sleep(0.2)
        await start_local(h, "junk", junk)
        seen = await watcher
    assert seen[-1]["state"] == "failed"
    assert "ffmpeg" in seen[-1]["reason"]


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ({"url": "file:///no/such/file.wav"}, "no such file"),
        ({"url": "gopher://example/x"}, "scheme"),
        ({"realtime": True}, "source.url"),
    ],
)
async def test_bad_sources_are_refused_at_once(
    harness: Harness, source: dict[str, Any], needle: str
) -> None:
    body = {"stream_id": "bad", "engine": "local", "source": source}
    async with harness.session.post(f"{harness.http}/v1/streams", json=body) as resp:
        assert resp.status == 400
        assert needle in (await resp.json())["error"]["message"]


async def test_delete_stops_ffmpeg_and_leaves_no_process(tmp_path: Path) -> None:
    async with running_relay() as h:
        await start_local(h, "stopme", wav("welcome_en_us"))
        await asyncio.sleep(1.5)
        children = _ffmpeg_children()
        assert children, "ffmpeg is running for the stream"
        async with h.session.delete(f"{h.http}/v1/streams/stopme") as resp:
            assert resp.status == 200
        await asyncio.sleep(0.5)
        assert _ffmpeg_children() == []


def _ffmpeg_children() -> list[int]:
    import os

    import psutil

    me = psutil.Process(os.getpid())
    return [p.pid for p in me.children(recursive=True) if "ffmpeg" in p.name()]


async def test_a_busy_stream_is_409_and_starts_no_second_reader() -> None:
    async with running_relay() as h:
        await start_local(h, "busy", wav("welcome_en_us"))
        await asyncio.sleep(1.0)
        before = _ffmpeg_children()
        body = {
            "stream_id": "busy",
            "engine": "local",
            "source": {"url": wav("numbers_en_gb").as_uri(), "realtime": True},
        }
        async with h.session.post(f"{h.http}/v1/streams", json=body) as resp:
            assert resp.status == 409
        await asyncio.sleep(0.5)
        assert len(_ffmpeg_children()) == len(before) == 1
