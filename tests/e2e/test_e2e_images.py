"""Image generations, edits and variations (`POST /v1/images/generations`, `/v1/images/edits`,
`/v1/images/variations`) are cached when they carry their bytes: an image costs cents, and a
test suite drawing one runs offline in replay mode. The official SDK
through a real proxy to the sim, and an upstream written here to answer what no image is."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import orjson
import pytest
from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim, azure_client, replaying
from tests.hostile import relayed_never_stored

KEY = "sk-painter"


def client(proxy: Proxy) -> OpenAI:
    return proxy.sdk(KEY)


def draw(proxy: Proxy, body: dict[str, object]) -> httpx.Response:
    return proxy.post("/images/generations", body, key=KEY)


def test_the_same_prompt_draws_the_same_image_the_second_time(proxy: Proxy, sim: Sim) -> None:
    images = client(proxy).images
    first = images.with_raw_response.generate(model="gpt-image-1", prompt="a red fox")
    again = images.with_raw_response.generate(model="gpt-image-1", prompt="a red fox")
    assert (first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    drawn = again.parse()
    assert drawn.model_dump() == first.parse().model_dump()
    assert drawn.data and drawn.data[0].b64_json
    assert base64.b64decode(drawn.data[0].b64_json).startswith(b"\x89PNG\r\n\x1a\n")
    (asked,) = [r for r in sim.requests() if r["path"] == "/v1/images/generations"]
    assert "seed" not in orjson.loads(asked["body"])
    assert drawn.usage is not None
    saved = proxy.metric("repro_tokens_saved_total", model="gpt-image-1", type="completion")
    assert saved == drawn.usage.output_tokens > 0
    other = images.with_raw_response.generate(model="gpt-image-1", prompt="a blue fox")
    assert other.headers["X-Repro-Cache"] == "MISS"
    assert other.parse().data[0].b64_json != drawn.data[0].b64_json  # type: ignore[index]


def test_an_answer_of_urls_is_relayed_but_never_stored(proxy: Proxy, sim: Sim) -> None:
    """A URL the upstream signs expires within hours: served from the cache it would be a dead
    link. The bytes, asked for with `response_format: b64_json`, are what is stored."""
    for _ in range(2):
        linked = draw(proxy, {"model": "dall-e-3", "prompt": "a fox"})
        assert linked.headers["X-Repro-Cache"] == "MISS"
        assert linked.json()["data"][0]["url"].startswith("https://")
    body = {"model": "dall-e-3", "prompt": "a fox", "response_format": "b64_json"}
    assert [draw(proxy, body).headers["X-Repro-Cache"] for _ in range(2)] == ["MISS", "HIT"]
    assert draw(proxy, {**body, "n": 1}).headers["X-Repro-Cache"] == "HIT"  # n's default


def test_a_recorded_image_replays_offline_and_a_stream_of_several_is_never_cached(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    tape = tmp_path / "llm.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    recorded = client(recorder).images.generate(model="gpt-image-1", prompt="a fox", n=2)
    several = {"model": "gpt-image-1", "prompt": "a fox", "n": 2, "stream": True}
    assert draw(recorder, several).headers["X-Repro-Cache"] == "BYPASS"
    offline = replaying(start_proxy, recorder, tape, "--cache-scope", "shared")
    replayed = client(offline).images.generate(model="gpt-image-1", prompt="a fox", n=2)
    assert replayed.model_dump() == recorded.model_dump()
    refused = draw(offline, several)
    assert refused.status_code == 504 and refused.json()["error"]["code"] == "cache_miss"


def test_an_azure_deployment_draws_from_the_cache_too(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy(upstream=sim.url)  # Azure: the resource's root
    images = azure_client(proxy, "drawings").images
    asked = {"model": "img-deploy", "prompt": "a fox", "response_format": "b64_json"}
    first = images.with_raw_response.generate(**asked)
    again = images.with_raw_response.generate(**asked)
    assert (first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    assert again.parse().model_dump() == first.parse().model_dump()
    (sent,) = [r for r in sim.requests() if r["path"].endswith("/images/generations")]
    assert sent["path"] == "/openai/deployments/img-deploy/images/generations"
    route = "/openai/deployments/{deployment}/images/generations"
    assert proxy.metric("repro_requests_total", route=route, cache="hit") == 1


@pytest.mark.parametrize(
    "answer",
    [
        {"created": 1, "data": []},
        {"created": 1, "data": [{"b64_json": ""}]},
        {"created": 1, "data": [{"b64_json": 7}]},
        {"created": 1, "data": [{"b64_json": "aGk="}, {"url": "https://x.invalid/1.png"}]},
        {"created": 1, "data": "aGk="},
        {"error": {"message": "busy"}, "data": [{"b64_json": "aGk="}]},
    ],
    ids=["empty", "empty-bytes", "not-text", "one-url", "not-a-list", "error"],
)
def test_an_answer_that_is_no_image_is_relayed_and_never_stored(
    start_proxy: ProxyFactory, answer: dict[str, object]
) -> None:
    json = ("Content-Type: application/json",)
    asked = {"model": "gpt-image-1", "prompt": "x"}
    relayed_never_stored(start_proxy, orjson.dumps(answer), json, lambda proxy: draw(proxy, asked))


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


def test_an_edit_of_the_same_images_is_the_same_image_the_second_time(
    proxy: Proxy, sim: Sim
) -> None:
    images = proxy.sdk(KEY).images
    two = [("a.png", PNG, "image/png"), ("b.png", PNG + b"b", "image/png")]
    first = images.with_raw_response.edit(model="gpt-image-1", image=two, prompt="add a hat")
    again = images.with_raw_response.edit(model="gpt-image-1", image=two, prompt="add a hat")
    assert (first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    assert again.parse().model_dump() == first.parse().model_dump()
    others = [
        images.with_raw_response.edit(model="gpt-image-1", image=two[:1], prompt="add a hat"),
        images.with_raw_response.edit(model="gpt-image-1", image=two[::-1], prompt="add a hat"),
        images.with_raw_response.edit(
            model="gpt-image-1", image=two, prompt="add a hat", mask=("m.png", PNG, "image/png")
        ),
    ]
    assert [r.headers["X-Repro-Cache"] for r in others] == ["MISS"] * 3


def test_an_edit_naming_its_images_by_url_is_json_and_cached_too(proxy: Proxy, sim: Sim) -> None:
    body = {
        "model": "gpt-image-1",
        "prompt": "add a hat",
        "images": [{"image_url": "https://example.com/cat.png"}],
    }
    sent = [proxy.post("/images/edits", body, key=KEY) for _ in range(2)]
    assert [r.headers["X-Repro-Cache"] for r in sent] == ["MISS", "HIT"]
    (asked,) = [r for r in sim.requests() if r["path"] == "/v1/images/edits"]
    assert asked["headers"]["Content-Type"] == "application/json"


def test_a_variation_is_stored_with_its_bytes_and_never_as_links(proxy: Proxy, sim: Sim) -> None:
    def vary(fields: dict[str, str], name: str = "a.png") -> httpx.Response:
        return httpx.post(
            proxy.v1 + "/images/variations",
            data=fields,
            files={"image": (name, PNG, "image/png")},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        )  # not the SDK's create_variation, deprecated

    assert [vary({}).headers["X-Repro-Cache"] for _ in range(2)] == ["MISS", "MISS"]  # links
    kept = [vary({"response_format": "b64_json", "n": "1"}), vary({"response_format": "b64_json"})]
    assert [r.headers["X-Repro-Cache"] for r in kept] == ["MISS", "HIT"]  # n's default
    assert kept[1].json() == kept[0].json() and kept[1].json()["data"][0]["b64_json"]
    assert vary({"response_format": "b64_json"}, "other.png").headers["X-Repro-Cache"] == "HIT"


def test_an_azure_deployment_edits_from_the_cache(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy(upstream=sim.url)  # Azure: the resource's root
    images = azure_client(proxy, "edits").images
    asked = {"model": "img-deploy", "prompt": "a hat", "image": ("a.png", PNG, "image/png")}
    asked["response_format"] = "b64_json"  # a DALL-E deployment answers with links otherwise
    first = images.with_raw_response.edit(**asked)  # type: ignore[arg-type]
    again = images.with_raw_response.edit(**asked)  # type: ignore[arg-type]
    assert (first.headers["X-Repro-Cache"], again.headers["X-Repro-Cache"]) == ("MISS", "HIT")
    (sent,) = [r for r in sim.requests() if r["path"].endswith("/images/edits")]
    assert sent["path"] == "/openai/deployments/img-deploy/images/edits"
