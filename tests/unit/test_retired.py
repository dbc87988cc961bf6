"""What a recording keeps of the answers the upstream deleted (`Retired`), and the cassette lines
it adds (`cassette.lines`): in process, a real memory store and codec."""

from __future__ import annotations

import asyncio

import pytest

from proxy.config import Settings
from proxy.core.codec import Codec
from proxy.core.policy import CacheMode
from proxy.server.app import _recording
from proxy.store import cassette
from proxy.store.base import Selector
from proxy.store.memory import MemoryStore
from proxy.store.retired import Retired
from tests.unit.test_cassette_files import line

CODEC = Codec(level=1)


def test_a_key_kept_again_replaces_what_it_held_and_counts_once() -> None:
    retired = Retired(max_bytes=100)
    retired.keep("k", {"fp_a": b"x" * 40})
    retired.keep("k", {"fp_b": b"y" * 40})
    assert list(retired.entries(())) == [("k", "fp_b", b"y" * 40)]
    retired.keep("j", {"fp_a": b"z" * 40})  # 41 + 41 bytes: within the bound
    assert retired.left_out == 0 and len(list(retired.entries(()))) == 2


def test_past_its_bound_a_value_is_left_out_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    retired = Retired(max_bytes=100)
    retired.keep("k", {"fp_a": b"x" * 90})
    retired.keep("j", {"fp_a": b"z" * 20})
    assert retired.left_out == 1
    assert [key for key, _, _ in retired.entries(())] == ["k"]
    assert "left out of the cassette" in caplog.text and "zzz" not in caplog.text


def test_a_key_the_store_holds_again_is_not_given_back() -> None:
    retired = Retired()
    retired.keep("k", {"fp_a": b"old"})
    retired.keep("j", {"fp_a": b"gone"})
    assert list(retired.entries({"k"})) == [("j", "fp_a", b"gone")]


def test_the_cassette_holds_a_retired_answer_unless_the_store_has_a_newer_one() -> None:
    async def exported(store_prompt: str | None) -> list[bytes]:
        store = MemoryStore()
        retired = Retired()
        [deleted] = cassette.parse([line("Deleted.", "Old answer.")], "shared")
        retired.keep(deleted.key, {deleted.entry.fingerprint: CODEC.pack(deleted.entry)})
        if store_prompt is not None:
            [kept] = cassette.parse([line(store_prompt, "New answer.", stored_at=2.0)], "shared")
            await cassette.load(store, [kept], CODEC)
        return [item async for item in cassette.lines(store, Selector(), CODEC, None, retired)]

    [alone] = asyncio.run(exported(None))
    assert b"Old answer." in alone
    [newer] = asyncio.run(exported("Deleted."))  # the same request, answered again
    assert b"New answer." in newer
    both = asyncio.run(exported("Another."))
    assert sorted(b"Old answer." in item for item in both) == [False, True]


@pytest.mark.parametrize(
    ("cassette", "mode", "keeps"),
    [
        (None, CacheMode.READWRITE, False),  # deleting is how a user makes the proxy forget
        ("llm.jsonl", CacheMode.REPLAY, False),  # replay writes no cassette
        ("llm.jsonl", CacheMode.READWRITE, True),
        ("llm.jsonl", CacheMode.RECORD, True),
    ],
)
def test_only_a_process_writing_a_cassette_keeps_deleted_answers(
    cassette: str | None, mode: CacheMode, keeps: bool
) -> None:
    assert (_recording(Settings(cassette=cassette, cache_mode=mode)) is not None) is keeps
