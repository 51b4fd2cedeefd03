"""Tests of the viewer wire format (SPEC §3.4)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.events import CaptionEvent, Final, Partial, Published, StateChanged, TaskState, Word
from relay.core.wire import encode, encode_hello, to_message, translates_to

STREAM = "stream-1"

# Every message type's keys and the JSON type of each, exactly as SPEC §3.4 lists them.
SHAPES: dict[str, dict[str, type]] = {
    "hello": {"type": str, "stream_id": str, "state": str, "seq": int},
    "partial": {
        "type": str,
        "stream_id": str,
        "seq": int,
        "index": int,
        "text": str,
        "stable": str,
        "start_ms": int,
        "end_ms": int,
    },
    "final": {
        "type": str,
        "stream_id": str,
        "seq": int,
        "index": int,
        "text": str,
        "start_ms": int,
        "end_ms": int,
        "words": list,
        "translations": dict,
    },
    "state": {"type": str, "stream_id": str, "state": str, "reason": str},
}
WORD_SHAPE: dict[str, type] = {"text": str, "start_ms": int, "end_ms": int}
STATES = {"idle", *(s.value for s in TaskState)}


def pub(event: CaptionEvent, seq: int = 7, stream_id: str = STREAM) -> Published:
    return Published(stream_id=stream_id, seq=seq, event=event)


def final(text: str = "Hello everyone.", translations: Mapping[str, str] | None = None) -> Final:
    words = (Word("Hello", 0, 400), Word("everyone.", 400, 1820))
    return Final(0, text, 0, 1820, words, translations or {})


def has_shape(obj: Any, shape: Mapping[str, type]) -> None:
    assert isinstance(obj, dict)
    assert set(obj) == set(shape)
    for key, kind in shape.items():
        # bool is an int in Python but not a number on the wire.
        assert isinstance(obj[key], kind) and not isinstance(obj[key], bool), (key, obj[key])


def decode(data: bytes) -> dict[str, Any]:
    """Parse one frame, checking it is compact UTF-8 JSON of a SPEC message."""
    assert isinstance(data, bytes)
    text = data.decode("utf-8")  # strict: valid UTF-8
    message: dict[str, Any] = json.loads(text)
    assert json.dumps(message, ensure_ascii=False, separators=(",", ":")) == text
    has_shape(message, SHAPES[message["type"]])
    for word in message.get("words", []):
        has_shape(word, WORD_SHAPE)
    assert all(isinstance(v, str) for v in message.get("translations", {}).values())
    if "state" in message:
        assert message["state"] in STATES
    return message


# --- strategies ----------------------------------------------------------------------

ints = st.integers(min_value=0, max_value=2**53)
texts = st.text(max_size=30)
langs = st.text(min_size=1, max_size=5)
caption_events: st.SearchStrategy[CaptionEvent] = st.one_of(
    st.builds(Partial, index=ints, text=texts, stable=texts, start_ms=ints, end_ms=ints),
    st.builds(
        Final,
        index=ints,
        text=texts,
        start_ms=ints,
        end_ms=ints,
        words=st.lists(st.builds(Word, texts, ints, ints), max_size=4).map(tuple),
        translations=st.dictionaries(langs, texts, max_size=3),
    ),
    st.builds(StateChanged, state=st.sampled_from(TaskState), reason=texts),
)
publisheds = st.builds(
    Published, stream_id=st.text(min_size=1, max_size=20), seq=ints, event=caption_events
)


# --- examples ------------------------------------------------------------------------


def test_partial() -> None:
    event = Partial(index=3, text="hello every", stable="hello ", start_ms=100, end_ms=900)
    assert decode(encode(pub(event, seq=12))) == {
        "type": "partial",
        "stream_id": STREAM,
        "seq": 12,
        "index": 3,
        "text": "hello every",
        "stable": "hello ",
        "start_ms": 100,
        "end_ms": 900,
    }


def test_final() -> None:
    event = final(translations={"cn": "大家好。"})
    assert decode(encode(pub(event, seq=13))) == {
        "type": "final",
        "stream_id": STREAM,
        "seq": 13,
        "index": 0,
        "text": "Hello everyone.",
        "start_ms": 0,
        "end_ms": 1820,
        "words": [
            {"text": "Hello", "start_ms": 0, "end_ms": 400},
            {"text": "everyone.", "start_ms": 400, "end_ms": 1820},
        ],
        "translations": {"cn": "大家好。"},
    }


def test_final_without_words_or_translations() -> None:
    message = decode(encode(pub(Final(1, "x", 5, 6))))
    assert message["words"] == []
    assert message["translations"] == {}


@pytest.mark.parametrize("state", list(TaskState))
def test_state(state: TaskState) -> None:
    assert decode(encode(pub(StateChanged(state, "40000004")))) == {
        "type": "state",
        "stream_id": STREAM,
        "state": state.value,
        "reason": "40000004",
    }


def test_state_without_reason_has_an_empty_one() -> None:
    assert decode(encode(pub(StateChanged(TaskState.RUNNING))))["reason"] == ""


def test_hello_while_idle() -> None:
    assert decode(encode_hello(STREAM, None, 0)) == {
        "type": "hello",
        "stream_id": STREAM,
        "state": "idle",
        "seq": 0,
    }


@pytest.mark.parametrize("state", list(TaskState))
def test_hello_with_a_task(state: TaskState) -> None:
    assert decode(encode_hello(STREAM, state, 41)) == {
        "type": "hello",
        "stream_id": STREAM,
        "state": state.value,
        "seq": 41,
    }


def test_output_is_compact_utf8_not_ascii_escapes() -> None:
    data = encode(pub(final("你好世界", {"en": "Hi"})))
    assert "你好世界".encode() in data
    assert b"\\u" not in data
    assert b": " not in data and b", " not in data


def test_to_message_is_what_encode_writes() -> None:
    published = pub(final(translations={"en": "hi"}))
    assert json.loads(encode(published, "en")) == to_message(published, "en")


# --- lang ----------------------------------------------------------------------------


def test_lang_picks_the_translation_as_text() -> None:
    published = pub(final(translations={"cn": "大家好。", "ja": "皆さん"}))
    message = decode(encode(published, "cn"))
    assert message["text"] == "大家好。"
    # Everything else is unchanged, translations included.
    assert message == {**decode(encode(published)), "text": "大家好。"}


@pytest.mark.parametrize("lang", [None, "", "fr", "CN"])
def test_lang_without_a_translation_keeps_the_text(lang: str | None) -> None:
    published = pub(final(translations={"cn": "大家好。"}))
    assert encode(published, lang) == encode(published)
    assert decode(encode(published, lang))["text"] == "Hello everyone."


def test_lang_does_not_touch_partials_or_states() -> None:
    for event in (Partial(0, "hi", "", 0, 1), StateChanged(TaskState.FAILED, "x")):
        assert encode(pub(event), "cn") == encode(pub(event))


def test_translates_to() -> None:
    translated = pub(final(translations={"cn": "大家好。"}))
    assert translates_to(translated, "cn")
    assert not translates_to(translated, "ja")
    assert not translates_to(pub(final()), "cn")
    assert not translates_to(pub(Partial(0, "hi", "", 0, 1)), "cn")
    assert not translates_to(pub(StateChanged(TaskState.RUNNING)), "cn")


# --- properties ----------------------------------------------------------------------


@given(publisheds, st.none() | langs)
def test_every_frame_is_a_spec_message(published: Published, lang: str | None) -> None:
    message = decode(encode(published, lang))
    assert message == to_message(published, lang)
    assert message["stream_id"] == published.stream_id
    event = published.event
    if isinstance(event, Partial | Final):
        assert message["seq"] == published.seq
        assert message["index"] == event.index


@given(publisheds, langs)
def test_lang_picks_the_translation_only_where_one_exists(published: Published, lang: str) -> None:
    message = decode(encode(published, lang))
    default = decode(encode(published))
    event = published.event
    if isinstance(event, Final) and lang in event.translations:
        assert message == {**default, "text": event.translations[lang]}
    else:
        assert message == default


@given(publisheds, langs)
def test_frames_differ_from_the_default_only_when_translates_to(
    published: Published, lang: str
) -> None:
    # Fan-out encodes a language-specific frame only when translates_to says so.
    if not translates_to(published, lang):
        assert encode(published, lang) == encode(published)


@given(st.text(min_size=1, max_size=20), st.none() | st.sampled_from(TaskState), ints)
def test_every_hello_is_a_spec_message(stream_id: str, state: TaskState | None, seq: int) -> None:
    message = decode(encode_hello(stream_id, state, seq))
    assert message == {
        "type": "hello",
        "stream_id": stream_id,
        "state": state.value if state else "idle",
        "seq": seq,
    }


# A callback may carry a JSON "\ud800" escape, which json.loads turns into a lone surrogate:
# the caption text then holds a str that strict UTF-8 cannot encode.
LONE_SURROGATE = "caf\ud800e"


@pytest.mark.parametrize(
    "event",
    [
        Partial(0, LONE_SURROGATE, "", 0, 1),
        Partial(0, "x", LONE_SURROGATE, 0, 1),
        Final(0, LONE_SURROGATE, 0, 1),
        Final(0, "x", 0, 1, (Word(LONE_SURROGATE, 0, 1),)),
        Final(0, "x", 0, 1, translations={"en": LONE_SURROGATE}),
        StateChanged(TaskState.FAILED, LONE_SURROGATE),
    ],
    ids=["partial text", "partial stable", "final text", "word", "translation", "reason"],
)
def test_lone_surrogates_still_give_a_utf8_frame(event: CaptionEvent) -> None:
    data = encode(pub(event), "en")
    message = json.loads(data.decode("utf-8"))
    has_shape(message, SHAPES[message["type"]])
