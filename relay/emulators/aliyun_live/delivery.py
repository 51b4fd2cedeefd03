"""Callback delivery: one sender per task, batches in order, each attempt signed afresh.

A batch (see :mod:`.faults`) is sent only once the batch before it is delivered or given up
on, so order is kept and a terminal callback always goes last; the deliveries inside one batch
go concurrently (a burst). Connection errors, timeouts and 5xx answers are retried with
exponential backoff up to ``max_attempts``; a 4xx is the receiver's verdict and is not retried.
Each attempt gets a new ``SIG-TIME`` (epoch seconds, [U]: the unit is undocumented) and
``ASR-SIG``; without an AuthKey no signature headers are sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import structlog

from relay.core import signature
from relay.emulators.aliyun_live.faults import Batch, Delivery

log = structlog.get_logger("relay.emulators.aliyun_live")


@dataclass(frozen=True, slots=True)
class Outgoing:
    body: bytes
    message_id: str
    name: str  # the NLS event name, for logs


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    timeout_s: float = 5.0  # per attempt
    max_attempts: int = 6
    retry_base_s: float = 0.2  # first retry delay (also the wait after a dropped attempt)
    retry_max_s: float = 5.0


@dataclass(slots=True)
class DeliveryStats:
    attempts: int = 0
    delivered: int = 0  # 2xx answers (a duplicate counts twice)
    retried: int = 0
    dropped: int = 0  # attempts lost on purpose (fault "drop")
    duplicated: int = 0
    rejected: int = 0  # 4xx: not retried
    given_up: int = 0

    def as_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class CallbackSender:
    session: aiohttp.ClientSession
    callback_url: str
    auth_key: str = field(repr=False)
    config: DeliveryConfig = field(default_factory=DeliveryConfig)
    clock: Callable[[], float] = time.time
    stats: DeliveryStats = field(default_factory=DeliveryStats)
    _queue: asyncio.Queue[tuple[float, Batch[Outgoing]] | None] = field(
        default_factory=asyncio.Queue
    )

    def put(self, batch: Batch[Outgoing], not_before: float) -> None:
        """Queue a batch, to be sent no earlier than ``not_before`` (wall time)."""
        self._queue.put_nowait((not_before, batch))

    def close(self) -> None:
        """No more batches: :meth:`run` returns once the queued ones are sent."""
        self._queue.put_nowait(None)

    async def run(self) -> None:
        while (item := await self._queue.get()) is not None:
            not_before, batch = item
            wait = not_before - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            async with asyncio.TaskGroup() as group:
                for delivery in batch:
                    group.create_task(self._deliver(delivery))

    async def _deliver(self, delivery: Delivery[Outgoing]) -> None:
        out = delivery.item
        if delivery.lose_first:
            self.stats.dropped += 1
            log.info("callback.dropped", message_id=out.message_id, name=out.name)
            await asyncio.sleep(self.config.retry_base_s)
        for copy in range(delivery.copies):
            if copy:
                self.stats.duplicated += 1
            await self._send(out)

    async def _send(self, out: Outgoing) -> None:
        config = self.config
        delay = config.retry_base_s
        for attempt in range(1, config.max_attempts + 1):
            self.stats.attempts += 1
            try:
                status = await self._post(out.body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                reason = f"HTTP {status}"
                if 200 <= status < 300:
                    self.stats.delivered += 1
                    log.debug("callback.delivered", message_id=out.message_id, name=out.name)
                    return
                if 300 <= status < 500:
                    self.stats.rejected += 1
                    log.warning("callback.rejected", message_id=out.message_id, status=status)
                    return
            if attempt == config.max_attempts:
                break
            self.stats.retried += 1
            log.info("callback.retry", message_id=out.message_id, reason=reason, in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, config.retry_max_s)
        self.stats.given_up += 1
        log.error("callback.given_up", message_id=out.message_id, name=out.name, reason=reason)

    async def _post(self, body: bytes) -> int:
        sig_time = str(int(self.clock()))
        headers = {"Content-Type": "application/json"}
        if self.auth_key:
            headers["SIG-TIME"] = sig_time
            headers["ASR-SIG"] = signature.sign(sig_time, self.callback_url, self.auth_key)
        async with (
            asyncio.timeout(self.config.timeout_s),
            self.session.post(
                self.callback_url, data=body, headers=headers, allow_redirects=False
            ) as resp,
        ):
            await resp.read()
            return resp.status
