"""The store contract, run against every implementation (memory now; Redis joins here)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable

import pytest

from relay.core.events import Final, Partial, Published, StateChanged, TaskState
from relay.errors import StreamBusy
from relay.store.base import Store, TaskRecord
from relay.store.memory import MemoryStore

FACTORIES: dict[str, Callable[[], Store]] = {
    "memory": lambda: MemoryStore(caption_log_max=1000),
}


@pytest.fixture(params=sorted(FACTORIES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    impl = FACTORIES[request.param]()
    await impl.start()
    try:
        yield impl
    finally:
        await impl.close()


def task(stream_id: str = "s", task_id: str = "t1", **kw: object) -> TaskRecord:
    base = TaskRecord(
        task_id=task_id,
        stream_id=stream_id,
        engine="aliyun",
        callback_token=f"tok-{task_id}",
        callback_url=f"http://x/cb/tok-{task_id}",
        auth_key="k",
        state=TaskState.STARTING,
        started_at=1.0,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def final(index: int, text: str = "x") -> Final:
    return Final(index=index, text=text, start_ms=0, end_ms=1)


def partial(index: int, text: str = "p") -> Partial:
    return Partial(index=index, text=text, stable="", start_ms=0, end_ms=1)


async def test_registry_by_stream_and_token(store: Store) -> None:
    await store.register_task(task())
    got = await store.get_stream("s")
    assert got is not None and got.task == task() and got.seq == 0
    assert await store.task_by_token("tok-t1") == task()
    assert await store.task_by_token("nope") is None
    assert await store.get_stream("other") is None
    assert [s.stream_id for s in await store.list_streams()] == ["s"]


async def test_one_live_task_per_stream(store: Store) -> None:
    await store.register_task(task())
    with pytest.raises(StreamBusy):
        await store.register_task(task(task_id="t2"))
    await store.update_task(task(state=TaskState.TERMINATED))
    await store.register_task(task(task_id="t2"))
    got = await store.get_stream("s")
    assert got is not None and got.task is not None and got.task.task_id == "t2"
    # the old task's callback URL still resolves to the old, ended task
    old = await store.task_by_token("tok-t1")
    assert old is not None and old.state is TaskState.TERMINATED


async def test_publish_numbers_partials_and_finals_per_stream(store: Store) -> None:
    seen: list[Published] = []
    store.add_listener(seen.append)
    a = await store.publish("a", partial(0))
    b = await store.publish("b", final(0))
    c = await store.publish("a", final(0))
    s = await store.publish("a", StateChanged(TaskState.RUNNING))
    assert [(p.stream_id, p.seq) for p in (a, b, c, s)] == [("a", 1), ("b", 1), ("a", 2), ("a", 2)]
    assert seen == [a, b, c, s]


async def test_replay_returns_finals_after_since_and_the_current_partial(store: Store) -> None:
    for i in range(5):
        await store.publish("s", final(i))
    p = await store.publish("s", partial(5))
    replay = await store.replay("s", 3)
    assert [f.seq for f in replay.finals] == [4, 5]
    assert replay.partial == p and replay.seq == 6
    assert (await store.replay("s", None)).finals == []
    assert [f.seq for f in (await store.replay("s", 0)).finals] == [1, 2, 3, 4, 5]


async def test_a_final_retires_the_partial_of_its_sentence(store: Store) -> None:
    await store.publish("s", partial(0))
    await store.publish("s", final(0))
    assert (await store.replay("s", 0)).partial is None
    later = await store.publish("s", partial(1))
    await store.publish("s", final(0, "translation update"))
    assert (await store.replay("s", 0)).partial == later


async def test_an_ended_task_clears_the_partial(store: Store) -> None:
    await store.publish("s", partial(0))
    await store.publish("s", StateChanged(TaskState.TERMINATED, "stopped"))
    assert (await store.replay("s", 0)).partial is None


async def test_caption_log_keeps_at_least_the_last_1000(store: Store) -> None:
    for i in range(1200):
        await store.publish("s", final(i))
    finals = (await store.replay("s", 0)).finals
    assert len(finals) >= 1000
    assert finals[-1].seq == 1200
    assert [f.seq for f in finals] == list(range(1201 - len(finals), 1201))


async def test_dedupe_window(store: Store) -> None:
    assert await store.first_delivery("t", "m1", ttl_s=60)
    assert not await store.first_delivery("t", "m1", ttl_s=60)
    assert await store.first_delivery("other-task", "m1", ttl_s=60)
    assert await store.first_delivery("t", "m0", ttl_s=0.0)
    assert await store.first_delivery("t", "m0", ttl_s=60)  # the zero-ttl entry expired


async def test_counters(store: Store) -> None:
    await store.register_task(task())
    await store.count("s", "callbacks")
    await store.count("s", "finals", 3)
    got = await store.get_stream("s")
    assert got is not None
    assert dict(got.counters) == {"callbacks": 1, "partials": 0, "finals": 3, "rejected": 0}
