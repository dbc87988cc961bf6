"""`GET /admin/rotations` and `repro-proxy rotations`: each rotation, and how the answers of the
same requests changed across it, checked against what the sim did; and the attacker's side:
no token, huge answers, many keys."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from rich.console import Console

from proxy.config import Settings
from proxy.core.codec import Codec
from proxy.core.entry import Entry
from proxy.server import rotations
from proxy.server.app import create_app
from proxy.store.base import Labels, Write
from proxy.store.memory import MemoryStore
from proxy.tools.rotations_view import render
from tests.fixtures_procs import ProxyFactory, Sim

MODEL = "gpt-4o-mini"
ADMIN = "admin-token-for-tests"
UNUSED = "http://127.0.0.1:9"  # no request reaches the upstream here


def ask(http: httpx.Client, index: int) -> tuple[str, str, str]:
    """One seeded chat; (key, fingerprint, text) of the answer served."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"q{index}"}], "seed": 3}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    text = response.json()["choices"][0]["message"]["content"]
    return response.headers["X-Repro-Key"], response.headers["X-Repro-Fingerprint"], text


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "rotations", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "160"},
    )


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_rotations_json_matches_what_the_sim_did(
    start_proxy: ProxyFactory, sim: Sim, store: str, request: pytest.FixtureRequest
) -> None:
    flags = ["--store", request.getfixturevalue("redis_url")] if store == "redis" else []
    proxy = start_proxy("--admin-token", ADMIN, *flags)
    sim.settings(drift=0.5)
    headers = {"Authorization": "Bearer sk-a"}
    with httpx.Client(base_url=proxy.url, headers=headers, timeout=10) as http:
        before = {key: text for key, _, text in (ask(http, i) for i in range(30))}
        sim.set_fingerprint("fp_sim_0002")
        assert ask(http, 99)[1] == "fp_sim_0002"  # teaches the proxy the rotation
        after = {key: text for key, _, text in (ask(http, i) for i in range(30))}
    assert before.keys() == after.keys()
    same = sum(before[key] == after[key] for key in before)
    assert 0 < same < 30  # drift 0.5: some answers changed with the fingerprint, some did not

    done = cli("--json", "--url", proxy.url, "--admin-token", ADMIN, "--examples", "10")
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["complete"] and report["distance_kind"] == "text"
    (rotation,) = report["models"][MODEL]["rotations"]
    assert report["models"][MODEL]["current"] == "fp_sim_0002"
    assert (rotation["from"], rotation["to"], rotation["change"]) == (
        "fp_sim_0001",
        "fp_sim_0002",
        "rotated",
    )
    assert rotation["requests"] == 30
    assert rotation["identical"] == same
    assert rotation["distance"]["histogram"][0] == {"le": 0.0, "count": same}
    assert rotation["distance"]["histogram"][-1] == {"le": 1.0, "count": 30}
    assert 0 < rotation["distance"]["mean"] <= 1
    assert len(rotation["examples"]) == min(10, 30 - same)
    for example in rotation["examples"]:
        assert (example["old"], example["new"]) == (before[example["key"]], after[example["key"]])
        assert example["distance"] > 0

    piped = cli("--url", proxy.url, "--admin-token", ADMIN)  # not a terminal: JSON
    assert piped.returncode == 0, piped.stderr
    assert orjson.loads(piped.stdout)["models"][MODEL]["rotations"][0]["identical"] == same
    console = Console(file=io.StringIO(), width=160)
    render(report, console)
    table = console.file.getvalue()
    assert "fp_sim_0001" in table and "rotated" in table and f"{same}" in table


def test_the_command_without_the_token_fails_with_the_reason(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--admin-token", ADMIN)
    done = cli("--url", proxy.url, "--admin-token", "wrong")
    assert done.returncode == 1
    assert "HTTP 401" in done.stderr and "admin" in done.stderr
    assert ADMIN not in done.stderr + done.stdout
    missing = cli("--url", proxy.url)
    assert missing.returncode == 2 and "no admin token" in missing.stderr


# --- in process, with a store filled directly: the bounds -------------------------------------


CODEC = Codec()  # what the proxy reads stored values with (no dictionary yet)


def chat_body(text: str) -> bytes:
    return orjson.dumps({"choices": [{"index": 0, "message": {"content": text}}]})


async def fill(store: MemoryStore, keys: int, old: str, new: str) -> None:
    """`keys` requests answered under fp_1, then under fp_2 after a rotation."""
    await store.observe_fingerprint(MODEL, "fp_1", 1.0)
    await store.observe_fingerprint(MODEL, "fp_2", 2.0)
    for number in range(keys):
        for fingerprint, text in (("fp_1", old), ("fp_2", new)):
            entry = Entry(chat_body(text), "application/json", fingerprint, 1.0, MODEL)
            labels = Labels(model=MODEL)
            await store.put(Write(f"{number:064x}", fingerprint, CODEC.pack(entry), labels=labels))


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[Any, Any], MemoryStore]]:
    store = MemoryStore(max_bytes=512 * 1024 * 1024)
    app = create_app(Settings(upstream=UNUSED, admin_token=ADMIN), store=store)
    async with TestClient(TestServer(app)) as client:
        yield client, store


async def report(client: TestClient[Any, Any], **params: str) -> Any:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    response = await client.get("/admin/rotations", params=params, headers=auth)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_huge_answers_are_compared_and_shown_clipped(
    served: tuple[TestClient[Any, Any], MemoryStore],
) -> None:
    client, store = served
    await fill(store, 2, "a" * 3_000_000, "b" * 3_000_000)
    (rotation,) = (await report(client))["models"][MODEL]["rotations"]
    assert (rotation["requests"], rotation["identical"]) == (2, 0)
    assert rotation["distance"]["max"] == 1.0
    assert {len(example["old"]) for example in rotation["examples"]} == {rotations.EXAMPLE_CHARS}


async def test_many_keys_make_a_partial_report_not_an_unbounded_one(
    served: tuple[TestClient[Any, Any], MemoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, store = served
    monkeypatch.setattr(rotations, "MAX_ENTRIES", 50)
    await fill(store, 100, "same", "same")
    body = await report(client)
    assert (body["complete"], body["scanned"]) == (False, 51)
    assert body["models"][MODEL]["rotations"][0]["requests"] <= 25


async def test_answers_of_other_fingerprints_count_towards_the_scan_bound(
    served: tuple[TestClient[Any, Any], MemoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, store = served
    monkeypatch.setattr(rotations, "MAX_SCANNED", 30)
    await fill(store, 1, "old", "new")
    for number in range(100):
        entry = Entry(chat_body("x"), "application/json", "fp_unrelated", 1.0, MODEL)
        labels = Labels(model=MODEL)
        await store.put(Write(f"other{number}", "fp_unrelated", CODEC.pack(entry), labels=labels))
    body = await report(client)
    assert (body["complete"], body["scanned"]) == (False, 30)


async def test_an_answer_is_data_in_the_json_not_markup(
    served: tuple[TestClient[Any, Any], MemoryStore],
) -> None:
    client, store = served
    await fill(store, 1, "<script>alert(1)</script>", '"}]} {"x": 1')
    (example,) = (await report(client))["models"][MODEL]["rotations"][0]["examples"]
    assert (example["old"], example["new"]) == ("<script>alert(1)</script>", '"}]} {"x": 1')


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer nope"}, 401), ({"Authorization": ADMIN}, 401)],
)
async def test_no_token_no_rotations(
    served: tuple[TestClient[Any, Any], MemoryStore], headers: dict[str, str], status: int
) -> None:
    client, store = served
    await fill(store, 1, "old", "new")
    response = await client.get("/admin/rotations", headers=headers)
    assert response.status == status
    assert "old" not in await response.text()


@pytest.mark.parametrize("params", [{"examples": "11"}, {"pairs": "-1"}, {"examples": "x"}])
async def test_out_of_range_counts_are_refused(
    served: tuple[TestClient[Any, Any], MemoryStore], params: dict[str, str]
) -> None:
    client, _ = served
    auth = {"Authorization": f"Bearer {ADMIN}"}
    response = await client.get("/admin/rotations", params=params, headers=auth)
    assert response.status == 400
    assert (await response.json())["error"]["param"] in params


def test_the_embedding_distance_measures_every_pair(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--admin-token", ADMIN)
    sim.settings(drift=0.5)
    with httpx.Client(base_url=proxy.url, headers={"Authorization": "Bearer sk-a"}) as http:
        before = {key: text for key, _, text in (ask(http, i) for i in range(12))}
        sim.set_fingerprint("fp_sim_0002")
        ask(http, 99)
        after = {key: text for key, _, text in (ask(http, i) for i in range(12))}
    same = sum(before[key] == after[key] for key in before)
    assert 0 < same < 12
    done = cli(
        "--json", "--url", proxy.url, "--admin-token", ADMIN, "--distance", "embedding",
        "--api-key", "sk-a", "--embedding-model", "text-embedding-3-small",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["distance_kind"] == "embedding"
    (rotation,) = report["models"][MODEL]["rotations"]
    assert "pairs" not in rotation
    assert (rotation["requests"], rotation["identical"]) == (12, same)
    distance = rotation["distance"]
    assert distance["measured"] == 12
    assert distance["histogram"][0] == {"le": 0.0, "count": same}
    assert 0 < distance["max"] <= 2
    embedded = [r for r in sim.llm_requests() if r["path"].endswith("/embeddings")]
    assert embedded and all(r["headers"].get("Authorization") == "Bearer sk-a" for r in embedded)


async def test_a_rotation_back_shows_its_answers_the_other_way_round(
    served: tuple[TestClient[Any, Any], MemoryStore],
) -> None:
    client, store = served
    await fill(store, 1, "first answer", "second answer")
    await store.observe_fingerprint(MODEL, "fp_1", 3.0)
    forth, back = (await report(client))["models"][MODEL]["rotations"]
    assert (forth["change"], back["change"]) == ("rotated", "rotated back")
    assert (forth["examples"][0]["old"], forth["examples"][0]["new"]) == (
        "first answer",
        "second answer",
    )
    assert (back["examples"][0]["old"], back["examples"][0]["new"]) == (
        "second answer",
        "first answer",
    )


async def test_responses_answers_are_compared_under_their_own_lineage(
    served: tuple[TestClient[Any, Any], MemoryStore],
) -> None:
    client, store = served
    lineage = MODEL + "@responses"
    await store.observe_fingerprint(lineage, "fp_1", 1.0)
    await store.observe_fingerprint(lineage, "fp_2", 2.0)
    for fingerprint, text in (("fp_1", "before"), ("fp_2", "after")):
        item = {"type": "message", "content": [{"type": "output_text", "text": text}]}
        body = orjson.dumps({"object": "response", "output": [item]})
        entry = Entry(body, "application/json", fingerprint, 1.0, MODEL, route="/v1/responses")
        await store.put(Write("k" * 64, fingerprint, CODEC.pack(entry), labels=Labels(model=MODEL)))
    (rotation,) = (await report(client, model=lineage))["models"][lineage]["rotations"]
    assert rotation["requests"] == 1
    assert (rotation["examples"][0]["old"], rotation["examples"][0]["new"]) == ("before", "after")
