"""Control API over real HTTP (SPEC §3.1): validation, conflicts, auth, listing, stopping."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest

from tests.support import Harness, running_relay

ATTACH = {"stream_id": "main", "engine": "aliyun", "task_id": "asr-1", "auth_key": "k"}


async def post(h: Harness, body: Any, **kw: Any) -> tuple[int, Any]:
    async with h.session.post(f"{h.http}/v1/streams", json=body, **kw) as resp:
        return resp.status, await resp.json()


async def test_attach_returns_the_urls_and_registers_the_stream(harness: Harness) -> None:
    status, created = await post(harness, ATTACH)
    assert status == 201
    assert created["stream_id"] == "main" and created["task_id"] == "asr-1"
    assert created["state"] == "starting"
    assert created["callback_url"].startswith(f"{harness.http}/v1/callbacks/aliyun/")
    token = created["callback_url"].rsplit("/", 1)[1]
    assert len(token) >= 40  # unguessable
    assert created["viewer_url"] == f"{harness.ws}/v1/captions/main"
    assert created["overlay_url"] == f"{harness.http}/overlay/main"
    async with harness.session.get(f"{harness.http}/v1/streams") as resp:
        listing = await resp.json()
    assert [s["stream_id"] for s in listing["streams"]] == ["main"]
    assert listing["streams"][0]["engine"] == "aliyun"


async def test_each_task_gets_its_own_callback_url(harness: Harness) -> None:
    _, a = await post(harness, ATTACH)
    _, b = await post(harness, {**ATTACH, "stream_id": "other", "task_id": "asr-2"})
    assert a["callback_url"] != b["callback_url"]


async def test_a_captioned_stream_is_409_until_its_task_ends(harness: Harness) -> None:
    assert (await post(harness, ATTACH))[0] == 201
    status, body = await post(harness, {**ATTACH, "task_id": "asr-again"})
    assert (status, body["error"]["code"]) == (409, "stream_busy")
    async with harness.session.delete(f"{harness.http}/v1/streams/main") as resp:
        assert resp.status == 200
    assert (await post(harness, {**ATTACH, "task_id": "asr-again"}))[0] == 201


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({**ATTACH, "stream_id": ""}, "stream_id"),
        ({**ATTACH, "stream_id": "has space"}, "stream_id"),
        ({**ATTACH, "engine": "martian"}, "engine"),
        ({**ATTACH, "report_interval_ms": 501}, "report_interval_ms"),
        ({**ATTACH, "auto_terminate": {"enabled": True, "delay_s": 11}}, "auto_terminate.delay_s"),
        ({**ATTACH, "unexpected": 1}, "unexpected"),
        ({**ATTACH, "engine": "local"}, "needs engine 'aliyun'"),
        ({"stream_id": "x", "engine": "aliyun"}, "source is required"),
        ([1, 2], "body"),
    ],
)
async def test_invalid_requests_get_a_field_level_400(
    harness: Harness, body: Any, where: str
) -> None:
    status, payload = await post(harness, body)
    assert status == 400
    assert payload["error"]["code"] == "invalid_request"
    assert where in payload["error"]["message"]


async def test_not_json_is_400(harness: Harness) -> None:
    async with harness.session.post(f"{harness.http}/v1/streams", data=b"{nope") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_json"


async def test_attach_without_any_auth_key_is_refused(harness: Harness) -> None:
    body = {k: v for k, v in ATTACH.items() if k != "auth_key"}
    status, payload = await post(harness, body)
    assert status == 400 and "auth_key" in payload["error"]["message"]


async def test_attach_defaults_auth_key_from_settings() -> None:
    async with running_relay(aliyun_auth_key="from-settings") as h:
        body = {k: v for k, v in ATTACH.items() if k != "auth_key"}
        assert (await post(h, body))[0] == 201
        assert h.relay.store is not None
        rec = await h.relay.store.get_stream("main")
        assert rec is not None and rec.task is not None and rec.task.auth_key == "from-settings"


async def test_creating_on_an_engine_not_available_is_a_clear_400(harness: Harness) -> None:
    body = {
        "stream_id": "cloud",
        "engine": "aliyun",
        "source": {"mode": "live", "url": "rtmp://x/y"},
    }
    status, payload = await post(harness, body)
    assert (status, payload["error"]["code"]) == (400, "engine_unavailable")


async def test_unknown_stream_is_404_and_unknown_route_is_json_404(harness: Harness) -> None:
    for method, path in (
        ("GET", "/v1/streams/none"),
        ("DELETE", "/v1/streams/none"),
        ("GET", "/nope"),
    ):
        async with harness.session.request(method, f"{harness.http}{path}") as resp:
            assert resp.status == 404
            assert "code" in (await resp.json())["error"]
    async with harness.session.put(f"{harness.http}/v1/streams") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_control_token_is_required_when_set() -> None:
    async with running_relay(control_token="t0ken") as h:
        assert (await post(h, ATTACH))[0] == 401
        status, body = await post(h, ATTACH, headers={"Authorization": "Bearer wrong"})
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        assert (await post(h, ATTACH, headers={"Authorization": "Bearer t0ken"}))[0] == 201
        async with h.session.get(f"{h.http}/healthz") as resp:  # not part of the control API
            assert resp.status == 200


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent; this only picks a route
        except OSError:
            return None
        address: str = s.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_without_a_token_only_loopback_clients_may_control() -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    async with running_relay(http_host="0.0.0.0") as h:
        port = h.http.rsplit(":", 1)[1]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{address}:{port}/v1/streams") as resp:
                assert resp.status == 403
                assert (await resp.json())["error"]["code"] == "forbidden"
            async with session.get(f"http://127.0.0.1:{port}/v1/streams") as resp:
                assert resp.status == 200
            async with session.get(f"http://{address}:{port}/healthz") as resp:
                assert resp.status == 200


async def test_health_ready_and_metrics() -> None:
    async with running_relay(local_preload=True) as h:
        async with h.session.get(f"{h.http}/healthz") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        async with asyncio.timeout(60):  # ready once the speech model has loaded
            while True:
                async with h.session.get(f"{h.http}/readyz") as resp:
                    body = await resp.json()
                    if resp.status == 200:
                        break
                    assert (resp.status, list(body["checks"])) == (503, ["local_engine"])
                await asyncio.sleep(0.1)
        assert body == {"status": "ok"}
        async with h.session.get(f"{h.http}/metrics") as resp:
            text = await resp.text()
    # Without preloading (a cloud-only deployment, say) nothing is waited for.
    async with running_relay(local_preload=False) as h, h.session.get(f"{h.http}/readyz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    assert "relay_viewers 0.0" in text
    assert "# TYPE relay_callbacks_total counter" in text
    assert 'relay_tasks{state="running"} 0.0' in text
