"""Deletions through a recording proxy and a replaying one (`--cassette`), with the official SDK
and raw HTTP: what a test deletes stays in its cassette, and replay answers the fetch and the
deletion of an id the caller holds, as the upstream did, without changing what it replays; any
other id is a cache miss that says nothing of other callers' answers."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import orjson
import pytest
from openai import NotFoundError, OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim

KEY = "sk-recorder"


def stop(proxy: Proxy) -> None:
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(timeout=15) == 0


def client(proxy: Proxy, key: str = KEY) -> OpenAI:
    return OpenAI(base_url=proxy.v1, api_key=key, max_retries=0)


def lines(tape: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in tape.read_bytes().splitlines()]


def recorded(start_proxy: ProxyFactory, tape: Path, *flags: str) -> tuple[str, str]:
    """A response and a stored chat completion made, and deleted, through a recording proxy;
    their ids."""
    recorder = start_proxy("--cassette", str(tape), "--cache-scope", "shared", *flags)
    with client(recorder) as sdk:
        made = sdk.responses.create(model="gpt-4o-mini", input="Name a colour.")
        chat = sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Name a river."}], store=True
        )
        assert sdk.chat.completions.retrieve(chat.id).id == chat.id  # the upstream's
        sdk.responses.delete(made.id)
        assert sdk.chat.completions.delete(chat.id).deleted
        with pytest.raises(NotFoundError):  # the upstream deleted it, and the proxy follows
            sdk.responses.retrieve(made.id)
    stop(recorder)
    return made.id, chat.id


def replayer(start_proxy: ProxyFactory, tape: Path) -> Proxy:
    return start_proxy("--cassette", str(tape), "--cache-scope", "shared", "--cache-mode", "replay")


def delete(proxy: Proxy, path: str, key: str = KEY) -> httpx.Response:
    return httpx.delete(proxy.v1 + path, headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_deleted_answers_are_recorded_and_their_deletion_replayed(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path, request: pytest.FixtureRequest, store: str
) -> None:
    tape = tmp_path / "llm.jsonl"
    flags = ("--store", request.getfixturevalue("redis_url")) if store == "redis" else ()
    response_id, chat_id = recorded(start_proxy, tape, *flags)
    assert sorted(str(line["route"]) for line in lines(tape)) == [
        "/v1/chat/completions",
        "/v1/responses",
    ]
    sim.reset()
    proxy = replayer(start_proxy, tape)
    try:
        with client(proxy) as sdk:
            made = sdk.responses.create(model="gpt-4o-mini", input="Name a colour.")
            assert made.id == response_id
            chat = sdk.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Name a river."}],
                store=True,
            )
            assert chat.id == chat_id
            kept = sdk.chat.completions.retrieve(chat_id)
            assert kept.id == chat_id and kept.choices[0].message == chat.choices[0].message
            assert sdk.responses.delete(made.id) is None
            gone = sdk.chat.completions.delete(chat.id)
            assert (gone.id, gone.deleted) == (chat_id, True)
            assert gone.object == "chat.completion.deleted"
            # Replay changes nothing: the same requests, and fetches, answer as before.
            assert sdk.responses.retrieve(made.id).id == response_id
            assert sdk.responses.create(model="gpt-4o-mini", input="Name a colour.").id == made.id
        raw = delete(proxy, f"/responses/{response_id}")
        assert raw.status_code == 200
        assert raw.json() == {"id": response_id, "object": "response.deleted", "deleted": True}
        assert raw.headers["X-Repro-Cache"] == "HIT" and raw.headers["X-Repro-Key"]
        assert raw.headers["Content-Type"] == "application/json"
        fetched = httpx.get(
            f"{proxy.v1}/chat/completions/{chat_id}", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert fetched.headers["X-Repro-Cache"] == "HIT"
        assert fetched.json()["id"] == chat_id and fetched.json()["object"] == "chat.completion"
        again = delete(proxy, f"/chat/completions/{chat_id}")
        assert again.json() == {"id": chat_id, "object": "chat.completion.deleted", "deleted": True}
    finally:
        assert sim.requests() == []  # replay reached the upstream for none of it


def test_an_answer_made_again_after_its_deletion_is_recorded_once(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cassette", str(tape), "--cache-scope", "shared")
    with client(recorder) as sdk:
        first = sdk.responses.create(model="gpt-4o-mini", input="Name a colour.")
        sdk.responses.delete(first.id)
        second = sdk.responses.create(model="gpt-4o-mini", input="Name a colour.")
        assert second.id != first.id  # the proxy forgot the deleted one: the upstream made anew
    stop(recorder)
    [line] = lines(tape)
    assert orjson.loads(str(line["body"]))["id"] == second.id


def test_replay_tells_no_caller_of_an_id_it_does_not_hold(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """The attacker's side: a caller never answered with the response (the shared partition
    lets only those reach a response by its id, proxy/server/chains.py), an id never recorded,
    a malformed or overlong one, or an ambiguous api-version, each get the fetch's cache miss:
    final (no retry), quoting at most 128 characters of the id, and nothing deleted. A stored
    chat completion likewise: a caller who only learnt its id neither reads it nor hears of its
    deletion, until it is answered with it (by asking the request that made it)."""
    tape = tmp_path / "llm.jsonl"
    response_id, chat_id = recorded(start_proxy, tape)
    proxy = replayer(start_proxy, tape)
    with client(proxy) as sdk:  # the owner is answered with it: its holder
        sdk.responses.create(model="gpt-4o-mini", input="Name a colour.")
    probes = [
        (f"/responses/{response_id}", "sk-somebody-else"),
        ("/responses/resp_never_recorded", KEY),
        (f"/chat/completions/{response_id}", KEY),  # a response's id is no chat completion's
        ("/responses/" + "r" * 5000, KEY),
        ("/responses/bad%0d%0aid", KEY),
        (f"/responses/{response_id}?api-version=1&api-version=2", KEY),
    ]
    chat_probes = [(f"/chat/completions/{chat_id}", "sk-somebody-else")]
    fetches = [
        *chat_probes,
        (f"/chat/completions/{response_id}", KEY),
        ("/chat/completions/chatcmpl-never", KEY),
        ("/chat/completions/" + "r" * 5000, KEY),
    ]
    asked = [(httpx.delete, *probe) for probe in probes + chat_probes]
    for asks, path, key in asked + [(httpx.get, *fetch) for fetch in fetches]:
        answer = asks(proxy.v1 + path, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert answer.status_code == 504, path
        error = answer.json()["error"]
        assert error["code"] == "cache_miss" and answer.headers["x-should-retry"] == "false"
        assert "r" * 129 not in error["message"]
        assert answer.headers["X-Repro-Cache"] == "MISS"
    owner = delete(proxy, f"/responses/{response_id}")
    assert owner.status_code == 200 and owner.json()["deleted"] is True
    with client(proxy, "sk-somebody-else") as sdk:  # asks what made it: now a holder
        asked = [{"role": "user", "content": "Name a river."}]
        assert sdk.chat.completions.create(model="gpt-4o-mini", messages=asked, store=True).id
        assert sdk.chat.completions.retrieve(chat_id).id == chat_id
        assert sdk.chat.completions.delete(chat_id).deleted


def test_recording_beside_a_cassette_answers_its_ids_and_passes_others_on(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    """A proxy recording with a cassette loaded (`--cassette`, read-write) answers a fetch or a
    deletion of an object the cassette holds as replay does, without the upstream, which
    deleted it when the cassette was recorded; an id the cassette lacks goes upstream as ever."""
    tape = tmp_path / "llm.jsonl"
    response_id, chat_id = recorded(start_proxy, tape)
    before = tape.read_bytes()
    sim.reset()
    proxy = start_proxy("--cassette", str(tape), "--cache-scope", "shared")
    # Before anyone here was answered with it, the response is not the caller's: the upstream's
    # to say (it deleted it), as any id is.
    assert delete(proxy, f"/responses/{response_id}", "sk-stranger").status_code == 404
    with client(proxy) as sdk:
        made = sdk.responses.create(model="gpt-4o-mini", input="Name a colour.")
        assert made.id == response_id
        assert sdk.responses.retrieve(response_id).id == response_id
        sdk.responses.delete(response_id)
        asked = [{"role": "user", "content": "Name a river."}]
        chat = sdk.chat.completions.create(model="gpt-4o-mini", messages=asked, store=True)
        assert chat.id == chat_id
        assert sdk.chat.completions.delete(chat_id).deleted
        with pytest.raises(NotFoundError):  # not the cassette's: the upstream says
            sdk.responses.retrieve("resp_not_in_the_cassette")
    by_id = [  # the key checks' requests aside
        r["path"]
        for r in sim.requests()
        if r["path"].startswith(("/v1/responses/", "/v1/chat/completions/"))
    ]
    assert by_id == [f"/v1/responses/{response_id}", "/v1/responses/resp_not_in_the_cassette"]
    stop(proxy)
    assert tape.read_bytes() == before
