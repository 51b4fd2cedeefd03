"""Task life of attached tasks on a running relay (SPEC §3.6), with short timers."""

from __future__ import annotations

from tests.support import recv_json, recv_until, running_relay


async def test_silence_interrupts_activity_resumes_and_auto_terminate_ends() -> None:
    async with running_relay(interrupt_after_s=0.5) as h:
        rec = await h.attach("quiet", auto_terminate={"enabled": True, "delay_s": 1})
        async with h.viewer("quiet") as ws:
            await recv_json(ws)
            await rec.partial(0, "hello", 100)
            seen = await recv_until(ws, lambda m: m.get("state") == "interrupted", timeout=5)
            assert seen[-1]["reason"] == "no_activity"
            await rec.partial(0, "hello again", 200)
            seen = await recv_until(ws, lambda m: m.get("state") == "running", timeout=5)
            seen = await recv_until(ws, lambda m: m.get("state") == "terminated", timeout=10)
            states = [m["state"] for m in seen if m["type"] == "state"]
            assert states == ["interrupted", "terminated"]
            assert seen[-1]["reason"] == "auto_terminate"
        async with h.session.get(f"{h.http}/v1/streams/quiet") as resp:
            info = await resp.json()
        assert info["state"] == "terminated" and info["ended_at"] is not None
        status, body = await rec.partial(1, "anyone?", 300)
        assert (status, body["error"]["code"]) == (404, "task_ended")


async def test_without_auto_terminate_an_interrupted_task_waits() -> None:
    async with running_relay(interrupt_after_s=0.3) as h:
        rec = await h.attach("patient")
        async with h.viewer("patient") as ws:
            await recv_json(ws)
            seen = await recv_until(ws, lambda m: m.get("state") == "interrupted", timeout=5)
            assert seen[-1]["state"] == "interrupted"
            await rec.final(0, "Back.", 0, 100)
            seen = await recv_until(ws, lambda m: m["type"] == "final", timeout=5)
            assert [m.get("state") for m in seen if m["type"] == "state"] == ["running"]
