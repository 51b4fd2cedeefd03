"""Tests of callback body parsing (contract §3 and §5, SPEC §3.2)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.callback import NLS_SUCCESS, Callback, CallbackFormatError, parse_callback
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

TASK_ID = "asr-0f1e2d3c-0000-4000-8000-000000000001"

# The contract's sample bodies (contracts/aliyun-live-rtc-asr.md §5), verbatim.
SAMPLE_PARTIAL = rb"""{"task_id":"asr-0f1e2d3c-0000-4000-8000-000000000001","sdk_app_id":"","channel_id":"","rtc_user_id":"",
 "callback_time_stamp":1732240000123,"language":"en",
 "content":"{\"header\":{\"nls_task_id\":\"a1b2c3\",\"task_key\":\"tl_1_1732240000\",\"namespace\":\"SpeechTranscriber\",\"name\":\"TranscriptionResultChanged\",\"task_id\":\"t1\",\"message_id\":\"m1\",\"status_text\":\"Success.\",\"status\":20000000},\"payload\":{\"result\":\"hello every\",\"confidence\":0.0,\"words\":[{\"startTime\":0,\"text\":\"hello\",\"endTime\":400}],\"index\":0,\"time\":900,\"fixed_result\":\"\",\"unfixed_result\":\"\",\"status\":0}}"}"""  # noqa: E501
SAMPLE_FINAL = rb"""{"task_id":"asr-0f1e2d3c-0000-4000-8000-000000000001","sdk_app_id":"","channel_id":"","rtc_user_id":"",
 "callback_time_stamp":1732240001500,"language":"en",
 "content":"{\"header\":{\"namespace\":\"SpeechTranscriber\",\"name\":\"SentenceEnd\",\"status\":20000000,\"status_text\":\"Success.\",\"task_id\":\"t1\",\"message_id\":\"m2\"},\"payload\":{\"index\":0,\"time\":1820,\"begin_time\":0,\"result\":\"Hello everyone.\",\"confidence\":0.93,\"words\":[]}}"}"""  # noqa: E501

KNOWN_NAMES = frozenset(
    {
        "TranscriptionStarted",
        "SentenceBegin",
        "TranscriptionResultChanged",
        "SentenceEnd",
        "TranscriptionCompleted",
        "TaskFailed",
        "TranslationResult",
        "TranslationResultChanged",
        "SentenceTranslate",
    }
)


# --- building bodies -----------------------------------------------------------------


def header(name: str, **fields: Any) -> dict[str, Any]:
    """An NLS event header; success unless ``status`` says otherwise."""
    return {
        "namespace": "SpeechTranscriber",
        "name": name,
        "status": NLS_SUCCESS,
        "status_text": "Success.",
        "task_id": "t1",
        "message_id": "m1",
        **fields,
    }


def body(
    head: Mapping[str, Any] | None = None,
    payload: Mapping[str, Any] | None = None,
    *,
    content: Any = None,
    **outer: Any,
) -> bytes:
    """A callback body in the contract shape; ``content`` is double-encoded like the real one."""
    if content is None:
        event: dict[str, Any] = {"header": dict(head or header("TranscriptionStarted"))}
        if payload is not None:
            event["payload"] = dict(payload)
        content = json.dumps(event)
    fields: dict[str, Any] = {
        "task_id": TASK_ID,
        "sdk_app_id": "",
        "channel_id": "",
        "rtc_user_id": "",
        "callback_time_stamp": 1732240000123,
        "language": "en",
        "content": content,
        **outer,
    }
    return json.dumps(fields).encode()


def words_json(words: tuple[Word, ...]) -> list[dict[str, Any]]:
    return [{"startTime": w.start_ms, "text": w.text, "endTime": w.end_ms} for w in words]


def event_json(event: RecognizerEvent) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (header, payload) a recognizer sends for ``event``."""
    match event:
        case TranscriptionStarted():
            return header("TranscriptionStarted"), {}
        case SentenceBegin():
            return header("SentenceBegin"), {"index": event.index, "time": event.time_ms}
        case ResultChanged():
            return header("TranscriptionResultChanged"), {
                "index": event.index,
                "time": event.time_ms,
                "result": event.text,
                "confidence": 0.0,
                "words": words_json(event.words),
                "fixed_result": event.fixed,
                "unfixed_result": event.unfixed,
                "status": 0,
            }
        case SentenceEnd():
            return header("SentenceEnd"), {
                "index": event.index,
                "time": event.time_ms,
                "begin_time": event.begin_ms,
                "result": event.text,
                "confidence": 0.9,
                "words": words_json(event.words),
                "translations": dict(event.translations),
            }
        case Translated():
            return header("TranslationResult"), {
                "index": event.index,
                "translations": dict(event.translations),
            }
        case TranscriptionCompleted():
            return header("TranscriptionCompleted"), {}
        case TaskFailed():
            return header("TaskFailed", status=event.status, status_text=event.reason), {}
    raise AssertionError(event)


def parse_event(head: Mapping[str, Any], payload: Mapping[str, Any] | None = None) -> Any:
    return parse_callback(body(head, payload)).event


def rejects(data: bytes, code: str) -> None:
    with pytest.raises(CallbackFormatError) as info:
        parse_callback(data)
    assert info.value.code == code


# --- strategies ----------------------------------------------------------------------

ints = st.integers(min_value=0, max_value=2**31)
texts = st.text(max_size=30)
langs = st.text(min_size=1, max_size=5)
word_tuples = st.lists(st.builds(Word, texts, ints, ints), max_size=4).map(tuple)
translation_maps = st.dictionaries(langs, texts, max_size=3)
events: st.SearchStrategy[RecognizerEvent] = st.one_of(
    st.builds(TranscriptionStarted),
    st.builds(SentenceBegin, index=ints, time_ms=ints),
    st.builds(
        ResultChanged,
        index=ints,
        time_ms=ints,
        text=texts,
        fixed=texts,
        unfixed=texts,
        words=word_tuples,
    ),
    st.builds(
        SentenceEnd,
        index=ints,
        time_ms=ints,
        begin_ms=ints,
        text=texts,
        words=word_tuples,
        translations=translation_maps,
    ),
    st.builds(Translated, index=ints, translations=translation_maps),
    st.builds(TranscriptionCompleted),
    st.builds(TaskFailed, status=st.integers(-(2**40), 2**40), reason=texts),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


# --- the contract's samples ----------------------------------------------------------


def test_contract_partial_sample() -> None:
    assert parse_callback(SAMPLE_PARTIAL) == Callback(
        task_id=TASK_ID,
        message_id="m1",
        language="en",
        event=ResultChanged(
            index=0,
            time_ms=900,
            text="hello every",
            fixed="",
            unfixed="",
            words=(Word("hello", 0, 400),),
        ),
    )


def test_contract_final_sample() -> None:
    assert parse_callback(SAMPLE_FINAL) == Callback(
        task_id=TASK_ID,
        message_id="m2",
        language="en",
        event=SentenceEnd(index=0, time_ms=1820, begin_ms=0, text="Hello everyone.", words=()),
    )


def test_samples_are_double_encoded_like_the_contract() -> None:
    for sample in (SAMPLE_PARTIAL, SAMPLE_FINAL):
        assert isinstance(json.loads(sample)["content"], str)


# --- round trips ---------------------------------------------------------------------


@given(events, st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20), langs)
def test_round_trip(event: RecognizerEvent, task_id: str, message_id: str, language: str) -> None:
    head, payload = event_json(event)
    head["message_id"] = message_id
    parsed = parse_callback(body(head, payload, task_id=task_id, language=language))
    assert parsed == Callback(task_id, message_id, language, event)


@given(events)
def test_round_trip_with_content_as_an_object(event: RecognizerEvent) -> None:
    # Tolerated: a sender that does not double-encode ``content``.
    head, payload = event_json(event)
    assert parse_callback(body(content={"header": head, "payload": payload})).event == event


# --- events --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["TranscriptionStarted", "TranscriptionCompleted"])
def test_payload_may_be_absent_for_task_events(name: str) -> None:
    expected = (
        TranscriptionStarted() if name == "TranscriptionStarted" else TranscriptionCompleted()
    )
    assert parse_event(header(name)) == expected


def test_sentence_end_without_begin_time_begins_at_its_time() -> None:
    event = parse_event(header("SentenceEnd"), {"index": 2, "time": 1500, "result": "hi"})
    assert event == SentenceEnd(index=2, time_ms=1500, begin_ms=1500, text="hi")


def test_missing_time_is_zero_and_null_strings_are_empty() -> None:
    payload = {"index": 1, "result": None, "fixed_result": None, "words": None}
    assert parse_event(header("TranscriptionResultChanged"), payload) == ResultChanged(1, 0, "")


def test_integral_floats_are_read_as_ints() -> None:
    event = parse_event(header("SentenceBegin"), {"index": 3.0, "time": 250.0})
    assert event == SentenceBegin(index=3, time_ms=250)


def test_task_failed_carries_status_and_text() -> None:
    head = header("TaskFailed", status=40000004, status_text="IDLE_TIMEOUT")
    assert parse_event(head) == TaskFailed(status=40000004, reason="IDLE_TIMEOUT")


def test_task_failed_without_status_text_has_empty_reason() -> None:
    head = header("TaskFailed", status=50000000)
    del head["status_text"]
    assert parse_event(head) == TaskFailed(status=50000000, reason="")


@given(
    st.sampled_from(sorted(KNOWN_NAMES)) | st.text(max_size=20),
    st.integers(-(2**40), 2**40).filter(lambda s: s != NLS_SUCCESS),
    texts,
)
def test_non_success_status_is_task_failed_whatever_the_name(
    name: str, status: int, text: str
) -> None:
    head = header(name, status=status, status_text=text)
    # The payload would be invalid for most events: a failure is reported regardless.
    assert parse_event(head, {"index": "not a number"}) == TaskFailed(status=status, reason=text)


@given(st.text(max_size=30).filter(lambda n: n not in KNOWN_NAMES), json_values)
def test_unknown_event_names_give_no_event(name: str, extra: Any) -> None:
    head = header(name, message_id="m9")
    parsed = parse_callback(body(head, {"index": 1, "whatever": extra}))
    assert parsed == Callback(TASK_ID, "m9", "en", None)


# --- translations --------------------------------------------------------------------

EXPECTED_TRANSLATIONS = {"cn": "大家好。", "ja": "皆さん、こんにちは。"}
TRANSLATION_SHAPES: list[tuple[str, Any]] = [
    ("translations", EXPECTED_TRANSLATIONS),
    ("translate_result", EXPECTED_TRANSLATIONS),
    ("translation", EXPECTED_TRANSLATIONS),
    ("translate_results", EXPECTED_TRANSLATIONS),
    ("translations", [{"language": k, "text": v} for k, v in EXPECTED_TRANSLATIONS.items()]),
    ("translations", [{"lang": k, "text": v} for k, v in EXPECTED_TRANSLATIONS.items()]),
    (
        "translate_result",
        [{"target_language": k, "result": v} for k, v in EXPECTED_TRANSLATIONS.items()],
    ),
    (
        "translation",
        [{"language": "cn", "result": "大家好。"}, {"lang": "ja", "text": "皆さん、こんにちは。"}],
    ),
]


@pytest.mark.parametrize(("key", "value"), TRANSLATION_SHAPES)
def test_translations_on_sentence_end(key: str, value: Any) -> None:
    payload = {"index": 0, "time": 1820, "begin_time": 0, "result": "Hello everyone.", key: value}
    event = parse_event(header("SentenceEnd"), payload)
    assert isinstance(event, SentenceEnd)
    assert dict(event.translations) == EXPECTED_TRANSLATIONS


@pytest.mark.parametrize(
    "name", ["TranslationResult", "TranslationResultChanged", "SentenceTranslate"]
)
@pytest.mark.parametrize(("key", "value"), TRANSLATION_SHAPES)
def test_translation_events(name: str, key: str, value: Any) -> None:
    event = parse_event(header(name), {"index": 4, key: value})
    assert event == Translated(index=4, translations=EXPECTED_TRANSLATIONS)


def test_unusable_translation_entries_are_skipped() -> None:
    value = [
        "not an object",
        {"language": "cn"},  # no text
        {"text": "orphan"},  # no language
        {"language": 7, "text": "numeric language"},
        {"language": "ja", "text": 7},
        {"language": "en", "text": "kept"},
    ]
    event = parse_event(header("SentenceEnd"), {"index": 0, "time": 1, "translations": value})
    assert isinstance(event, SentenceEnd)
    assert dict(event.translations) == {"en": "kept"}


def test_non_string_translation_values_are_skipped() -> None:
    value = {"cn": "好", "ja": None, "en": 3}
    event = parse_event(header("SentenceEnd"), {"index": 0, "time": 1, "translations": value})
    assert isinstance(event, SentenceEnd)
    assert dict(event.translations) == {"cn": "好"}


def test_sentence_end_without_translations_has_none() -> None:
    event = parse_event(header("SentenceEnd"), {"index": 0, "time": 1, "result": "x"})
    assert isinstance(event, SentenceEnd)
    assert dict(event.translations) == {}


# --- outer fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_id", "expected"), [("m1", "m1"), (42, "42"), ("", None), (None, None)]
)
def test_message_id(message_id: Any, expected: str | None) -> None:
    parsed = parse_callback(body(header("SentenceBegin", message_id=message_id), {"index": 1}))
    assert parsed.message_id == expected


def test_missing_message_id_is_none() -> None:
    head = header("TranscriptionStarted")
    del head["message_id"]
    assert parse_callback(body(head)).message_id is None


@pytest.mark.parametrize("language", [None, 5, ["en"]])
def test_non_string_language_is_empty(language: Any) -> None:
    assert parse_callback(body(language=language)).language == ""


def test_utf8_bom_is_tolerated() -> None:
    assert parse_callback(b"\xef\xbb\xbf" + body()).task_id == TASK_ID


# --- malformed bodies ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"{",
        b'{"task_id": "a",}',
        b"\xff\xfe\x00garbage",
        b"[]",
        b'"a string"',
        b"42",
        b"null",
    ],
)
def test_malformed_json(data: bytes) -> None:
    rejects(data, "malformed_json")


@pytest.mark.parametrize(
    "data",
    [
        body(task_id=None),
        body(task_id=""),
        body(task_id=7),
        body(content="not json"),
        body(content="[1, 2]"),
        body(content=17),
        body(content=json.dumps({"payload": {}})),  # no header
        body(content=json.dumps({"header": "x", "payload": {}})),
        body(content=json.dumps({"header": header("SentenceBegin"), "payload": []})),
        body(content=json.dumps({"header": header("SentenceBegin"), "payload": None})),
        body(header("SentenceBegin"), {}),  # no index
        body({**header("SentenceBegin"), "name": 7}),
        body({"status": NLS_SUCCESS}),  # no name
        body(header("SentenceBegin"), {"index": "1"}),
        body(header("SentenceBegin"), {"index": True}),
        body(header("SentenceBegin"), {"index": 1, "time": None}),
        body(header("SentenceBegin", status="20000000"), {"index": 1}),
        body(header("SentenceBegin", status=None), {"index": 1}),
        body(header("TranscriptionResultChanged"), {"index": 1, "result": 5}),
        body(header("TranscriptionResultChanged"), {"index": 1, "words": "hello"}),
        body(header("TranscriptionResultChanged"), {"index": 1, "words": ["hello"]}),
        body(header("SentenceEnd"), {"index": 1, "words": [{"text": 1}]}),
        body(header("SentenceEnd"), {"index": 1, "words": [{"startTime": "0"}]}),
        body(header("SentenceEnd"), {"index": 1, "begin_time": "0"}),
        body(header("TranslationResult"), {"translations": {}}),  # no index
    ],
)
def test_malformed_content(data: bytes) -> None:
    rejects(data, "malformed_content")


def test_error_message_is_readable() -> None:
    with pytest.raises(CallbackFormatError, match="task_id"):
        parse_callback(body(task_id=""))


def test_callback_format_error_is_a_value_error() -> None:
    assert issubclass(CallbackFormatError, ValueError)


# Found by the properties below; each should be a 400, not an unexpected exception.


def test_deeply_nested_body_is_malformed_json() -> None:
    # Well under the 64 KiB body limit, but deeper than the JSON decoder can recurse.
    rejects(b"[" * 50_000, "malformed_json")


def test_deeply_nested_content_is_malformed_content() -> None:
    rejects(body(content="[" * 50_000), "malformed_content")


NON_FINITE_CONTENTS = [
    '{"header":{"name":"SentenceBegin"},"payload":{"index":%s,"time":0}}',
    '{"header":{"name":"SentenceBegin"},"payload":{"index":1,"time":%s}}',
    '{"header":{"name":"SentenceEnd"},"payload":{"index":1,"time":1,"begin_time":%s}}',
    '{"header":{"name":"SentenceEnd"},"payload":{"index":1,"words":[{"startTime":%s}]}}',
    '{"header":{"name":"TranscriptionStarted","status":%s}}',
]


@pytest.mark.parametrize("number", ["1e999", "NaN"])
@pytest.mark.parametrize(
    "template", NON_FINITE_CONTENTS, ids=["index", "time", "begin_time", "startTime", "status"]
)
def test_non_finite_numbers_are_malformed_content(template: str, number: str) -> None:
    # Python's json reads these (json.dumps cannot write them, hence the template).
    rejects(body(content=template % number), "malformed_content")


# --- properties: nothing but CallbackFormatError -------------------------------------


def parses_or_rejects(data: bytes) -> None:
    try:
        parsed = parse_callback(data)
    except CallbackFormatError as exc:
        assert exc.code in ("malformed_json", "malformed_content")
    else:
        assert isinstance(parsed, Callback)
        assert parsed.task_id


@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    parses_or_rejects(data)


@given(json_values)
def test_arbitrary_json(value: Any) -> None:
    parses_or_rejects(json.dumps(value).encode())


@given(json_values, json_values)
def test_arbitrary_header_and_payload(head: Any, payload: Any) -> None:
    parses_or_rejects(body(content=json.dumps({"header": head, "payload": payload})))


PAYLOAD_KEYS = (
    *("index", "time", "begin_time", "result", "fixed_result", "unfixed_result", "words"),
    *("translations", "translate_result", "translation", "translate_results"),
)


@given(
    st.sampled_from(sorted(KNOWN_NAMES)),
    st.dictionaries(
        st.sampled_from(PAYLOAD_KEYS),
        json_values,
    ),
)
def test_known_events_with_arbitrary_payload_fields(name: str, payload: dict[str, Any]) -> None:
    parses_or_rejects(body(header(name), payload))


@given(
    st.sampled_from(["SentenceBegin", "TranscriptionResultChanged", "SentenceEnd"]),
    st.sampled_from(["index", "time", "begin_time"]),
    st.integers() | st.floats(),
)
def test_any_json_number_in_a_numeric_field(name: str, key: str, number: float) -> None:
    # json.dumps writes inf and nan as Infinity and NaN, which json.loads reads back.
    parses_or_rejects(body(header(name), {"index": 1, "time": 2, key: number}))


@given(events, st.data())
def test_corrupted_valid_bodies(event: RecognizerEvent, data: st.DataObject) -> None:
    head, payload = event_json(event)
    raw = bytearray(body(head, payload))
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        i = data.draw(st.integers(0, len(raw) - 1), label="position")
        raw[i] = data.draw(st.integers(0, 255), label="byte")
    parses_or_rejects(bytes(raw))
