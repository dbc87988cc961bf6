"""A Cache-Control directive given twice counts with its stricter value, a lenient reader's
reading of a path, and what moderation, image and speech answers must hold to be stored
(pure)."""

from __future__ import annotations

import orjson
import pytest

from proxy.core.call import facts_of
from proxy.core.entry import AUDIO, COMPACTED, COUNTED, IMAGE_BYTES, VERDICTS, answer_of
from proxy.core.paths import lenient
from proxy.core.policy import parse_cache_control
from proxy.core.routes import CHAT, INPUT_TOKENS, SPEECH
from proxy.server.keycheck import answers


@pytest.mark.parametrize(
    "values",
    [("max-age=0", "max-age=100"), ("max-age=100", "max-age=0"), ("max-age=100, max-age=0",)],
)
def test_a_max_age_given_twice_counts_with_the_smaller(values: tuple[str, ...]) -> None:
    """Readers in front of the proxy disagree on which copy wins: none may widen the other."""
    assert parse_cache_control(values).max_age == 0


def test_a_stale_if_error_given_twice_counts_with_the_smaller() -> None:
    assert parse_cache_control(("stale-if-error=5", "stale-if-error=60")).stale_if_error == 5


@pytest.mark.parametrize(
    "path",
    [
        "/v1//chat/completions",
        "/v1/chat/completions/",
        "/v1/chat/completions;x=1",
        "/v1/chat/%2563ompletions",
        "/v1/chat%2Fcompletions",
        "/v1/chat\\completions",
        "/V1/Chat/Completions",
        "/v1/chat/completions.",  # Windows servers drop trailing dots and spaces
        "/v1/chat/completions%20",
        "/v1/chat/completions%2e",
        "/v1/chat/completions%00x",  # a C string ends at NUL
        "/v1/chat/completions.json",  # suffix patterns
        "/v1/chat/complet%E2%80%8Bions",  # a zero-width space
    ],
)
def test_a_lenient_reader_reads_these_as_chat(path: str) -> None:
    assert lenient(path) == "/v1/chat/completions"


@pytest.mark.parametrize(
    ("results", "stored"),
    [
        ([{"flagged": True, "categories": {"violence": True}}], True),
        ([{"flagged": False, "categories": {}}, {"flagged": True, "categories": {}}], True),
        ([], False),
        ([{"flagged": "false", "categories": {}}], False),
        ([{"flagged": False, "categories": None}], False),
        ([{"flagged": False}], False),
        ("flagged", False),
    ],
)
def test_a_moderation_answer_is_stored_only_as_verdicts(results: object, stored: bool) -> None:
    """What the SDK reads of each result: a verdict and its categories."""
    body = orjson.dumps({"id": "modr-1", "model": "omni-moderation-2024-09-26", "results": results})
    assert (answer_of(body, False, VERDICTS) is not None) is stored


@pytest.mark.parametrize(
    ("data", "stored"),
    [
        ([{"b64_json": "iVBORw0K"}], True),
        ([{"b64_json": "iVBORw0K", "revised_prompt": "a fox"}, {"b64_json": "aGk="}], True),
        ([{"url": "https://images.invalid/1.png"}], False),
        ([{"b64_json": "aGk="}, {"url": "https://images.invalid/1.png"}], False),
        ([{"b64_json": ""}], False),
        ([], False),
    ],
)
def test_an_image_answer_is_stored_only_with_its_bytes(data: object, stored: bool) -> None:
    """A signed URL expires within hours: a stored one would be a dead link."""
    body = orjson.dumps({"created": 1, "data": data})
    assert (answer_of(body, False, IMAGE_BYTES) is not None) is stored


SUMMARY = {"type": "compaction", "id": "cmp_1", "encrypted_content": "gAAAA"}


@pytest.mark.parametrize(
    ("answer", "stored"),
    [
        ({"object": "response.compaction", "output": [SUMMARY]}, True),
        ({"object": "response.compaction", "output": [{"role": "user"}, SUMMARY]}, True),
        ({"object": "response.compaction", "output": []}, False),
        ({"object": "response.compaction", "output": [{}]}, False),
        ({"object": "response", "output": [SUMMARY]}, False),
        ({"output": [SUMMARY]}, False),
        ({"object": "response.compaction", "output": [SUMMARY], "error": {"code": "x"}}, False),
    ],
)
def test_a_compaction_is_stored_only_as_one(answer: dict[str, object], stored: bool) -> None:
    """What `client.responses.compact()` reads: a `response.compaction` with its items."""
    assert (answer_of(orjson.dumps(answer), False, COMPACTED) is not None) is stored


@pytest.mark.parametrize(
    ("answer", "stored"),
    [
        ({"object": "response.input_tokens", "input_tokens": 42}, True),
        ({"object": "response.input_tokens", "input_tokens": 0}, True),
        ({"object": "response.input_tokens", "input_tokens": -1}, False),
        ({"object": "response.input_tokens", "input_tokens": 2**63}, False),
        ({"object": "response.input_tokens", "input_tokens": True}, False),
        ({"object": "response.input_tokens", "input_tokens": "42"}, False),
        ({"object": "response.input_tokens"}, False),
        ({"object": "response", "input_tokens": 42}, False),
        ({"object": "response.input_tokens", "input_tokens": 4, "error": {"code": "x"}}, False),
    ],
)
def test_a_token_count_is_stored_only_as_one(answer: dict[str, object], stored: bool) -> None:
    """The one answer without a list of items: read by its own rule, by the store and by the
    key check alike (an open upstream counting for a made-up key serves strangers)."""
    body = orjson.dumps(answer)
    assert (answer_of(body, False, COUNTED) is not None) is stored
    assert answers(body, "application/json", False, INPUT_TOKENS, COUNTED) is stored
    assert facts_of(body, False, COUNTED, "application/json") == (
        ("none", 0, 0, None, False) if stored else None
    )


@pytest.mark.parametrize(
    ("body", "content_type", "stored"),
    [
        (b"ID3\x04sound", "audio/mpeg", True),
        (b"RIFF....WAVE", "Audio/WAV; rate=24000", True),
        (b"\x00\x01", "application/octet-stream", True),
        (b"", "audio/mpeg", False),
        (b'{"error": {"message": "busy"}}', "application/json", False),
        (b"<html>down</html>", "text/html", False),
        (b"ID3\x04sound", "", False),
        (b"ID3\x04sound", "audiox/mpeg", False),
    ],
)
def test_speech_is_stored_only_as_sound(body: bytes, content_type: str, stored: bool) -> None:
    facts = facts_of(body, False, AUDIO, content_type)
    assert (facts == ("none", 0, 0, None, False)) is stored
    assert answers(body, content_type, False, SPEECH, AUDIO) is stored


def test_a_key_check_reads_speech_past_its_limit_by_its_label_and_nothing_else_so() -> None:
    """Seconds of speech pass the key check's 64 KiB read: its label says it is sound, where
    the rest of an answer that long could be a gateway's error quoting the prompt."""
    assert answers(None, "audio/mpeg", False, SPEECH, AUDIO) is True
    assert answers(None, "application/json", False, SPEECH, AUDIO) is False
    assert answers(None, "application/json", False, CHAT, None) is None
