"""The Responses id index under attack, in `shared` scope, against a gateway that keeps each
response for the key that made it (a stranger's `previous_response_id` is a 400, as OpenAI's):
an index left pointing at an entry that no longer holds the id, and a second answer claiming
an id another tenant's answer holds, must neither continue nor fetch the owner's response for
anyone else."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import orjson

from tests.fixtures_procs import Proxy, ProxyFactory
from tests.hostile import Received, Scripted, http_answer

OWNER = "sk-index-owner-0123456789"
OTHER = "sk-index-other-0123456789"
KEYS = {OWNER: "owner", OTHER: "other"}  # named in answers, never echoed (never stored then)
MODEL = "gpt-4o-mini"
LIAR = "b-own-backend"  # a model the gateway routes to a server the other tenant runs
QUESTION = {"model": MODEL, "input": "Tell me a secret."}
JSON = "Content-Type: application/json"


def _response(body: dict[str, Any], rid: str, text: str) -> bytes:
    message = {
        "type": "message",
        "id": "msg_" + secrets.token_hex(8),
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    usage = {"input_tokens": 3, "output_tokens": 3, "total_tokens": 6}
    return orjson.dumps(
        {
            "id": rid,
            "object": "response",
            "status": "completed",
            "model": body.get("model"),
            "output": [message],
            "previous_response_id": body.get("previous_response_id"),
            "usage": usage,
        }
    )


def _gateway() -> Scripted:
    owners: dict[str, str] = {}

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        error = orjson.dumps({"error": {"message": "bad key", "code": "invalid_api_key"}})
        if key not in KEYS:
            answer = http_answer(error, JSON, status="401 Unauthorized")
        elif request.request_line.startswith("GET /v1/models"):
            answer = http_answer(b'{"object":"list","data":[{"id":"gpt-4o-mini"}]}', JSON)
        else:
            body = orjson.loads(request.body)
            previous = body.get("previous_response_id")
            if previous is not None and owners.get(previous) != key:
                refused = {
                    "error": {
                        "message": f"Previous response with id '{previous}' not found.",
                        "type": "invalid_request_error",
                        "code": "previous_response_not_found",
                    }
                }
                answer = http_answer(orjson.dumps(refused), JSON, status="400 Bad Request")
            else:
                lies = body.get("model") == LIAR
                rid = body["input"] if lies else "resp_" + secrets.token_hex(24)
                if not lies:
                    owners[rid] = key
                who = KEYS[key]
                said = f"continuing {previous} for {who}" if previous else f"secret of {who}"
                answer = http_answer(_response(body, rid, said), JSON)
        writer.write(answer)
        await writer.drain()

    return Scripted(write)


def _ask(proxy: Proxy, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        proxy.v1 + "/responses",
        json=body,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=20,
    )


def _chain(previous: str) -> dict[str, Any]:
    return {"model": MODEL, "input": "Say it again.", "previous_response_id": previous}


def _created(proxy: Proxy) -> tuple[str, httpx.Response]:
    """The owner's response and its stored continuation, which the owner's next chain HITs."""
    first = _ask(proxy, OWNER, QUESTION)
    assert first.status_code == 200 and first.headers["X-Repro-Cache"] == "MISS"
    rid = first.json()["id"]
    continued = _ask(proxy, OWNER, _chain(rid))
    assert continued.status_code == 200 and continued.headers["X-Repro-Cache"] == "MISS"
    assert _ask(proxy, OWNER, _chain(rid)).headers["X-Repro-Cache"] == "HIT"
    return rid, continued


def _refused_upstream(proxy: Proxy, key: str, body: dict[str, Any]) -> None:
    got = _ask(proxy, key, body)
    assert got.status_code == 400, got.text
    assert got.json()["error"]["code"] == "previous_response_not_found"
    assert got.headers["X-Repro-Cache"] == "MISS"


def test_a_refreshed_answer_opens_no_chain_on_the_id_it_replaced(
    start_proxy: ProxyFactory,
) -> None:
    """The owner refreshes its question (`no-cache`): a new id replaces the old one in the
    entry the old id's index still points at. Another tenant asking the same question is
    answered with the new response only. Before: the index was followed to that entry without
    checking it still held the old id, and the other tenant, holding the entry, got the owner's
    stored continuation of the old one as a HIT, where the gateway refuses it."""
    with _gateway() as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
        rid, _ = _created(proxy)
        refreshed = _ask(proxy, OWNER, QUESTION, **{"Cache-Control": "no-cache"})
        assert refreshed.headers["X-Repro-Cache"] == "REFRESH"
        assert refreshed.json()["id"] != rid
        shared = _ask(proxy, OTHER, QUESTION)
        assert shared.headers["X-Repro-Cache"] == "HIT"
        assert shared.json()["id"] == refreshed.json()["id"]
        _refused_upstream(proxy, OTHER, _chain(rid))
        _refused_upstream(proxy, OTHER, _chain(rid))  # and not stored for it either
        assert _ask(proxy, OWNER, _chain(rid)).status_code == 200  # the owner's own, upstream


def test_an_answer_claiming_another_tenants_id_takes_over_nothing(
    start_proxy: ProxyFactory,
) -> None:
    """A backend the other tenant picks by the body's model answers with the owner's id.
    Before: that answer's index replaced the owner's, so the other tenant, holding its own
    entry, was answered the owner's stored continuation, and the owner's own fetch of its
    response (only-if-cached) found the liar's entry instead and was a 504."""
    with _gateway() as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
        rid, continued = _created(proxy)
        lie = _ask(proxy, OTHER, {"model": LIAR, "input": rid})
        assert lie.status_code == 200 and lie.json()["id"] == rid
        _refused_upstream(proxy, OTHER, _chain(rid))
        fetched = httpx.get(
            f"{proxy.v1}/responses/{rid}",
            headers={"Authorization": f"Bearer {OWNER}", "Cache-Control": "only-if-cached"},
            timeout=20,
        )
        assert fetched.status_code == 200 and fetched.headers["X-Repro-Cache"] == "HIT"
        assert "secret of owner" in fetched.text
        again = _ask(proxy, OWNER, _chain(rid))
        assert again.headers["X-Repro-Cache"] == "HIT"
        assert again.json() == continued.json()
