"""The emulator's pure cores: task table, validation, rate limit, ReportInterval, faults, bodies."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.callback import parse_callback
from relay.core.events import (
    RecognizerEvent,
    ResultChanged,
    SentenceBegin,
    SentenceEnd,
    TaskFailed,
    TranscriptionCompleted,
    TranscriptionStarted,
    Translated,
    Word,
)
from relay.emulators.aliyun_live import nls
from relay.emulators.aliyun_live.faults import FaultPlan, Faults
from relay.emulators.aliyun_live.ratelimit import KeyedRateLimiter
from relay.emulators.aliyun_live.report import ReportPolicy
from relay.emulators.aliyun_live.tasks import (
    TRANSITIONS,
    CreateParams,
    Op,
    Status,
    TaskTable,
    parse_create,
)
from relay.emulators.signing import PopError

LIVE = {"Mode": "live", "Language": "en", "CallbackURL": "http://h/cb", "StreamURL": "rtmp://s/a"}

# --- the task table ------------------------------------------------------------------


def _params() -> CreateParams:
    return parse_create(LIVE)


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("op", list(Op))
def test_every_state_against_every_op(status: Status, op: Op) -> None:
    table = TaskTable()
    task = table.create(_params(), now=100.0)
    if status is Status.STOPPED:
        table.apply(task.task_id, Op.STOP, now=101.0)
    before, after = table.apply(task.task_id, op, now=102.0)
    expected = TRANSITIONS[(status, op)]
    assert before.status is status
    if expected is None:
        assert after is None
        with pytest.raises(PopError) as info:
            table.get(task.task_id)
        assert (info.value.code, info.value.status) == ("ConfigNotFound", 400)
    else:
        assert after is not None and after.status is expected
        assert after.updated_at == (102.0 if expected != status else before.updated_at)


@pytest.mark.parametrize("op", list(Op))
def test_a_gone_or_unknown_task_is_config_not_found(op: Op) -> None:
    table = TaskTable()
    task = table.create(_params(), now=1.0)
    table.apply(task.task_id, Op.DELETE, now=2.0)
    for task_id in (task.task_id, "asr-nope"):
        with pytest.raises(PopError) as info:
            table.apply(task_id, op, now=3.0)
        assert info.value.code == "ConfigNotFound"
        with pytest.raises(PopError):
            table.query(task_id)


@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([*Op, "query", "create"]))))
def test_random_op_sequences_match_the_table(steps: list[tuple[int, Any]]) -> None:
    table = TaskTable()
    model: dict[str, Status] = {}
    ids: list[str] = []
    for i, (which, op) in enumerate(steps):
        if op == "create" or not ids:
            ids.append(table.create(_params(), now=float(i)).task_id)
            model[ids[-1]] = Status.RUNNING
            continue
        task_id = ids[which % len(ids)]
        try:
            if op == "query":
                shown = table.query(task_id)[task_id]
                assert shown["status"] == model[task_id]
            else:
                table.apply(task_id, op, now=float(i))
                to = TRANSITIONS[(model[task_id], op)]
                if to is None:
                    del model[task_id]
                else:
                    model[task_id] = to
        except PopError as exc:
            assert exc.code == "ConfigNotFound" and task_id not in model
        running = {t for t, s in model.items() if s is Status.RUNNING}
        assert set(table.query(None)) == running


def test_the_query_shape_is_the_documented_one() -> None:
    table = TaskTable(ali_uid="1119")
    task = table.create(parse_create({**LIVE, "AutoTerminateDelay": "5"}), now=1715658722.0)
    shown = table.query(task.task_id)[task.task_id]
    assert set(shown) == {
        "createdAt",
        "updatedAt",
        "mode",
        "taskId",
        "language",
        "callbackUrl",
        "autoTerminateDelay",
        "streamUrl",
        "status",
        "reportInterval",
        "aliUid",
        "tag",
    }
    assert shown["createdAt"] == "2024-05-14T11:52:02+08:00"
    assert shown["status"] == 1 and shown["autoTerminateDelay"] == "5"
    assert shown["reportInterval"] == "0" and shown["aliUid"] == "1119"
    assert task.task_id.startswith("asr-") and len(task.task_id) == 40


# --- validation ----------------------------------------------------------------------


def test_valid_parameters_parse() -> None:
    p = parse_create(
        {
            **LIVE,
            "TranslateEnabled": "True",
            "TargetLanguages": "cn, ja",
            "AutoTerminateEnabled": "TRUE",
            "AutoTerminateDelay": "10",
            "ReportInterval": "-1",
            "AuthKey": "k",
        }
    )
    assert p.translate_enabled and p.auto_terminate_enabled
    assert p.target_languages == ("cn", "ja") and p.report_interval_ms == -1
    rtc = parse_create(
        {
            "Mode": "rtc",
            "Language": "fspk",
            "CallbackURL": "https://h/cb",
            "SDKAppID": "app",
            "ChannelID": "ch",
            "RtcUserId": "u1",
        }
    )
    assert (rtc.sdk_app_id, rtc.channel_id, rtc.rtc_user_id) == ("app", "ch", "u1")
    assert not rtc.translate_enabled and rtc.report_interval_ms == 0


@pytest.mark.parametrize(
    ("change", "code", "name"),
    [
        ({"Mode": None}, "MissingParameter", "Mode"),
        ({"Mode": "sip"}, "InvalidParameter", "Mode"),
        ({"Language": "de"}, "InvalidParameter", "Language"),
        ({"Language": None}, "MissingParameter", "Language"),
        ({"CallbackURL": None}, "MissingParameter", "CallbackURL"),
        ({"CallbackURL": "ftp://h/cb"}, "InvalidParameter", "CallbackURL"),
        ({"StreamURL": None}, "MissingParameter", "StreamURL"),
        ({"StreamURL": "gopher://x"}, "InvalidParameter", "StreamURL"),
        ({"Mode": "rtc", "SDKAppID": "a", "ChannelID": "c"}, "MissingParameter", "RtcUserId"),
        ({"Mode": "rtc", "ChannelID": "c", "RtcUserId": "u"}, "MissingParameter", "SDKAppID"),
        ({"TargetLanguages": "cn,de"}, "InvalidParameter", "TargetLanguages"),
        ({"TranslateEnabled": "yes"}, "InvalidParameter", "TranslateEnabled"),
        ({"TranslateEnabled": "true"}, "MissingParameter", "TargetLanguages"),
        ({"AutoTerminateEnabled": "1"}, "InvalidParameter", "AutoTerminateEnabled"),
        ({"AutoTerminateDelay": "0"}, "InvalidParameter", "AutoTerminateDelay"),
        ({"AutoTerminateDelay": "11"}, "InvalidParameter", "AutoTerminateDelay"),
        ({"AutoTerminateDelay": "x"}, "InvalidParameter", "AutoTerminateDelay"),
        ({"ReportInterval": "-2"}, "InvalidParameter", "ReportInterval"),
        ({"ReportInterval": "501"}, "InvalidParameter", "ReportInterval"),
    ],
)
def test_bad_parameters_are_named(change: dict[str, str | None], code: str, name: str) -> None:
    params = {k: v for k, v in {**LIVE, **change}.items() if v is not None}
    with pytest.raises(PopError) as info:
        parse_create(params)
    assert (info.value.code, info.value.status) == (code, 400)
    assert name in info.value.message


# --- rate limit ----------------------------------------------------------------------


def test_twenty_calls_a_second_per_action_per_key() -> None:
    limiter = KeyedRateLimiter()
    key = ("ak", "CreateRtcAsrTask")
    assert all(limiter.take(key, 10.0) is None for _ in range(20))
    wait = limiter.take(key, 10.0)
    assert wait is not None and 0 < wait <= 0.05
    assert limiter.take(("ak", "QueryRtcAsrTasks"), 10.0) is None  # another action
    assert limiter.take(("ak2", "CreateRtcAsrTask"), 10.0) is None  # another key
    assert limiter.take(key, 10.05) is None  # one token back after 50 ms


@given(st.lists(st.floats(0, 0.2), min_size=1, max_size=200))
def test_the_limiter_never_passes_more_than_rate_plus_burst(gaps: list[float]) -> None:
    limiter, now, passed = KeyedRateLimiter(), 0.0, 0
    for gap in gaps:
        now += gap
        passed += limiter.take(("ak", "a"), now) is None
    assert passed <= 20 + 20 * now + 1e-9


# --- ReportInterval ------------------------------------------------------------------


def _sentences(data: st.DataObject) -> list[tuple[float, RecognizerEvent]]:
    """A well-formed recognizer stream with increasing times: begin, partials, end."""
    timeline: list[tuple[float, RecognizerEvent]] = [(0.0, TranscriptionStarted())]
    now = 0.0
    for index in range(data.draw(st.integers(0, 4))):
        now += data.draw(st.floats(0, 0.3))
        timeline.append((now, SentenceBegin(index, int(now * 1000))))
        for step in range(data.draw(st.integers(0, 8))):
            now += data.draw(st.floats(0, 0.3))
            timeline.append((now, ResultChanged(index, int(now * 1000) + step, f"p{step}")))
        if data.draw(st.booleans()) or index < 3:
            now += data.draw(st.floats(0, 0.3))
            timeline.append((now, SentenceEnd(index, int(now * 1000), 0, "final")))
    if data.draw(st.booleans()):
        timeline.append((now + 0.01, TranscriptionCompleted()))
    return timeline


def _run_policy(
    interval: int, timeline: list[tuple[float, RecognizerEvent]]
) -> list[tuple[float, RecognizerEvent]]:
    policy, out = ReportPolicy(interval), []
    for at, event in timeline:
        while (wake := policy.wake_at()) is not None and wake <= at:
            out += [(wake, e) for e in policy.due(wake)]
        out += [(at, e) for e in policy.offer(event, at)]
    while (wake := policy.wake_at()) is not None:
        out += [(wake, e) for e in policy.due(wake)]
    return out


@given(st.data(), st.sampled_from([-1, 0, 1, 50, 200, 500]))
def test_report_interval_invariants(data: st.DataObject, interval: int) -> None:
    timeline = _sentences(data)
    out = _run_policy(interval, timeline)
    sent = [e for _, e in out]
    others = [e for _, e in timeline if not isinstance(e, ResultChanged | SentenceBegin)]
    # sentences and task events: all of them, in order, whatever the interval
    assert [e for e in sent if not isinstance(e, ResultChanged | SentenceBegin)] == others
    partials = [(at, e) for at, e in out if isinstance(e, ResultChanged)]
    inputs = [e for _, e in timeline if isinstance(e, ResultChanged)]
    if interval == -1:
        assert not partials and not any(isinstance(e, SentenceBegin) for e in sent)
        return
    # partials: a subsequence of the input, in order, never after their own final
    it = iter(inputs)
    assert all(any(p == q for q in it) for _, p in partials)
    for i, event in enumerate(sent):
        if isinstance(event, SentenceEnd):
            assert not any(
                isinstance(e, ResultChanged) and e.index == event.index for e in sent[i + 1 :]
            )
    if interval == 0:
        assert sent == [e for _, e in timeline]
        return
    # Partials are spaced by the interval, except one sent just ahead of a terminal event.
    terminal_at = next(
        (at for at, e in out if isinstance(e, TranscriptionCompleted | TaskFailed)), None
    )
    times = [at for at, _ in partials if at != terminal_at]
    assert all(b - a >= interval / 1000 - 1e-9 for a, b in itertools.pairwise(times))
    # the newest partial of a sentence that never ended is not lost
    ended = {e.index for e in sent if isinstance(e, SentenceEnd)}
    for index in {p.index for p in inputs} - ended:
        last = [p for p in inputs if p.index == index][-1]
        assert last in [p for _, p in partials]


def test_a_held_partial_is_released_when_its_interval_is_up() -> None:
    policy = ReportPolicy(200)
    a, b, c = (ResultChanged(0, t, f"t{t}") for t in (1, 2, 3))
    assert policy.offer(a, 0.0) == [a]
    assert policy.offer(b, 0.05) == [] and policy.offer(c, 0.1) == []  # c replaces b
    assert policy.wake_at() == pytest.approx(0.2)
    assert policy.due(0.19) == [] and policy.due(0.2) == [c]
    assert policy.wake_at() is None
    assert policy.offer(ResultChanged(0, 4, "x"), 0.3) == []
    assert policy.offer(SentenceEnd(0, 5, 0, "done"), 0.31) == [SentenceEnd(0, 5, 0, "done")]


# --- faults --------------------------------------------------------------------------


@given(
    st.integers(0, 60),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0, 1),
    st.integers(0, 6),
    st.integers(0, 2**32),
    st.sets(st.integers(0, 59)),
)
def test_the_fault_plan_never_loses_and_keeps_terminals_last(
    n: int, dup: float, drop: float, reorder: float, burst: int, seed: int, terminals: set[int]
) -> None:
    plan: FaultPlan[int] = FaultPlan.seeded(
        Faults(duplicate=dup, drop=drop, reorder=reorder, burst=burst, seed=seed)
    )
    released: list[list[int]] = []
    for i in range(n):
        for batch in plan.offer(i, terminal=i in terminals):
            released.append([d.item for d in batch])
            if i in terminals:
                assert all(d.copies in (1, 2) for d in batch)
    released += [[d.item for d in batch] for batch in plan.flush()]
    assert not plan.holding
    flat = [item for batch in released for item in batch]
    assert sorted(flat) == list(range(n))  # each exactly once
    for position, item in enumerate(flat):
        if item in terminals:  # everything offered before it went out before it, alone
            assert set(flat[:position]) == set(range(item))
            assert [item] in released
        assert abs(position - item) <= max(1, burst)  # displaced by one reorder at most
    if burst >= 2:
        assert all(len(b) <= burst for b in released)


def test_reorder_swaps_neighbours_and_seeds_repeat() -> None:
    plan: FaultPlan[str] = FaultPlan.seeded(Faults(reorder=1.0))
    out = [d.item for x in "abcd" for b in plan.offer(x) for d in b]
    assert out == ["b", "a", "d", "c"]
    faults = Faults(duplicate=0.5, drop=0.5, reorder=0.5, seed=7)
    runs: list[list[tuple[int, int, bool]]] = []
    for _ in range(2):
        again: FaultPlan[int] = FaultPlan.seeded(faults, 3)
        runs.append(
            [(d.item, d.copies, d.lose_first) for i in range(30) for b in again.offer(i) for d in b]
        )
    assert runs[0] == runs[1]


def test_faults_from_json_checks_its_input() -> None:
    assert Faults.from_json({"duplicate": 0.3, "burst": 4, "seed": 1}).burst == 4
    for bad in ({"duplicate": 2}, {"nope": 1}, {"delay_ms": "x"}, {"drop": True}):
        with pytest.raises(ValueError):
            Faults.from_json(bad)


# --- callback bodies -----------------------------------------------------------------

_text = st.text(max_size=30)
_ints = st.integers(-(2**40), 2**40)
_words = st.lists(st.builds(Word, _text, _ints, _ints), max_size=4).map(tuple)
_langs = st.dictionaries(st.sampled_from(["cn", "en", "ja"]), _text, max_size=3)
EVENTS: st.SearchStrategy[RecognizerEvent] = st.one_of(
    st.just(TranscriptionStarted()),
    st.builds(SentenceBegin, _ints, _ints),
    st.builds(ResultChanged, _ints, _ints, _text, _text, _text, _words),
    st.builds(SentenceEnd, _ints, _ints, _ints, _text, _words, _langs),
    st.builds(Translated, _ints, _langs.filter(bool)),
    st.just(TranscriptionCompleted()),
    st.builds(TaskFailed, st.integers(0, 99999999), _text),
)
CTX = nls.TaskContext("asr-1", "en", "a" * 32, "tl_1_2", "app", "ch", "u")


@given(EVENTS, st.integers(1, 2**31))
def test_encode_then_parse_is_the_identity(event: RecognizerEvent, seq: int) -> None:
    msg_id = nls.message_id(CTX, seq)
    parsed = parse_callback(nls.encode(event, CTX, msg_id=msg_id, now_ms=1723433155645))
    assert parsed.event == event
    assert (parsed.task_id, parsed.message_id, parsed.language) == ("asr-1", msg_id, "en")


def test_the_body_has_the_contract_shape() -> None:
    body = json.loads(
        nls.encode(
            ResultChanged(0, 900, "hello every", "", "", (Word("hello", 0, 400),)),
            CTX,
            msg_id="m1",
            now_ms=1732240000123,
        )
    )
    assert set(body) == {
        "task_id",
        "sdk_app_id",
        "channel_id",
        "rtc_user_id",
        "callback_time_stamp",
        "language",
        "content",
    }
    assert body["callback_time_stamp"] == 1732240000123 and isinstance(body["content"], str)
    content = json.loads(body["content"])
    assert content["header"] == {
        "nls_task_id": "a" * 32,
        "task_key": "tl_1_2",
        "namespace": "SpeechTranscriber",
        "name": "TranscriptionResultChanged",
        "task_id": "a" * 32,
        "message_id": "m1",
        "status": 20000000,
        "status_text": "Success.",
    }
    assert content["payload"] == {
        "result": "hello every",
        "confidence": 0.0,
        "words": [{"startTime": 0, "text": "hello", "endTime": 400}],
        "index": 0,
        "time": 900,
        "fixed_result": "",
        "unfixed_result": "",
        "status": 0,
    }
    failed = json.loads(
        json.loads(nls.encode(TaskFailed(41050001, "no such file"), CTX, msg_id="m2", now_ms=1))[
            "content"
        ]
    )
    assert failed["header"]["status"] == 41050001
    assert failed["header"]["status_text"] == "no such file"
    assert nls.pseudo_translate("hi", ["cn", "ja"]) == {"cn": "[cn] hi", "ja": "[ja] hi"}
    assert len({nls.message_id(CTX, i) for i in range(1000)}) == 1000
