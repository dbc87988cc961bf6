"""How entries are packed for the store: round trips at every level, the first format still
read, and every blob that is not an entry (truncated, hostile, a decompression bomb, a future
version, an unknown dictionary) a CorruptEntry, which readers treat as absent; never a crash."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.codec import (
    FORMAT,
    PLAIN,
    SAMPLE_BYTES,
    ZSTD,
    ZSTD_DICTIONARY,
    Codec,
    UnknownDictionary,
    dictionary_id,
    raw_size,
    train,
)
from proxy.core.entry import LAST_DATE, CorruptEntry, Entry

DATA = Path(__file__).parent / "data"
PROSE = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle, in the "
    "style of a nineteenth-century travel diary, with the weather described in every entry. "
) * 4
ENTRY = Entry(
    body=orjson.dumps({"id": "chatcmpl-1", "choices": [{"message": {"content": "The keeper."}}]}),
    content_type="application/json",
    fingerprint="fp_abc",
    stored_at=1_700_000_000.25,
    model="gpt-4o-mini",
    seed=12345,
    seed_source="default",
    prompt_tokens=9,
    completion_tokens=3,
    stream=False,
    route="/v1/chat/completions",
    query="api-version=2024-06-01",
    namespace="suite",
    request=orjson.dumps({"messages": [{"role": "user", "content": PROSE}], "seed": 12345}),
)
CODEC = Codec(level=1, max_raw=1 << 20)
PLAIN_CODEC = Codec(level=0, max_raw=1 << 20)

entries = st.builds(
    Entry,
    body=st.binary(max_size=2048),
    content_type=st.sampled_from(["application/json", "text/event-stream; charset=utf-8"])
    | st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30),
    fingerprint=st.sampled_from(["none"])
    | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:+=/-]{0,19}", fullmatch=True),
    stored_at=st.floats(min_value=0, max_value=LAST_DATE, exclude_max=True),
    model=st.text(max_size=30),
    seed=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
    seed_source=st.sampled_from([None, "client", "default"]),
    prompt_tokens=st.integers(min_value=0, max_value=2**40),
    completion_tokens=st.integers(min_value=0, max_value=2**40),
    stream=st.booleans(),
    route=st.text(max_size=30),
    query=st.text(max_size=30),
    namespace=st.text(max_size=30),
    request=st.binary(max_size=2048),
    vary=st.sampled_from(["", "ab" * 32]),
    request_id=st.sampled_from(["", "req_" + "0f" * 16])
    | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:+=/-]{0,127}", fullmatch=True),
)
REQUEST_ID = "req_" + "5e" * 16


def framed(codec: int, raw: int, payload: bytes) -> bytes:
    return struct.pack(">BBI", FORMAT, codec, raw) + payload


class TestRoundTrip:
    @pytest.mark.parametrize("codec", [CODEC, PLAIN_CODEC, Codec(level=19)], ids=["1", "0", "19"])
    def test_an_entry_comes_back_equal(self, codec: Codec) -> None:
        assert codec.unpack(codec.pack(ENTRY)) == ENTRY

    def test_either_codec_reads_what_the_other_wrote(self) -> None:
        assert PLAIN_CODEC.unpack(CODEC.pack(ENTRY)) == ENTRY
        assert CODEC.unpack(PLAIN_CODEC.pack(ENTRY)) == ENTRY

    def test_compressed_entries_are_smaller_and_say_what_they_stand_for(self) -> None:
        plain, packed = PLAIN_CODEC.pack(ENTRY), CODEC.pack(ENTRY)
        assert packed[:2] == bytes([FORMAT, ZSTD]) and plain[:2] == bytes([FORMAT, PLAIN])
        assert len(packed) < len(plain) / 2
        assert raw_size(packed) == raw_size(plain) == len(plain) - 6

    def test_the_request_is_stored_as_its_bytes_not_escaped(self) -> None:
        assert ENTRY.request in PLAIN_CODEC.pack(ENTRY)
        assert ENTRY.body in PLAIN_CODEC.pack(ENTRY)

    @settings(max_examples=100, deadline=None)
    @given(entries)
    def test_any_entry_round_trips(self, entry: Entry) -> None:
        for codec in (CODEC, PLAIN_CODEC):
            back = codec.unpack(codec.pack(entry))
            assert back == entry
            assert type(back.body) is bytes and type(back.request) is bytes

    def test_defaults_round_trip(self) -> None:
        entry = Entry(b"", "application/json", "none", 0.0, "")
        assert CODEC.unpack(CODEC.pack(entry)) == entry

    def test_a_later_version_may_append_metadata(self) -> None:
        varied = ENTRY._replace(vary="ab" * 32, request_id=REQUEST_ID)
        assert CODEC.unpack(with_meta(PLAIN_CODEC.pack(varied), lambda m: [*m, "more"])) == varied

    def test_an_entry_without_keyed_headers_packs_as_it_always_did(self) -> None:
        """Entries written before keyed headers existed, and entries of requests with none,
        hold the same twelve fields: processes of either version read each other's."""
        payload = PLAIN_CODEC.pack(ENTRY)[6:]
        meta = orjson.loads(payload[4 : 4 + int.from_bytes(payload[:4], "big")])
        assert len(meta) == 12 and meta[-1] == ENTRY.namespace
        varied = PLAIN_CODEC.pack(ENTRY._replace(vary="ab" * 32))[6:]
        assert orjson.loads(varied[4 : 4 + int.from_bytes(varied[:4], "big")]) == [
            *meta,
            "ab" * 32,
        ]

    def test_a_request_id_alone_comes_after_an_empty_vary(self) -> None:
        """The fields a version appended are positional: an entry with a request id and no
        keyed headers holds both, the second version's `vary` empty; one written by that version
        (without a request id) reads with none."""
        named = ENTRY._replace(request_id=REQUEST_ID)
        assert meta_of(PLAIN_CODEC.pack(named))[12:] == ["", REQUEST_ID]
        assert CODEC.unpack(PLAIN_CODEC.pack(named)) == named
        older = with_meta(PLAIN_CODEC.pack(named), lambda m: m[:13])
        assert CODEC.unpack(older) == ENTRY

    @pytest.mark.parametrize(
        "stored",
        [
            pytest.param("req_1\r\nSet-Cookie: admin=1", id="header-injection"),
            pytest.param("x" * 129, id="too-long"),
            pytest.param(" req_1", id="leading-space"),
            pytest.param("req_\u00e9", id="not-ascii"),
            pytest.param(42, id="a-number"),
            pytest.param(None, id="null"),
        ],
    )
    def test_a_request_id_no_header_may_carry_is_dropped_on_reading(self, stored: Any) -> None:
        """A store another writer reaches may hold anything after the known fields: the entry
        is still served, without a request id, since this one ends up in a header."""
        blob = with_meta(PLAIN_CODEC.pack(ENTRY), lambda m: [*m, "", stored])
        assert CODEC.unpack(blob) == ENTRY
        legacy = orjson.dumps({**_legacy_meta(), "request_id": stored})
        assert CODEC.unpack(len(legacy).to_bytes(4, "big") + legacy + b"{}").request_id == ""


def meta_of(blob: bytes) -> Any:
    payload = blob[6:]
    return orjson.loads(payload[4 : 4 + int.from_bytes(payload[:4], "big")])


def with_meta(blob: bytes, change: Any) -> bytes:
    """A plain blob with its metadata list changed, as another version could write it."""
    payload = blob[6:]
    meta_end = 4 + int.from_bytes(payload[:4], "big")
    meta = orjson.dumps(change(orjson.loads(payload[4:meta_end])))
    changed = len(meta).to_bytes(4, "big") + meta + payload[meta_end:]
    return framed(PLAIN, len(changed), changed)


def _legacy_meta() -> dict[str, Any]:
    return {
        "content_type": "application/json",
        "fingerprint": "fp_a",
        "stored_at": 1.0,
        "model": "m",
    }


class TestFirstFormat:
    """Blobs written by the first format (tests/unit/data) stay readable, and so do blobs it
    would write now: a 4-byte length, then a JSON object, then the body."""

    def test_a_chat_entry_of_the_first_format_decodes(self) -> None:
        entry = CODEC.unpack((DATA / "entry_v1_chat.bin").read_bytes())
        assert (entry.fingerprint, entry.model, entry.stored_at) == (
            "fp_abc",
            "gpt-4o-mini",
            1764864000.5,
        )
        assert (entry.seed, entry.seed_source) == (12345, "default")
        assert (entry.prompt_tokens, entry.completion_tokens, entry.stream) == (31, 8, False)
        assert (entry.route, entry.query, entry.namespace) == ("/v1/chat/completions", "", "ns1")
        content = orjson.loads(entry.request)["messages"][0]["content"]
        assert content.endswith('"quoted" and a backslash \\ too.') and "café" in content
        assert orjson.loads(entry.body)["choices"][0]["message"]["content"].startswith("The lig")

    def test_a_streamed_entry_of_the_first_format_decodes(self) -> None:
        entry = CODEC.unpack((DATA / "entry_v1_stream.bin").read_bytes())
        assert entry.stream is True
        assert entry.content_type == "text/event-stream; charset=utf-8"
        assert entry.query == "api-version=2024-06-01"
        assert entry.body.endswith(b"data: [DONE]\n\n") and entry.body.count(b"data: ") == 4

    def test_first_format_entries_repack_into_the_new_one_unchanged(self) -> None:
        for name in ("entry_v1_chat.bin", "entry_v1_stream.bin"):
            old = CODEC.unpack((DATA / name).read_bytes())
            assert CODEC.unpack(CODEC.pack(old)) == old

    @pytest.mark.parametrize(
        "header",
        [
            pytest.param(b"[]", id="array"),
            pytest.param(b"null", id="null"),
            pytest.param(b"{}", id="missing-fields"),
            pytest.param(b'{"surprise": 1}', id="unknown-field"),
            pytest.param(b"hello", id="not-json"),
            pytest.param(
                b'{"content_type":"a","fingerprint":"f","stored_at":"yesterday","model":"m"}',
                id="wrong-types",
            ),
        ],
    )
    def test_a_bad_first_format_header_is_corrupt(self, header: bytes) -> None:
        with pytest.raises(CorruptEntry):
            CODEC.unpack(len(header).to_bytes(4, "big") + header + b"body")


class TestHostileBlobs:
    def test_a_decompression_bomb_is_refused_before_it_expands(self) -> None:
        bomb = zstandard.ZstdCompressor(level=1).compress(b"\x00" * (8 << 20))
        assert len(bomb) < 1024
        with pytest.raises(CorruptEntry, match="beyond the entry bound"):
            CODEC.unpack(framed(ZSTD, 8 << 20, bomb))

    def test_a_frame_that_claims_more_than_its_header_is_refused(self) -> None:
        bomb = zstandard.ZstdCompressor(level=1).compress(b"\x00" * (8 << 20))
        with pytest.raises(CorruptEntry, match="another size"):
            CODEC.unpack(framed(ZSTD, 100, bomb))

    def test_a_frame_without_its_size_is_refused(self) -> None:
        unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100)
        with pytest.raises(CorruptEntry):
            CODEC.unpack(framed(ZSTD, 100, unsized))

    @pytest.mark.parametrize("version", [1, 3, 0x7F, 0xFF])
    def test_an_unknown_version_is_corrupt(self, version: int) -> None:
        blob = bytes([version]) + CODEC.pack(ENTRY)[1:]
        with pytest.raises(CorruptEntry):
            CODEC.unpack(blob)

    def test_an_unknown_dictionary_is_corrupt(self) -> None:
        blob = framed(ZSTD_DICTIONARY, 10, struct.pack(">I", 42) + b"\x28\xb5\x2f\xfd")
        with pytest.raises(CorruptEntry):
            CODEC.unpack(blob)

    @pytest.mark.parametrize("codec", [CODEC, PLAIN_CODEC], ids=["zstd", "plain"])
    def test_every_truncation_is_corrupt(self, codec: Codec) -> None:
        packed = codec.pack(ENTRY)
        for cut in range(len(packed)):
            with pytest.raises(CorruptEntry):
                codec.unpack(packed[:cut])

    def test_a_size_that_lies_is_corrupt(self) -> None:
        packed = PLAIN_CODEC.pack(ENTRY)
        with pytest.raises(CorruptEntry):
            CODEC.unpack(framed(PLAIN, raw_size(packed) + 1, packed[6:]))

    @pytest.mark.parametrize(
        "meta",
        [b"{}", b"[1]", b'["a","f","yesterday","m",null,null,0,0,false,"","",""]', b"nul"],
        ids=["object", "short", "wrong-type", "not-json"],
    )
    def test_bad_metadata_is_corrupt(self, meta: bytes) -> None:
        payload = len(meta).to_bytes(4, "big") + meta + b"\x00\x00\x00\x00body"
        with pytest.raises(CorruptEntry):
            CODEC.unpack(framed(PLAIN, len(payload), payload))

    @pytest.mark.parametrize(
        "fields",
        [
            {"fingerprint": "fp\r\nX-Injected: 1"},
            {"fingerprint": ""},
            {"fingerprint": "f" * 129},
            {"content_type": "text/plain\nX-Injected: 1"},
            {"content_type": "t" * 8191},
            {"prompt_tokens": -1},
            {"completion_tokens": 2**63},
            {"stored_at": LAST_DATE},
            {"stored_at": -1.0},
        ],
    )
    @pytest.mark.parametrize("codec", [CODEC, PLAIN_CODEC], ids=["zstd", "plain"])
    def test_fields_no_answer_has_are_corrupt(self, codec: Codec, fields: dict[str, Any]) -> None:
        """They reach a HIT's headers and metrics as they are: a header split in two, a
        counter that goes down."""
        with pytest.raises(CorruptEntry):
            codec.unpack(codec.pack(ENTRY._replace(**fields)))

    def test_fields_no_answer_has_are_corrupt_in_the_first_format_too(self) -> None:
        meta = b'{"content_type":"a","fingerprint":"a\\r\\nb","stored_at":1.0,"model":"m"}'
        with pytest.raises(CorruptEntry):
            CODEC.unpack(len(meta).to_bytes(4, "big") + meta + b"body")

    def test_a_request_length_beyond_the_payload_is_corrupt(self) -> None:
        payload = PLAIN_CODEC.pack(ENTRY._replace(request=b""))[6:]
        meta_end = 4 + int.from_bytes(payload[:4], "big")
        lying = payload[:meta_end] + (1 << 30).to_bytes(4, "big") + payload[meta_end + 4 :]
        with pytest.raises(CorruptEntry):
            CODEC.unpack(framed(PLAIN, len(lying), lying))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=96))
    def test_random_bytes_never_raise_anything_else(self, blob: bytes) -> None:
        with contextlib.suppress(CorruptEntry):
            CODEC.unpack(blob)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=0), st.binary(min_size=1, max_size=8))
    def test_flipped_bytes_never_raise_anything_else(self, seed: int, noise: bytes) -> None:
        packed = bytearray(CODEC.pack(ENTRY))
        at = seed % len(packed)
        packed[at : at + len(noise)] = noise
        with contextlib.suppress(CorruptEntry):
            CODEC.unpack(bytes(packed))


def prose_entry(number: int) -> Entry:
    """Entries alike in shape and vocabulary, as a real cache's are: what a dictionary learns."""
    words = PROSE.split()
    text = " ".join(words[(number * 7 + i) % len(words)] for i in range(120))
    return ENTRY._replace(request=orjson.dumps({"messages": [{"content": text}]}), seed=number)


class TestDictionary:
    def test_a_codec_keeps_payloads_to_train_from_until_it_has_enough(self) -> None:
        codec = Codec(level=1, samples=3)
        for number in range(5):
            codec.pack(prose_entry(number))
        assert codec.samples_ready and len(codec.samples) == 3
        assert len(codec.take_samples()) == 3
        assert not codec.samples_ready and codec.samples == []
        codec.pack(prose_entry(9))
        assert codec.samples == []  # not collecting again until asked
        codec.collect(1)
        codec.pack(prose_entry(9))
        assert codec.samples_ready

    def test_large_entries_are_not_kept_to_train_from(self) -> None:
        codec = Codec(level=1, samples=3)
        codec.pack(ENTRY._replace(body=bytes(SAMPLE_BYTES)))
        codec.pack(ENTRY)
        assert len(codec.samples) == 1

    def test_compression_off_keeps_no_samples(self) -> None:
        codec = Codec(level=0, samples=3)
        for number in range(5):
            codec.pack(prose_entry(number))
        assert not codec.samples_ready and codec.samples == []

    def test_entries_name_the_dictionary_and_round_trip_through_any_codec_that_holds_it(
        self,
    ) -> None:
        trainer = Codec(level=1, samples=200)
        for number in range(200):
            trainer.pack(prose_entry(number))
        data = train(trainer.take_samples(), size=4096)
        number = trainer.use(data)
        assert number == dictionary_id(data) and trainer.dictionary == number
        packed = trainer.pack(prose_entry(500))
        assert packed[:2] == bytes([FORMAT, ZSTD_DICTIONARY])
        assert struct.unpack_from(">I", packed, 6)[0] == number
        assert len(packed) < len(CODEC.pack(prose_entry(500)))
        reader = Codec(level=0)
        with pytest.raises(UnknownDictionary) as unknown:
            reader.unpack(packed)
        assert unknown.value.number == number
        assert isinstance(unknown.value, CorruptEntry)
        reader.use(data)
        assert reader.unpack(packed) == prose_entry(500)
        assert reader.pack(ENTRY)[:2] == bytes([FORMAT, PLAIN])  # off stays off
        assert trainer.unpack(CODEC.pack(ENTRY)) == ENTRY  # entries without one still read

    def test_a_truncated_dictionary_entry_is_corrupt(self) -> None:
        codec = Codec(level=1)
        codec.use(train([prose_entry(n).request for n in range(200)], size=4096))
        packed = codec.pack(prose_entry(1))
        for cut in range(len(packed)):
            with pytest.raises(CorruptEntry):
                codec.unpack(packed[:cut])

    @pytest.mark.parametrize(
        "data",
        [b"\x37\xa4\x30\xec" + b"\xff" * 64, b"\x37\xa4\x30\xec" + bytes(2 << 20)],
        ids=["zstd-magic-then-garbage", "too-large"],
    )
    def test_a_dictionary_that_is_none_is_refused_and_changes_nothing(self, data: bytes) -> None:
        codec = Codec(level=1, samples=5)
        with pytest.raises(zstandard.ZstdError):
            codec.use(data)
        assert codec.dictionary is None and not codec.knows(dictionary_id(data))
        assert codec.unpack(codec.pack(ENTRY)) == ENTRY
