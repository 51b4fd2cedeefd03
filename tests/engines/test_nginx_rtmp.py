"""Broadcaster integration: a real nginx-rtmp calls relay's hooks (SPEC §3.1, examples/).

nginx runs from examples/nginx-rtmp.conf with only its ports changed; ffmpeg publishes a
shared speech file over RTMP; a viewer must get captions, and unpublishing must end the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from relay.engines.local.source import default_ffmpeg
from tests.audio import reference, wav
from tests.engines.cloud import cloud, relay_settings
from tests.support import recv_json, running_relay
from tests.test_cli import free_port
from tests.wer import wer

EXAMPLE = Path(__file__).parents[2] / "examples" / "nginx-rtmp.conf"


@contextlib.asynccontextmanager
async def nginx(tmp: Path, rtmp_port: int, relay_http: str) -> AsyncIterator[None]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(binary).exists(), (
        "nginx is missing: scripts/test installs nginx + libnginx-mod-rtmp"
    )
    conf = EXAMPLE.read_text()
    assert "listen 1935;" in conf and "http://127.0.0.1:8780" in conf
    conf = conf.replace("listen 1935;", f"listen 127.0.0.1:{rtmp_port};")
    conf = conf.replace("http://127.0.0.1:8780", relay_http)
    (tmp / "nginx.conf").write_text(conf)
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-p",
        str(tmp),
        "-c",
        str(tmp / "nginx.conf"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(10):
            while True:  # wait until it listens
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", rtmp_port)
                    writer.close()
                    break
                except OSError:
                    assert proc.returncode is None, "nginx exited at start"
                    await asyncio.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_publish_gives_captions_and_unpublish_ends_the_task(tmp_path: Path) -> None:
    rtmp_port = free_port()
    async with (
        running_relay(rtmp_url=f"rtmp://127.0.0.1:{rtmp_port}") as h,
        nginx(tmp_path, rtmp_port, h.http),
        h.viewer("onair") as ws,
    ):
        seen = await broadcast(ws, rtmp_port)
    check_broadcast(seen)


async def test_the_hooks_with_the_aliyun_engine(tmp_path: Path) -> None:
    """RELAY_DEFAULT_ENGINE=aliyun: the (emulated) cloud pulls the stream from nginx-rtmp."""
    rtmp_port = free_port()
    async with (
        cloud(speech=True) as (_, port),
        running_relay(
            **relay_settings(port, default_engine="aliyun"),
            rtmp_url=f"rtmp://127.0.0.1:{rtmp_port}",
        ) as h,
        nginx(tmp_path, rtmp_port, h.http),
        h.viewer("onair") as ws,
    ):
        seen = await broadcast(ws, rtmp_port)
        async with h.session.get(f"{h.http}/v1/streams/onair") as resp:
            info = await resp.json()
    assert info["engine"] == "aliyun" and info["task_id"].startswith("asr-")
    assert info["counters"]["callbacks"] > 0  # the captions came as signed callbacks
    check_broadcast(seen)


async def broadcast(ws: Any, rtmp_port: int) -> list[dict[str, Any]]:
    """Publish a shared speech file over RTMP at 1x; return what the viewer saw until the
    task ended (nginx's on_publish_done stops it)."""
    assert (await recv_json(ws))["state"] == "idle"
    publisher = await asyncio.create_subprocess_exec(
        default_ffmpeg(),
        "-nostdin",
        "-loglevel",
        "error",
        "-re",
        "-i",
        str(wav("welcome_en_us")),
        "-c:a",
        "aac",
        "-ar",
        "44100",
        "-f",
        "flv",
        f"rtmp://127.0.0.1:{rtmp_port}/live/onair",
    )
    seen = []
    async with asyncio.timeout(60):
        while True:
            message = await recv_json(ws, timeout=60)
            seen.append(message)
            if message.get("state") in ("terminated", "failed"):
                break
    assert await publisher.wait() == 0
    return seen


def check_broadcast(seen: list[dict[str, Any]]) -> None:
    states = [(m["state"], m["reason"]) for m in seen if m["type"] == "state"]
    assert states[0] == ("starting", "") and states[-1] == ("terminated", "stopped"), states
    finals = " ".join(m["text"] for m in seen if m["type"] == "final")
    assert wer(reference("welcome_en_us"), finals) <= 0.3, finals
