"""The emulator through the official SDK over real loopback sockets (contract §2-§7)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest
from alibabacloud_live20161101 import models as live_models
from alibabacloud_tea_openapi import exceptions as sdk_errors

from relay.core.events import (
    ResultChanged,
    SentenceEnd,
    TaskFailed,
    TranscriptionCompleted,
    TranscriptionStarted,
)
from relay.core.signature import Verdict
from relay.engines.local.recognizer import Recognizer
from tests.audio import wav
from tests.emulators.support import (
    AK_ID,
    AK_SECRET,
    AUTH_KEY,
    Receiver,
    emulator,
    receiver,
    recognizer,
    sdk,
)

__all__ = ["recognizer"]  # the shared-model fixture


def rtc_request(url: str, **extra: Any) -> Any:
    return live_models.CreateRtcAsrTaskRequest(
        mode="rtc",
        sdkapp_id="app1",
        channel_id="ch1",
        rtc_user_id="u1",
        language="en",
        callback_url=url,
        auth_key=AUTH_KEY,
        **extra,
    )


async def query(client: Any, task_id: str | None = None) -> dict[str, Any]:
    resp = await client.query_rtc_asr_tasks_async(
        live_models.QueryRtcAsrTasksRequest(task_id=task_id)
    )
    assert resp.status_code == 200 and resp.body.ret_code == 2000
    tasks = resp.body.tasks
    assert isinstance(tasks, dict)
    return tasks


async def wait_status(client: Any, task_id: str, status: int, timeout: float) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            shown: dict[str, Any] = (await query(client, task_id))[task_id]
            if shown["status"] == status:
                return shown
            await asyncio.sleep(0.25)


@pytest.mark.parametrize("v2", [False, True], ids=["acs3", "v2"])
async def test_the_four_actions_and_their_shapes(v2: bool) -> None:
    async with emulator() as (_emu, port), receiver() as recv:
        client = sdk(port, v2=v2)
        created = await client.create_rtc_asr_task_async(rtc_request(recv.url))
        body = created.body
        assert (created.status_code, body.ret_code, body.description) == (200, 2000, "success")
        assert body.task_id.startswith("asr-") and body.request_id
        other = (await client.create_rtc_asr_task_async(rtc_request(recv.url))).body.task_id
        assert set(await query(client)) == {body.task_id, other}  # all running tasks
        shown = (await query(client, body.task_id))[body.task_id]
        assert shown["status"] == 1 and shown["mode"] == "rtc" and shown["taskId"] == body.task_id
        assert shown["createdAt"].endswith("+08:00") and shown["reportInterval"] == "0"

        stopped = await client.stop_rtc_asr_task_async(
            live_models.StopRtcAsrTaskRequest(task_id=body.task_id)
        )
        assert (stopped.body.ret_code, stopped.body.description) == (2000, "success")
        assert (await query(client, body.task_id))[body.task_id]["status"] == 2
        assert set(await query(client)) == {other}  # a stopped task is not listed
        await recv.wait_for(lambda r: "TranscriptionCompleted" in r.names(), timeout=5)
        assert recv.got[0].verdict is Verdict.OK and recv.got[0].callback.task_id == body.task_id

        deleted = await client.delete_rtc_asr_task_async(
            live_models.DeleteRtcAsrTaskRequest(task_id=body.task_id)
        )
        assert deleted.body.ret_code == 2000
        for call in (
            client.query_rtc_asr_tasks_async(live_models.QueryRtcAsrTasksRequest(task_id="asr-x")),
            client.stop_rtc_asr_task_async(live_models.StopRtcAsrTaskRequest(task_id=body.task_id)),
            client.delete_rtc_asr_task_async(
                live_models.DeleteRtcAsrTaskRequest(task_id=body.task_id)
            ),
        ):
            with pytest.raises(sdk_errors.ClientException) as info:
                await call
            assert (info.value.code, info.value.status_code) == ("ConfigNotFound", 400)
        # deleting a running task stops it first: it completes
        await client.delete_rtc_asr_task_async(live_models.DeleteRtcAsrTaskRequest(task_id=other))
        await recv.wait_for(lambda r: r.names().count("TranscriptionCompleted") == 2, timeout=5)
        assert await query(client) == {}


async def test_refusals_carry_the_documented_codes() -> None:
    async with emulator() as (emu, port), receiver() as recv:
        for client, code, status in (
            (sdk(port, secret="wrong"), "SignatureDoesNotMatch", 400),
            (sdk(port, secret="wrong", v2=True), "SignatureDoesNotMatch", 400),
            (sdk(port, ak="LTAIunknown"), "InvalidAccessKeyId.NotFound", 404),
        ):
            with pytest.raises(sdk_errors.ClientException) as info:
                await query(client)
            assert (info.value.code, info.value.status_code) == (code, status)
        client = sdk(port)
        with pytest.raises(sdk_errors.ClientException) as info:
            await client.create_rtc_asr_task_async(
                live_models.CreateRtcAsrTaskRequest(
                    mode="live", language="en", callback_url=recv.url
                )
            )
        assert info.value.code == "MissingParameter" and "StreamURL" in info.value.message
        with pytest.raises(sdk_errors.ClientException) as info:
            await client.create_rtc_asr_task_async(rtc_request(recv.url, report_interval=900))
        assert info.value.code == "InvalidParameter" and "ReportInterval" in info.value.message
        assert emu.table.all() == []


async def test_past_20_calls_a_second_the_sdk_raises_throttling() -> None:
    async with emulator() as (_emu, port):
        client = sdk(port)
        results = await asyncio.gather(*(query(client) for _ in range(30)), return_exceptions=True)
        throttled = [r for r in results if isinstance(r, sdk_errors.ThrottlingException)]
        assert throttled and len(results) - len(throttled) <= 21
        assert throttled[0].code == "Throttling.User" and throttled[0].status_code == 400


async def test_refusals_set_at_run_time_through_the_admin_endpoint() -> None:
    async with emulator() as (_emu, port), receiver() as recv, aiohttp.ClientSession() as http:
        admin = f"http://127.0.0.1:{port}/_emulator/faults"
        refuse = {
            "CreateRtcAsrTask": {"code": "Throttling.User", "status": 400, "times": 1},
            "QueryRtcAsrTasks": {"code": "InternalError", "status": 500, "times": 1},
        }
        async with http.post(admin, json={"refuse": refuse}, timeout=_T) as resp:
            assert resp.status == 200 and (await resp.json())["refuse"]["CreateRtcAsrTask"]
        client = sdk(port)
        with pytest.raises(sdk_errors.ThrottlingException):
            await client.create_rtc_asr_task_async(rtc_request(recv.url))
        with pytest.raises(sdk_errors.ServerException) as info:
            await query(client)
        assert info.value.code == "InternalError"
        await client.create_rtc_asr_task_async(rtc_request(recv.url))  # times: 1, used up
        assert len(await query(client)) == 1
        async with http.post(admin, json={"duplicate": 3}, timeout=_T) as resp:
            assert resp.status == 400
        async with http.get(f"http://127.0.0.1:{port}/_emulator/tasks", timeout=_T) as resp:
            tasks = (await resp.json())["tasks"]
        assert len(tasks) == 1 and tasks[0]["signed"] is True and AUTH_KEY not in json.dumps(tasks)


_T = aiohttp.ClientTimeout(total=10)
SCRIPT = [
    {"name": "SentenceBegin", "payload": {"index": 0, "time": 0}},
    *(
        {
            "name": "TranscriptionResultChanged",
            "payload": {"index": 0, "time": 100 * i, "result": f"w{i}"},
        }
        for i in range(1, 6)
    ),
    {"name": "SentenceEnd", "payload": {"index": 0, "time": 600, "begin_time": 0, "result": "ok"}},
    {"name": "SentenceBegin", "payload": {"index": 1, "time": 700}},
]


async def scripted_run(port: int, recv: Receiver, faults: dict[str, Any]) -> list[str]:
    """An rtc task (no audio), scripted events, then Stop; return the message ids received."""
    async with aiohttp.ClientSession(timeout=_T) as http:
        async with http.post(f"http://127.0.0.1:{port}/_emulator/faults", json=faults) as resp:
            assert resp.status == 200
        client = sdk(port)
        task_id = (await client.create_rtc_asr_task_async(rtc_request(recv.url))).body.task_id
        url = f"http://127.0.0.1:{port}/_emulator/tasks/{task_id}/events"
        async with http.post(url, json={"events": SCRIPT}) as resp:
            assert resp.status == 200, await resp.text()
        await asyncio.sleep(0.3)
        await client.stop_rtc_asr_task_async(live_models.StopRtcAsrTaskRequest(task_id=task_id))
    await recv.wait_for(lambda r: "TranscriptionCompleted" in r.names(), timeout=10)
    await asyncio.sleep(0.3)  # a duplicate of the last one may still come
    assert recv.names()[-1] == "TranscriptionCompleted"  # a duplicate of it, at worst
    assert all(r.verdict is Verdict.OK for r in recv.got)
    return [r.callback.message_id or "" for r in recv.got]


FAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "duplicate": {"duplicate": 1.0},
    "drop": {"drop": 1.0},
    "reorder": {"reorder": 1.0},
    "delay": {"delay_ms": 300},
    "burst": {"burst": 4},
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_each_fault_is_seen_at_the_receiver(fault: str) -> None:
    settings: dict[str, Any] = FAULTS[fault]
    async with emulator() as (emu, port), receiver(delay_s=0.05) as recv:
        started = time.time()
        ids = await scripted_run(port, recv, {**settings, "seed": 1})
        stats = emu.snapshot()[0]["run"]["delivery"]
    expected = len(SCRIPT) + 1  # and TranscriptionCompleted
    if fault != "duplicate":
        assert len(ids) == len(set(ids))  # nothing delivered twice
    assert len(set(ids)) == expected  # nothing lost
    if fault in ("none", "drop", "delay"):
        assert ids == sorted(ids)  # the last 8 hex digits count callbacks: order kept
    if fault == "duplicate":
        assert len(ids) == 2 * expected and stats["duplicated"] == expected
    elif fault == "drop":
        assert stats["dropped"] == expected and stats["delivered"] == expected
    elif fault == "reorder":
        assert ids != sorted(ids) and ids[-1] == max(ids)  # the terminal is still last
    elif fault == "delay":
        lag = [r.at * 1000 - json.loads(r.body)["callback_time_stamp"] for r in recv.got]
        assert min(lag) >= 290
    elif fault == "burst":
        assert recv.max_in_flight >= 2
    if fault == "none":
        assert recv.max_in_flight == 1 and time.time() - started < 5


async def test_5xx_answers_are_retried_with_a_fresh_signature() -> None:
    async with emulator() as (emu, port), receiver(fail_first=2) as recv:
        ids = await scripted_run(port, recv, {})
        stats = emu.snapshot()[0]["run"]["delivery"]
    assert len(ids) == len(SCRIPT) + 1 and stats["retried"] == 2


async def test_an_unreadable_source_fails_the_task_with_a_callback() -> None:
    async with emulator() as (_emu, port), receiver() as recv:
        client = sdk(port)
        task_id = (
            await client.create_rtc_asr_task_async(
                live_models.CreateRtcAsrTaskRequest(
                    mode="live",
                    stream_url="file:///nonexistent/audio.wav",
                    language="en",
                    callback_url=recv.url,
                    auth_key=AUTH_KEY,
                )
            )
        ).body.task_id
        await recv.wait_for(lambda r: bool(r.got), timeout=5)
        event = recv.got[0].callback.event
        assert isinstance(event, TaskFailed) and event.status == 41050001
        assert "no such file" in event.reason
        assert (await query(client, task_id))[task_id]["status"] == 2


async def test_without_an_auth_key_callbacks_are_unsigned() -> None:
    async with emulator() as (_emu, port), receiver() as recv:
        client = sdk(port)
        request = rtc_request(recv.url)
        request.auth_key = None
        task_id = (await client.create_rtc_asr_task_async(request)).body.task_id
        await client.stop_rtc_asr_task_async(live_models.StopRtcAsrTaskRequest(task_id=task_id))
        await recv.wait_for(lambda r: bool(r.got), timeout=5)
        assert recv.got[0].verdict is Verdict.MISSING
        assert "SIG-TIME" not in recv.got[0].headers and "ASR-SIG" not in recv.got[0].headers


# --- real audio through the local engine (the model runs: keep these few) -------------


async def test_a_live_file_with_partials_translation_and_auto_terminate(
    recognizer: Recognizer,
) -> None:
    async with emulator(recognizer=recognizer, preload=True) as (_emu, port), receiver() as recv:
        client = sdk(port)
        task_id = (
            await client.create_rtc_asr_task_async(
                live_models.CreateRtcAsrTaskRequest(
                    mode="live",
                    stream_url=wav("welcome_en_us").as_uri(),
                    language="en",
                    callback_url=recv.url,
                    auth_key=AUTH_KEY,
                    translate_enabled=True,
                    target_languages="cn",
                    auto_terminate_enabled=True,
                    auto_terminate_delay=1,
                )
            )
        ).body.task_id
        assert task_id in await query(client)
        shown = await wait_status(client, task_id, 2, timeout=40)
        assert task_id not in await query(client)
        await asyncio.sleep(0.5)
    assert shown["autoTerminateDelay"] == "1"
    assert all(r.verdict is Verdict.OK for r in recv.got)
    events = [r.callback.event for r in recv.got]
    assert isinstance(events[0], TranscriptionStarted)
    assert any(isinstance(e, ResultChanged) for e in events)
    finals = [e for e in events if isinstance(e, SentenceEnd)]
    text = " ".join(f.text for f in finals).lower()
    assert "evening" in text and "caption" in text and "questions" in text
    assert all(f.translations == {"cn": f"[cn] {f.text}"} for f in finals)
    assert not any(isinstance(e, TranscriptionCompleted | TaskFailed) for e in events)  # silent


async def test_sentences_only_and_stop_delivers_completed_last(recognizer: Recognizer) -> None:
    async with emulator(recognizer=recognizer, preload=True) as (_emu, port), receiver() as recv:
        client = sdk(port, v2=True)
        task_id = (
            await client.create_rtc_asr_task_async(
                live_models.CreateRtcAsrTaskRequest(
                    mode="live",
                    stream_url=wav("numbers_en_gb").as_uri(),
                    language="en",
                    callback_url=recv.url,
                    auth_key=AUTH_KEY,
                    report_interval=-1,
                )
            )
        ).body.task_id
        await recv.wait_for(lambda r: "SentenceEnd" in r.names(), timeout=30)
        await client.stop_rtc_asr_task_async(live_models.StopRtcAsrTaskRequest(task_id=task_id))
        assert (await query(client, task_id))[task_id]["status"] == 2
        await recv.wait_for(lambda r: "TranscriptionCompleted" in r.names(), timeout=10)
    names = recv.names()
    assert names[0] == "TranscriptionStarted" and names[-1] == "TranscriptionCompleted"
    assert set(names[1:-1]) == {"SentenceEnd"}, names  # -1: no partials, no SentenceBegin
    assert all(r.verdict is Verdict.OK for r in recv.got)


# --- the command line -----------------------------------------------------------------


def test_relay_emulate_aliyun_live_serves_until_sigterm() -> None:
    env = {
        **os.environ,
        "RELAY_ALIYUN_ACCESS_KEY_ID": AK_ID,
        "RELAY_ALIYUN_ACCESS_KEY_SECRET": AK_SECRET,
    }
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay",
            "emulate",
            "aliyun-live",
            "--port",
            "0",
            "--fault",
            "duplicate=0.5",
            "--seed",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "listening on http://127.0.0.1:" in line, line
            port = int(line.rsplit(":", 1)[1])
            assert asyncio.run(query(sdk(port))) == {}
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=15)
            assert proc.returncode == 0, err
            assert AK_SECRET not in out + err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=5)


@pytest.mark.parametrize("target", ["aliyun-ice", "tencent-ci"])
def test_later_emulators_say_not_built_yet(target: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "emulate", target],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "not built yet" in result.stderr
