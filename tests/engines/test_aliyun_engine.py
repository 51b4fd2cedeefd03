"""engine=aliyun end to end: relay -> official SDK -> `relay emulate aliyun-live` -> signed
callbacks -> relay -> viewers (SPEC §3.1, §3.2, §3.6).

The emulator is the real one (`relay.emulators.aliyun_live`), on loopback; it verifies the
SDK's request signatures and transcribes the shared test speech with the local engine, at 1x.
Tests without speech use Mode rtc, which the emulator runs silent unless told what it hears.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from relay.core import signature
from relay.core.events import ResultChanged, SentenceEnd
from relay.emulators.aliyun_live import (
    DEV_ACCESS_KEY_SECRET,
    Faults,
    Refusal,
)
from relay.emulators.signing import PopError
from relay.engines.aliyun.client import LiveApi
from relay.engines.aliyun.engine import AliyunEngine
from relay.engines.base import TaskSink, TaskSpec
from relay.store.memory import MemoryStore
from tests.audio import reference, wav
from tests.engines.cloud import cloud, relay_settings
from tests.support import Harness, recv_json, running_relay, watch_until_ended
from tests.wer import wer

RTC = {"mode": "rtc", "sdk_app_id": "app-1", "channel_id": "ch-1", "rtc_user_id": "u-1"}


async def create(h: Harness, stream_id: str, source: dict[str, Any], **extra: Any) -> Any:
    body = {"stream_id": stream_id, "engine": "aliyun", "source": source, **extra}
    async with h.session.post(f"{h.http}/v1/streams", json=body) as resp:
        return resp.status, await resp.json()


async def stream_info(h: Harness, stream_id: str) -> Any:
    async with h.session.get(f"{h.http}/v1/streams/{stream_id}") as resp:
        return resp.status, await resp.json()


async def eventually_gone(emulator: Any, task_id: str, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                emulator.query(task_id)
            except PopError as exc:
                assert exc.code == "ConfigNotFound"
                return
            await asyncio.sleep(0.1)


def file_source(name: str) -> dict[str, Any]:
    return {"mode": "live", "url": wav(name).as_uri()}


async def follow(emulator: Any, task_id: str, last: dict[str, Any]) -> None:
    """Keep the emulator's latest view of the task (what it sent, before any fault) in
    ``last`` until the task is deleted."""
    while True:
        try:
            last.update(emulator.snapshot_of(task_id))
        except PopError:
            return
        await asyncio.sleep(0.1)


# --- speech through the emulated cloud ----------------------------------------------


async def test_captions_through_the_cloud_then_silence_ends_the_task() -> None:
    name = "welcome_en_us"
    async with (
        cloud(speech=True) as (emulator, port),
        running_relay(**relay_settings(port, interrupt_after_s=3)) as h,
    ):
        watcher = asyncio.create_task(watch_until_ended(h, name))
        translated = asyncio.create_task(watch_until_ended(h, name, "lang=cn"))
        await asyncio.sleep(0.3)
        status, created = await create(
            h,
            name,
            file_source(name),
            translate=["cn"],
            auto_terminate={"enabled": True, "delay_s": 2},
        )
        assert status == 201, created
        task_id = created["task_id"]
        assert task_id.startswith("asr-")
        assert emulator.query(task_id)[task_id]["callbackUrl"] == created["callback_url"]
        seen, seen_cn = await watcher, await translated
        _, info = await stream_info(h, name)
        await eventually_gone(emulator, task_id)  # relay deleted the ended task
        async with h.session.get(f"{h.http}/metrics") as resp:
            metrics = await resp.text()

    states = [(m["state"], m["reason"]) for m in seen if m["type"] == "state"]
    assert [s for s, _ in states] == ["starting", "running", "interrupted", "terminated"], states
    assert states[-1][1] == "auto_terminate"  # confirmed with QueryRtcAsrTasks
    finals = [m for m in seen if m["type"] == "final"]
    assert any(m["type"] == "partial" for m in seen)
    error = wer(reference(name), " ".join(f["text"] for f in finals))
    assert error <= 0.2, (error, finals)
    for final in finals:
        assert final["translations"]["cn"]  # the emulator's marked pseudo-translation
    cn_finals = [m for m in seen_cn if m["type"] == "final"]
    assert [f["text"] for f in cn_finals] == [f["translations"]["cn"] for f in finals]
    assert info["state"] == "terminated" and info["engine"] == "aliyun"
    assert info["counters"]["finals"] == len(finals)
    assert info["counters"]["callbacks"] >= len(finals)
    assert info["counters"]["rejected"] == 0
    assert 'relay_task_transitions_total{to="interrupted"} 1.0' in metrics


async def test_every_fault_injected_viewers_get_each_final_exactly_once() -> None:
    name = "numbers_en_gb"
    faults = Faults(duplicate=0.3, drop=0.2, reorder=0.3, delay_ms=150, burst=3, seed=5)
    async with (
        cloud(speech=True, faults=faults) as (emulator, port),
        running_relay(**relay_settings(port, interrupt_after_s=3)) as h,
    ):
        watcher = asyncio.create_task(watch_until_ended(h, name))
        await asyncio.sleep(0.3)
        status, created = await create(
            h,
            name,
            file_source(name),
            report_interval_ms=200,
            auto_terminate={"enabled": True, "delay_s": 1},
        )
        assert status == 201, created
        task_id = created["task_id"]
        last: dict[str, Any] = {}
        async with asyncio.TaskGroup() as group:  # relay deletes the task once it ended
            group.create_task(follow(emulator, task_id, last))
            seen = await watcher
        expected = [(s["index"], s["text"]) for s in last["run"]["sentences"]]
        delivery = last["run"]["delivery"]
        async with h.session.get(f"{h.http}/metrics") as resp:
            metrics = await resp.text()

    finals = [(m["index"], m["text"]) for m in seen if m["type"] == "final"]
    assert expected, "the emulated cloud recognized nothing"
    assert sorted(finals) == sorted(expected)  # every final, once, whatever the order
    indexes = [i for i, _ in finals]
    assert len(indexes) == len(set(indexes))
    # The faults really happened, and relay absorbed them.
    for fault in ("duplicated", "dropped", "reordered"):
        assert delivery[fault] > 0, delivery
    assert 'relay_callbacks_total{result="duplicate"}' in metrics
    seqs = [m["seq"] for m in seen if m["type"] in ("partial", "final")]
    assert seqs == sorted(set(seqs))  # in order, never twice (partials may be coalesced)


async def test_delete_stops_then_deletes_the_cloud_task() -> None:
    name = "weather_en_us_fast"
    async with (
        cloud(speech=True) as (emulator, port),
        running_relay(**relay_settings(port)) as h,
        h.viewer(name) as ws,
    ):
        status, created = await create(h, name, file_source(name), report_interval_ms=-1)
        assert status == 201, created
        task_id = created["task_id"]
        seen = [await recv_json(ws)]
        while not any(m["type"] == "final" for m in seen):
            seen.append(await recv_json(ws, timeout=30))
        async with h.session.delete(f"{h.http}/v1/streams/{name}") as resp:
            assert resp.status == 200
            stopped = await resp.json()
        while seen[-1]["type"] != "state" or seen[-1]["state"] != "terminated":
            seen.append(await recv_json(ws, timeout=10))
        await eventually_gone(emulator, task_id)
        # Viewers stay connected after the stop.
        assert ws.state.name == "OPEN"

    assert stopped["state"] == "terminated" and stopped["reason"] == "stopped"
    assert seen[-1]["reason"] == "stopped"
    assert not any(m["type"] == "partial" for m in seen)  # ReportInterval -1: sentences only


# --- the control plane, no speech needed ---------------------------------------------


async def test_wrong_credentials_are_a_clear_502_and_register_nothing() -> None:
    async with cloud(speech=False) as (_, port):
        for overrides, code in (
            ({"aliyun_access_key_secret": "not-the-secret"}, "SignatureDoesNotMatch"),
            ({"aliyun_access_key_id": "LTAIunknown"}, "InvalidAccessKeyId.NotFound"),
        ):
            async with running_relay(**relay_settings(port, **overrides)) as h:
                status, body = await create(h, "s1", RTC)
                assert status == 502, body
                assert body["error"]["code"] == code
                assert "CreateRtcAsrTask" in body["error"]["message"]
                assert "not-the-secret" not in body["error"]["message"]
                assert (await stream_info(h, "s1"))[0] == 404


async def test_cloud_refusals_and_outages_are_502() -> None:
    async with (
        cloud(speech=False) as (emulator, port),
        running_relay(**relay_settings(port)) as h,
    ):
        emulator.refuse("CreateRtcAsrTask", Refusal(code="Throttling.User", times=1))
        status, body = await create(h, "s1", RTC)
        assert (status, body["error"]["code"]) == (502, "Throttling.User")
        status, body = await create(h, "s1", RTC)  # the next call goes through
        assert status == 201, body
        status, body = await create(h, "s2", {"mode": "rtc", "sdk_app_id": "a"})
        assert (status, body["error"]["code"]) == (400, "invalid_request")
        assert "source.channel_id" in body["error"]["message"]
        async with h.session.get(f"{h.http}/metrics") as resp:
            metrics = await resp.text()
        create_calls = 'relay_cloud_calls_total{action="CreateRtcAsrTask",result='
        assert create_calls + '"Throttling.User"} 1.0' in metrics
        assert create_calls + '"ok"} 1.0' in metrics  # the invalid one never left relay
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    async with running_relay(**relay_settings(dead, aliyun_timeout_s=2)) as h:
        status, body = await create(h, "s1", RTC)
        assert (status, body["error"]["code"]) == (502, "cloud_unreachable")
    # A cloud that accepts the connection and never answers.
    held: list[asyncio.StreamWriter] = []
    mute = await asyncio.start_server(lambda _, writer: held.append(writer), "127.0.0.1", 0)
    async with mute, running_relay(**relay_settings(mute_port(mute), aliyun_timeout_s=1)) as h:
        started = time.monotonic()
        status, body = await create(h, "s1", RTC)
        assert (status, body["error"]["code"]) == (502, "cloud_timeout")
        assert time.monotonic() - started < 5
        assert (await stream_info(h, "s1"))[0] == 404
        for writer in held:
            writer.close()


async def test_a_loopback_callback_url_for_the_real_cloud_is_warned_about() -> None:
    real_cloud: dict[str, Any] = {"aliyun_access_key_id": "LTAIx", "aliyun_access_key_secret": "s"}
    with capture_logs() as logs:
        async with running_relay(**real_cloud):
            pass
        async with running_relay(**real_cloud, public_url="https://relay.example.com"):
            pass
    warned = [e for e in logs if e["event"] == "aliyun.callbacks_unreachable"]
    assert len(warned) == 1 and warned[0]["public_url"].startswith("http://127.0.0.1:")


async def test_without_credentials_the_engine_is_unavailable() -> None:
    async with running_relay() as h:
        status, body = await create(h, "s1", RTC)
        assert (status, body["error"]["code"]) == (400, "engine_unavailable")


async def test_the_client_side_rate_limit_keeps_a_burst_under_the_cloud_limit() -> None:
    # 40 streams at once: the cloud allows 20 calls/s; relay spaces its calls at 15/s.
    async with (
        cloud(speech=False) as (_, port),
        running_relay(**relay_settings(port)) as h,
    ):
        results = await asyncio.gather(*(create(h, f"s{k}", RTC) for k in range(40)))
    assert [status for status, _ in results] == [201] * 40, [b for _, b in results]


async def test_no_secret_reaches_the_logs() -> None:
    async with cloud(speech=False) as (emulator, port):
        with capture_logs() as logs:
            async with running_relay(**relay_settings(port)) as h:
                status, created = await create(h, "s1", RTC)
                assert status == 201, created
                stream = await h.relay.store.get_stream("s1")
                assert stream is not None and stream.task is not None
                auth_key = stream.task.auth_key
                emulator.inject(created["task_id"], [ResultChanged(1, 100, "hi")])
                async with h.session.delete(f"{h.http}/v1/streams/s1") as resp:
                    assert resp.status == 200
    text = repr(logs)
    assert "aliyun.call" in text and "task.state" in text  # the logs were captured
    for secret in (DEV_ACCESS_KEY_SECRET, auth_key):
        assert secret not in text


@pytest.mark.parametrize("signature", ["acs3", "v2"])
async def test_both_request_signatures(signature: str) -> None:
    async with (
        cloud(speech=False) as (emulator, port),
        running_relay(**relay_settings(port, aliyun_signature=signature)) as h,
    ):
        status, created = await create(h, "s1", RTC, language="cn")
        assert status == 201, created
        task = emulator.query(created["task_id"])[created["task_id"]]
        assert (task["mode"], task["language"], task["status"]) == ("rtc", "cn", 1)


async def test_a_quiet_task_the_cloud_still_runs_stays_interrupted_then_resumes() -> None:
    async with (
        cloud(speech=False) as (emulator, port),
        running_relay(**relay_settings(port, interrupt_after_s=1)) as h,
        h_viewer(h, "s1") as ws,
    ):
        status, created = await create(h, "s1", RTC, auto_terminate={"enabled": True, "delay_s": 1})
        assert status == 201, created
        task_id = created["task_id"]
        emulator.inject(task_id, [ResultChanged(index=1, time_ms=500, text="hello")])
        seen = await until(ws, lambda m: m["type"] == "state" and m["state"] == "interrupted")
        assert any(m["type"] == "partial" and m["text"] == "hello" for m in seen)
        await asyncio.sleep(2.5)  # past the auto-terminate delay: relay asks the cloud
        assert (await stream_info(h, "s1"))[1]["state"] == "interrupted"  # still runs there
        emulator.inject(task_id, [SentenceEnd(index=1, time_ms=900, begin_ms=0, text="Hello.")])
        seen = await until(ws, lambda m: m["type"] == "final")
        assert [m["state"] for m in seen if m["type"] == "state"] == ["running"]
        assert seen[-1]["text"] == "Hello."


async def test_shutdown_stops_cloud_tasks_by_default() -> None:
    async with cloud(speech=False) as (emulator, port):
        async with running_relay(**relay_settings(port)) as h:
            status, created = await create(h, "s1", RTC)
            assert status == 201, created
        await eventually_gone(emulator, created["task_id"])


async def test_a_refused_stop_on_shutdown_is_logged_and_relay_still_exits() -> None:
    async with cloud(speech=False) as (emulator, port):
        with capture_logs() as logs:
            async with running_relay(**relay_settings(port)) as h:
                status, created = await create(h, "s1", RTC)
                assert status == 201, created
                emulator.refuse("StopRtcAsrTask", Refusal(code="InternalError", status=500))
        task_id = created["task_id"]
        assert emulator.query(task_id)[task_id]["status"] == 1  # left running, and said so
    failed = [e for e in logs if e["event"] == "task.stop_failed"]
    assert failed and failed[0]["code"] == "InternalError" and failed[0]["stream_id"] == "s1"


async def test_shutdown_can_keep_cloud_tasks_for_the_next_start() -> None:
    store = MemoryStore()  # stands in for a persistent store shared across restarts
    http_port = free_port()  # the callback URL registered with the cloud must stay valid
    async with cloud(speech=False) as (emulator, port):
        settings = relay_settings(port, aliyun_on_shutdown="keep", http_port=http_port)
        async with running_relay(store=store, **settings) as h:
            status, created = await create(h, "s1", RTC)
            assert status == 201, created
        task_id = created["task_id"]
        assert emulator.query(task_id)[task_id]["status"] == 1  # kept running
        async with running_relay(store=store, **settings) as h, h_viewer(h, "s1") as ws:
            emulator.inject(task_id, [SentenceEnd(index=1, time_ms=900, begin_ms=0, text="Back.")])
            seen = await until(ws, lambda m: m["type"] == "final")
            assert seen[-1]["text"] == "Back."  # the callback reached the new instance
            async with h.session.delete(f"{h.http}/v1/streams/s1") as resp:
                assert resp.status == 200
            await eventually_gone(emulator, task_id)


async def test_a_callback_that_beats_the_create_answer_is_told_to_retry() -> None:
    class EagerCloud(AliyunEngine):
        """Calls back before CreateRtcAsrTask has answered, as a fast cloud may."""

        def __init__(self, api: LiveApi) -> None:
            super().__init__(api)
            self.statuses: list[int] = []

        async def start(self, spec: TaskSpec, sink: TaskSink) -> str:
            sig_time = str(int(time.time()))
            headers = {
                "SIG-TIME": sig_time,
                "ASR-SIG": signature.sign(sig_time, spec.callback_url, spec.auth_key),
            }
            async with (
                aiohttp.ClientSession() as session,
                session.post(spec.callback_url, data=b"{}", headers=headers) as resp,
            ):
                self.statuses.append(resp.status)
            return await super().start(spec, sink)

    async with (
        cloud(speech=False) as (_, port),
        running_relay(**relay_settings(port)) as h,
    ):
        assert h.relay.aliyun is not None
        eager = EagerCloud(h.relay.aliyun.api)
        h.relay.service.engines["aliyun"] = eager
        status, created = await create(h, "s1", RTC)
        assert status == 201, created
    assert eager.statuses == [503]  # the sender retries; a 404 would have lost it


# --- helpers -------------------------------------------------------------------------


def mute_port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def h_viewer(h: Harness, stream_id: str) -> AsyncIterator[Any]:
    async with h.viewer(stream_id) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello"
        yield ws


async def until(ws: Any, predicate: Any, timeout: float = 15) -> list[Any]:
    seen: list[Any] = []
    async with asyncio.timeout(timeout):
        while True:
            seen.append(await recv_json(ws, timeout=timeout))
            if predicate(seen[-1]):
                return seen
