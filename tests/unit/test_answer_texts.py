"""What an answer says, for a cassette diff and a rotations report (pure): an image or a sound
by the digest of its bytes (two takes that differ must not read as identical), a transcript by
its text."""

from __future__ import annotations

import base64

import orjson

from proxy.core.answers import text


def images(*pictures: bytes, prompt: str = "a fox") -> bytes:
    data = [{"b64_json": base64.b64encode(p).decode(), "revised_prompt": prompt} for p in pictures]
    return orjson.dumps({"created": 1, "data": data})


def test_two_images_that_differ_read_apart_and_the_same_one_alike() -> None:
    assert text(images(b"one"), False) != text(images(b"two"), False)
    assert text(images(b"one"), False) == text(images(b"one"), False)
    assert text(images(b"one"), False) != text(images(b"one", prompt="a wolf"), False)


def test_sound_is_read_by_its_digest_not_its_bytes() -> None:
    said = text(b"ID3\x00take one", False, "audio/mpeg")
    assert said.startswith("sound sha256:") and "take" not in said
    assert said != text(b"ID3\x00take two", False, "audio/mpeg")
    assert said == text(b"ID3\x00take one", False, "audio/mpeg; codecs=mp3")


def test_a_transcript_is_its_text_whatever_its_usage_or_segments() -> None:
    first = {"text": "Hello there.", "usage": {"seconds": 1}, "segments": [{"id": 0}]}
    again = {"text": "Hello there.", "usage": {"seconds": 2}, "segments": [{"id": 1}]}
    assert text(orjson.dumps(first), False) == text(orjson.dumps(again), False) == "Hello there."
    assert text(b"1\n00:00:00,000 --> 00:00:01,000\nHello\n", False, "text/plain") == (
        "1\n00:00:00,000 --> 00:00:01,000\nHello\n"
    )


def test_embeddings_still_read_as_their_vectors() -> None:
    vectors = orjson.dumps({"data": [{"embedding": [0.5, 1.0]}]})
    assert text(vectors, False) == "[[0.5,1.0]]"
