"""What an answer says, for a cassette diff and a rotations report (pure): an image or a sound
by the digest of its bytes (two takes that differ must not read as identical), a transcript by
its text."""

from __future__ import annotations

import base64

import orjson
import pytest

from proxy.core.answers import distance, text
from proxy.core.comparison import text_distances
from proxy.core.textdistance import normalized_levenshtein


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


def test_images_or_sounds_that_changed_are_wholly_other_and_text_is_measured() -> None:
    """Two digests share no meaning however many characters they share: a report counting
    the edits between them would call one new image a little different from the old."""
    one, two = text(images(b"one"), False), text(images(b"two"), False)
    assert one.startswith("images sha256:") and "revised to a fox" in one
    assert distance(one, two, normalized_levenshtein) == 1.0
    assert distance(one, one, normalized_levenshtein) == 0.0
    sound = text(b"ID3\x00take one", False, "audio/mpeg")
    assert distance(sound, text(b"ID3\x00take two", False, "audio/mpeg"), never_measured) == 1.0
    assert distance("Blue sky.", "Blue sea.", normalized_levenshtein) == pytest.approx(2 / 9)
    assert text_distances([(one, two), ("ab", "ab"), ("ab", "ac")]) == [1.0, 0.0, 0.5]


def never_measured(old: str, new: str) -> float:
    raise AssertionError("digests are never measured")
