"""Request headers the key reads, against a real proxy process: a gateway's routing header
(Portkey's `x-portkey-custom-host`, or one no list knows) keys the answer it routed, so one
tenant's routed answer never reaches another; what SDKs and tracing send per call does not."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from bench.procs import wait_until
from tests.e2e.test_unkeyed_inputs import (
    answering_with,
    ask_as,
    content_of,
)
from tests.fixtures_procs import ProxyFactory
from tests.hostile import CHAT, STREAM, Received, Scripted, Writer, completion, http_answer

KEYS = {"Bearer sk-attacker", "Bearer sk-victim"}
MODELS = b'{"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]}'
REFUSAL = b'{"error": {"message": "bad key", "type": "invalid_request_error", "code": null}}'


def routing_gateway(*routing: str) -> Writer:
    """A gateway that asks another backend when a request names one in any of the `routing`
    headers (the attacker's server, answering "poisoned"), and its own model otherwise. Its
    model list answers the two real keys only, so each tenant's key check passes and a made-up
    key's does not: the victim does read the shared cache."""

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        if request.request_line.startswith("GET"):
            known = request.headers.get("authorization") in KEYS
            status = "200 OK" if known else "401 Unauthorized"
            answer = http_answer(
                MODELS if known else REFUSAL, "Content-Type: application/json", status=status
            )
        else:
            routed = any(name in request.headers for name in routing)
            answer = http_answer(
                completion("poisoned" if routed else "plain"), "Content-Type: application/json"
            )
        writer.write(answer)
        await writer.drain()

    return write


def ask(
    proxy_v1: str,
    key: str,
    extra: dict[str, str],
    body: bytes = CHAT,
    route: str = "/chat/completions",
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **extra}
    return httpx.post(proxy_v1 + route, content=body, headers=headers, timeout=10)


def posts(upstream: Scripted) -> list[Received]:
    return [r for r in upstream.received if r.request_line.startswith("POST")]


ROUTING = [("x-portkey-custom-host", "https://evil.example"), ("X-Made-Up-Route", "2")]


@pytest.mark.parametrize(("name", "value"), ROUTING, ids=[name for name, _ in ROUTING])
def test_in_shared_scope_one_tenants_routing_header_never_poisons_another_tenants_answer(
    start_proxy: ProxyFactory, name: str, value: str
) -> None:
    """The attacker, a tenant with a key the upstream accepts, asks a common prompt with a
    header that makes the gateway ask its own server; the victim asks the same prompt plainly
    and must get the gateway's own answer. A header no list knows is keyed too (deny by
    default); identical values of it still share one answer."""
    with Scripted(routing_gateway(name.lower())) as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
        poison = ask(proxy.v1, "sk-attacker", {name: value})
        poison_again = ask(proxy.v1, "sk-attacker", {name: value})
        victim = ask(proxy.v1, "sk-victim", {})
        victim_again = ask(proxy.v1, "sk-victim", {})
        other_value = ask(proxy.v1, "sk-victim", {name: value + "0"})
    assert content_of(poison) == content_of(poison_again) == "poisoned"
    assert content_of(victim) == content_of(victim_again) == "plain"
    outcomes = [r.headers["x-repro-cache"] for r in (poison, poison_again, victim, victim_again)]
    assert outcomes == ["MISS", "HIT", "MISS", "HIT"]
    assert victim.headers["x-repro-key"] != poison.headers["x-repro-key"]
    assert other_value.headers["x-repro-cache"] == "MISS"
    assert other_value.headers["x-repro-key"] not in {
        victim.headers["x-repro-key"],
        poison.headers["x-repro-key"],
    }
    assert [r.headers.get(name.lower()) for r in posts(upstream)] == [value, None, value + "0"]


def poisoned_then_asked_plainly(
    start_proxy: ProxyFactory, routed: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    """In `shared` scope, the attacker asks with `routed` (its one header is what the gateway
    routes by), then the victim asks plainly: the victim must get the plain answer, a MISS."""
    ((name, _),) = routed.items()
    with Scripted(routing_gateway(name.lower())) as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
        poison = ask(proxy.v1, "sk-attacker", routed)
        victim = ask(proxy.v1, "sk-victim", {})
    assert [content_of(poison), content_of(victim)] == ["poisoned", "plain"]
    assert victim.headers["x-repro-cache"] == "MISS"
    return poison, victim


def test_in_shared_scope_a_header_only_named_like_a_credential_is_keyed(
    start_proxy: ProxyFactory,
) -> None:
    """Cloudflare AI Gateway's `cf-aig-cache-key` names the gateway's own cache entry: the
    attacker fills it with a prompt of its own, then asks the victim's prompt under that
    name and gets its own answer back. Its name holds the word `key`, so it reads as a
    credential, but it is no credential any list names, and in `shared` scope a name read
    so wrongly must split the cache, never join two requests."""
    poison, victim = poisoned_then_asked_plainly(start_proxy, {"cf-aig-cache-key": "planted"})
    assert victim.headers["x-repro-key"] != poison.headers["x-repro-key"]


def test_a_keyed_header_that_connection_drops_is_not_keyed_by_the_value_never_sent(
    start_proxy: ProxyFactory,
) -> None:
    """A header named in `Connection` is hop-by-hop and never forwarded: keyed by its value all
    the same, the upstream's answer to a request without it would be stored under the key of
    a request with it, and the next tenant asking through that route (here in `shared` scope)
    would get the unrouted answer."""
    route = {"X-Made-Up-Route": "2"}
    with Scripted(routing_gateway("x-made-up-route")) as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
        dropped = ask(proxy.v1, "sk-attacker", {**route, "Connection": "X-Made-Up-Route"})
        routed = ask(proxy.v1, "sk-victim", route)
        plain = ask(proxy.v1, "sk-victim", {})
    assert [content_of(dropped), content_of(routed), content_of(plain)] == [
        "plain",
        "poisoned",
        "plain",
    ]
    assert [r.headers["x-repro-cache"] for r in (dropped, routed, plain)] == ["MISS", "MISS", "HIT"]
    assert [r.headers.get("x-made-up-route") for r in posts(upstream)] == [None, "2"]


def test_in_shared_scope_a_cookie_is_keyed(start_proxy: ProxyFactory) -> None:
    """A cookie would route a sticky-session or experiment gateway as a header does."""
    poisoned_then_asked_plainly(start_proxy, {"Cookie": "backend=evil"})


def failing_once() -> Writer:
    """A 500 to the first request, then answers: the SDK retries with its retry count up."""
    answered = [0]

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        answered[0] += 1
        if answered[0] == 1:
            body = b'{"error": {"message": "try again", "type": "server_error", "code": null}}'
            writer.write(http_answer(body, "Content-Type: application/json", status="500 Oops"))
        else:
            writer.write(http_answer(completion("plain"), "Content-Type: application/json"))
        await writer.drain()

    return write


def test_the_official_sdks_per_call_headers_and_tracing_never_split_the_cache(
    start_proxy: ProxyFactory,
) -> None:
    """openai's client sends `x-stainless-retry-count` (1 on its retry), its read timeout, its
    version and platform; a traced service adds `traceparent`, new per call. The second call
    is still a HIT of the answer the retry stored."""
    with Scripted(failing_once()) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        client = openai.OpenAI(base_url=proxy.v1, api_key="sk-a", max_retries=2)
        answers = []
        for trace in ("0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736"):
            answers.append(
                client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "hi"}],
                    extra_headers={"traceparent": f"00-{trace}-b7ad6b7169203331-01"},
                )
            )
        client.close()
    assert [a.headers["x-repro-cache"] for a in answers] == ["MISS", "HIT"]
    assert answers[1].parse().choices[0].message.content == "plain"
    sent = posts(upstream)
    assert [r.headers["x-stainless-retry-count"] for r in sent] == ["0", "1"]
    assert all("traceparent" in r.headers for r in sent)


def test_an_unkeyed_header_setting_makes_a_header_inert_exactly_or_by_prefix(
    start_proxy: ProxyFactory,
) -> None:
    with Scripted(answering_with()) as upstream:
        flags = ("--unkeyed-header", "X-Team-Run", "--unkeyed-header", "x-myco-*")
        proxy = start_proxy(*flags, upstream=upstream.v1)
        inert = [ask(proxy.v1, "sk-a", {"X-Team-Run": run, "X-MyCo-Span": run}) for run in "12"]
        keyed = [ask(proxy.v1, "sk-a", {"X-Team-Other": run}) for run in "12"]
    assert [r.headers["x-repro-cache"] for r in inert] == ["MISS", "HIT"]
    assert [r.headers["x-repro-cache"] for r in keyed] == ["MISS", "MISS"]
    assert posts(upstream)[0].headers["x-team-run"] == "1"  # inert, and still sent


@pytest.mark.parametrize("body", [CHAT, STREAM], ids=["whole", "stream"])
@pytest.mark.parametrize(
    "vary", ["", "Vary: OpenAI-Organization", "Vary: Accept-Encoding, openai-organization"]
)
def test_an_answer_varying_by_a_keyed_header_is_stored_per_value_and_served_only_to_it(
    start_proxy: ProxyFactory, vary: str, body: bytes
) -> None:
    """One tenant (one key) asking as two organizations: `OpenAI-Organization` is in the key,
    so each organization's answer is stored under its own key and a HIT goes only to the same
    organization, whether or not the upstream says it varies by it."""
    with Scripted(answering_with(*filter(None, [vary]))) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        asked = [ask_as(proxy.v1, org, body) for org in ("org-victim", "org-attacker") * 2]
    assert [content_of(r) for r in asked] == ["org-victim", "org-attacker"] * 2
    assert [r.headers["x-repro-cache"] for r in asked] == ["MISS", "MISS", "HIT", "HIT"]
    assert len(upstream.received) == 2


def test_a_cassette_replays_a_keyed_request_only_with_the_same_header(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Recorded with `OpenAI-Organization`, a cassette line names the header's digest (never
    its value) and keys again alike when loaded: the same organization replays, another one
    or none is a miss."""
    path = tmp_path / "llm.jsonl"
    with Scripted(routing_gateway()) as upstream:
        recorder = start_proxy(
            "--cassette", str(path), "--cache-scope", "shared", upstream=upstream.v1
        )
        recorded = ask_as(recorder.v1, "org-secret-1", CHAT)
        recorder.proc.send_signal(signal.SIGTERM)
        assert recorder.proc.wait(timeout=15) == 0
    line = orjson.loads(path.read_bytes().splitlines()[0])
    assert "org-secret-1" not in path.read_text() and len(line["vary"]) == 64
    replayer = start_proxy(
        "--cassette",
        str(path),
        "--cache-scope",
        "shared",
        "--cache-mode",
        "replay",
        upstream=upstream.v1,
    )
    same = ask_as(replayer.v1, "org-secret-1", CHAT)
    other = ask_as(replayer.v1, "org-secret-2", CHAT)
    plain = httpx.post(
        replayer.v1 + "/chat/completions",
        content=CHAT,
        headers={"Authorization": "Bearer sk-victim", "Content-Type": "application/json"},
        timeout=10,
    )
    assert same.headers["x-repro-cache"] == "HIT" and same.content == recorded.content
    assert [other.status_code, plain.status_code] == [504, 504]


def test_a_drift_check_asks_again_with_the_headers_the_answer_was_keyed_by(
    start_proxy: ProxyFactory,
) -> None:
    """Asked again without them, the gateway would answer from another backend: the drift
    metrics would count a difference that is none, and that backend's fingerprint would be
    taught as the model's."""
    with Scripted(routing_gateway("x-portkey-provider")) as upstream:
        proxy = start_proxy("--verify-rate", "1", upstream=upstream.v1)
        routed = {"x-portkey-provider": "anthropic"}
        answers = [ask(proxy.v1, "sk-victim", routed) for _ in range(2)]
        wait_until(lambda: len(posts(upstream)) == 2, "the drift check", timeout=10)
    assert [r.headers["x-repro-cache"] for r in answers] == ["MISS", "HIT"]
    assert [r.headers.get("x-portkey-provider") for r in posts(upstream)] == ["anthropic"] * 2


def responses_gateway(response_id: str) -> Writer:
    """`routing_gateway` for the Responses API: every answer carries the same id, as an
    attacker's own server answers with the id of a response it read from the shared cache."""

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        if request.request_line.startswith("GET"):
            writer.write(http_answer(MODELS, "Content-Type: application/json"))
        else:
            routed = "x-portkey-custom-host" in request.headers
            answer = {
                "object": "response",
                "id": response_id,
                "status": "completed",
                "model": "gpt-4o-mini",
                "output": [{"type": "message", "content": [{"type": "output_text", "text": ""}]}],
                "metadata": {"from": "poisoned" if routed else "plain"},
            }
            writer.write(http_answer(orjson.dumps(answer), "Content-Type: application/json"))
        await writer.drain()

    return write


def test_a_routed_response_never_answers_a_fetch_of_its_id_asked_without_the_route(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    """In `shared` scope the attacker reads a common response's id from the cache, then has
    its own server answer another prompt with that id: the id's index must not point the
    victim's `GET /v1/responses/{id}` in replay at the attacker's answer."""
    flags = ("--cache-scope", "shared", "--store", redis_url, "--secret", "s3cret-of-16-bytes")
    with Scripted(responses_gateway("resp_shared1")) as upstream:
        recorder = start_proxy(*flags, upstream=upstream.v1)
        replayer = start_proxy(*flags, "--cache-mode", "replay", upstream=upstream.v1)
        body = b'{"model": "gpt-4o-mini", "input": "Name three rivers."}'
        other = b'{"model": "gpt-4o-mini", "input": "Name a river."}'
        plain = ask(recorder.v1, "sk-victim", {}, body, "/responses")
        routed = {"x-portkey-custom-host": "https://evil.example"}
        poison = ask(recorder.v1, "sk-attacker", routed, other, "/responses")
        fetched = httpx.get(
            replayer.v1 + "/responses/resp_shared1",
            headers={"Authorization": "Bearer sk-victim"},
            timeout=10,
        )
        own = httpx.get(
            replayer.v1 + "/responses/resp_shared1",
            headers={"Authorization": "Bearer sk-attacker", **routed},
            timeout=10,
        )
    assert [r.json()["metadata"]["from"] for r in (plain, poison)] == ["plain", "poisoned"]
    assert fetched.status_code == 200 and fetched.json()["metadata"]["from"] == "plain"
    assert own.status_code == 200 and own.json()["metadata"]["from"] == "poisoned"


@pytest.mark.parametrize("name", ["Cookie", "X-Auth-Token"])
def test_a_drift_check_sends_a_header_both_credential_and_keyed_once(
    start_proxy: ProxyFactory, name: str
) -> None:
    """In `shared` scope a cookie, or a name read as a credential for its words, is both what
    the drift check sends as the caller's credentials and a keyed header: sent twice, the
    upstream reads another request (two Cookie lines are two cookies) than the one it
    answered."""
    with Scripted(routing_gateway()) as upstream:
        proxy = start_proxy("--cache-scope", "shared", "--verify-rate", "1", upstream=upstream.v1)
        answers = [ask(proxy.v1, "sk-victim", {name: "route=a"}) for _ in range(2)]
        wait_until(lambda: len(posts(upstream)) == 2, "the drift check", timeout=10)
    assert [r.headers["x-repro-cache"] for r in answers] == ["MISS", "HIT"]
    heads = [r.head.lower().count(name.lower().encode() + b":") for r in posts(upstream)]
    assert heads == [1, 1]


def routing_by_query(parameter: str) -> Writer:
    """A gateway that asks another backend when the query names `parameter`."""

    async def write(writer: asyncio.StreamWriter, request: Received) -> None:
        if request.request_line.startswith("GET"):
            writer.write(http_answer(MODELS, "Content-Type: application/json"))
        else:
            routed = parameter + "=" in request.request_line.split(" ")[1]
            body = completion("poisoned" if routed else "plain")
            writer.write(http_answer(body, "Content-Type: application/json"))
        await writer.drain()

    return write


def test_in_shared_scope_a_query_parameter_only_named_like_a_credential_is_keyed(
    start_proxy: ProxyFactory,
) -> None:
    """The query's twin of `cf-aig-cache-key`: `route_token` reads as a credential for its
    word `token`, so it never entered the key, yet it is sent upstream. Keyed (by a digest,
    never its value in a store), the attacker's routed answer stays its own. With no value it
    holds no credential, and is keyed in the query as any other parameter is, in every scope."""
    with Scripted(routing_by_query("route_token")) as upstream:
        proxy = start_proxy("--cache-scope", "shared", upstream=upstream.v1)
        poison = ask(proxy.v1, "sk-attacker", {}, CHAT, "/chat/completions?route_token=evil")
        victim = ask(proxy.v1, "sk-victim", {})
        again = ask(proxy.v1, "sk-attacker", {}, CHAT, "/chat/completions?route_token=evil")
        empty = ask(proxy.v1, "sk-attacker", {}, CHAT, "/chat/completions?route_token=")
    assert [content_of(poison), content_of(victim), content_of(again), content_of(empty)] == [
        "poisoned",
        "plain",
        "poisoned",
        "poisoned",
    ]
    outcomes = [r.headers["x-repro-cache"] for r in (poison, victim, again, empty)]
    assert outcomes == ["MISS", "MISS", "HIT", "MISS"]
