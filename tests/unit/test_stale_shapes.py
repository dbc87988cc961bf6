"""Stored answers a client cannot read are never served, whoever stored them: an older proxy
(before a whole answer's shape was checked at write), a cassette recorded then, or another
writer of the store. The decoded-entry memo checks each decoding once against the request
reading it (`caching.decoded`); one that fails reads as absent, and stays so while its blob does.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.core.call import Asked, Call, prepare_with
from proxy.core.codec import Codec
from proxy.core.entry import CorruptEntry, Entry
from proxy.server.caching import decoded
from proxy.server.context import entry_memo


class Counting(Codec):
    def __init__(self) -> None:
        super().__init__()
        self.unpacked = 0

    def unpack(self, blob: bytes) -> Entry:
        self.unpacked += 1
        return super().unpack(blob)


def call(route: str, body: dict[str, Any]) -> Call:
    asked = Asked.of(route, "", orjson.dumps(body), CIMultiDictProxy(CIMultiDict()))
    return prepare_with(Settings(), "t", asked)


def stored(answer: object, stream: bool = False) -> bytes:
    """A blob as any version of the proxy packs an entry: the codec's format, whatever body."""
    body = answer if isinstance(answer, bytes) else orjson.dumps(answer)
    content_type = "text/event-stream" if stream else "application/json"
    return Codec().pack(Entry(body, content_type, "fp_a", 1.0, "m", stream=stream))


def served(asking: Call, blob: bytes) -> bool:
    try:
        decoded(Codec(), entry_memo(), asking, "fp_a", blob)
    except CorruptEntry:
        return False
    return True


CHAT = call("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "q"}]})
MESSAGE = {"role": "assistant", "content": "Hi."}


def choices(*items: dict[str, Any], **beside: Any) -> dict[str, Any]:
    return {"object": "chat.completion", "choices": list(items), **beside}


def test_a_chat_answer_without_its_message_is_not_served() -> None:
    assert served(CHAT, stored(choices({"index": 0, "message": MESSAGE})))
    for bad in (
        choices({"index": 0, "message": None}),
        choices({"index": 0, "finish_reason": "stop"}),
        choices({"index": 0, "message": MESSAGE}, {"index": 1, "message": "Hi."}),
        choices({"index": 0, "message": MESSAGE}, error={"message": "overloaded"}),
        {"choices": None},
        {"error": {"message": "rate limited"}},  # an error some gateways send with a 200
        b"not json",
        b"[]",
    ):
        assert not served(CHAT, stored(bad)), bad


def test_a_completion_without_its_text_is_not_served() -> None:
    completions = call("/v1/completions", {"model": "m", "prompt": "p"})
    assert served(completions, stored({"choices": [{"index": 0, "text": ""}]}))
    for bad in ({"index": 0}, {"index": 0, "text": None}, {"index": 0, "message": MESSAGE}):
        assert not served(completions, stored({"choices": [bad]})), bad


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_an_embedding_without_its_vector_as_asked_is_not_served(encoding: str) -> None:
    embeddings = call("/v1/embeddings", {"model": "m", "input": "i", "encoding_format": encoding})
    good, other = ([0.5, 1.0], "AAAAPw==") if encoding == "float" else ("AAAAPw==", [0.5, 1.0])
    assert served(embeddings, stored({"data": [{"index": 0, "embedding": good}]}))
    for bad in (None, other, [], ""):
        assert not served(embeddings, stored({"data": [{"index": 0, "embedding": bad}]})), bad
    assert not served(embeddings, stored({"object": "list", "data": []}))


def test_a_response_not_completed_is_not_served() -> None:
    asking = call("/v1/responses", {"model": "m", "input": "i"})
    completed = {"object": "response", "id": "resp_1", "status": "completed", "output": []}
    assert served(asking, stored(completed))
    for bad in ({"status": "incomplete"}, {"status": "failed"}, {"output": None}):
        assert not served(asking, stored(completed | bad)), bad


def test_a_stream_is_served_only_to_a_stream_and_a_whole_answer_only_to_a_whole_request() -> None:
    """The key names whether a stream was asked; an entry of the other kind under it (another
    writer's) is one the client cannot read either: SSE frames to a JSON parser, or JSON to an
    SSE reader."""
    streaming = call("/v1/chat/completions", {"model": "m", "messages": [], "stream": True})
    frames = b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\ndata: [DONE]\n\n'
    assert served(streaming, stored(frames, stream=True))
    assert not served(streaming, stored(choices({"index": 0, "message": MESSAGE})))
    assert not served(CHAT, stored(frames, stream=True))


def test_a_misshapen_entry_is_checked_once_while_its_blob_stays() -> None:
    """The check belongs to the decoding: a HIT on a remembered entry pays nothing for it, and
    a misshapen blob is neither decompressed nor parsed again on each request for its key."""
    codec, memo = Counting(), entry_memo()
    bad = stored(choices({"index": 0, "message": None}))
    for _ in range(3):
        with pytest.raises(CorruptEntry):
            decoded(codec, memo, CHAT, "fp_a", bytes(bad))
    assert codec.unpacked == 1
    good = stored(choices({"index": 0, "message": MESSAGE}))  # the next upstream answer
    assert decoded(codec, memo, CHAT, "fp_a", good).body == orjson.dumps(
        choices({"index": 0, "message": MESSAGE})
    )
    assert decoded(codec, memo, CHAT, "fp_a", bytes(good)) is not None
    assert codec.unpacked == 2


def test_a_misshapen_entry_of_many_mib_is_decoded_once_too() -> None:
    """An older proxy's large answer (embeddings of a long batch) with one vector missing:
    remembered by its bytes, it was over the unreadable memo's bound and was decompressed and
    parsed again on every request for its key, holding the loop each time."""
    embeddings = call("/v1/embeddings", {"model": "m", "input": ["i"] * 2})
    items = [{"index": 0, "embedding": [0.123456789] * 200_000}, {"index": 1, "embedding": None}]
    codec, memo = Counting(), entry_memo()
    blob = Codec(level=0).pack(  # stored plain: as large as the answer
        Entry(orjson.dumps({"data": items}), "application/json", "fp_a", 1.0, "m")
    )
    assert len(blob) > 2 << 20
    for _ in range(3):
        with pytest.raises(CorruptEntry):
            decoded(codec, memo, embeddings, "fp_a", bytes(blob))
    assert codec.unpacked == 1
