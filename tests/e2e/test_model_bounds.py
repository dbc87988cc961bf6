"""What the proxy keeps per model stays bounded whatever names the upstream answers for.

An upstream may answer any model name: a local server serving one model whatever it is called,
or a hostile one. Each name answered was state kept for good (its fingerprints, in the store
and in each process); the sim answers any name, as those do."""

from __future__ import annotations

import httpx
import orjson
import redis

from bench.procs import settled
from proxy.core.fingerprints import MODELS_KEPT
from tests.fixtures_procs import ProxyFactory

ADMIN = "admin-token-for-tests"
REGULAR = "gpt-4o-mini"


def ask(client: httpx.Client, url: str, model: str, prompt: str = "q") -> str:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]})
    answer = client.post(
        url + "/chat/completions",
        content=body,
        headers={"Authorization": "Bearer sk-tenant", "Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Repro-Cache"]


def test_models_named_without_end_leave_the_state_of_a_bounded_number(
    start_proxy: ProxyFactory,
) -> None:
    """A client naming a new model with each request, answered each time, makes the memory
    store forget the models used least recently past MODELS_KEPT; a model in regular use is
    never among them, and its stored answers keep being served."""
    proxy = start_proxy("--admin-token", ADMIN)
    made_up = [f"made-up-{number:05d}" for number in range(MODELS_KEPT + 64)]
    with httpx.Client(timeout=10) as client:
        assert ask(client, proxy.v1, REGULAR) == "MISS"
        for number, model in enumerate(made_up):
            assert ask(client, proxy.v1, model) == "MISS"
            if number % 64 == 0:
                assert ask(client, proxy.v1, REGULAR) == "HIT"
        assert ask(client, proxy.v1, REGULAR) == "HIT"
        known = client.get(
            proxy.url + "/admin/fingerprints", headers={"Authorization": f"Bearer {ADMIN}"}
        ).json()
    assert len(known) == MODELS_KEPT
    assert REGULAR in known
    assert made_up[-1] in known and made_up[0] not in known


def test_a_forgotten_model_is_learned_again_by_its_next_answer(
    start_proxy: ProxyFactory,
) -> None:
    """Forgetting costs a model one MISS: under `follow` its stored answers have no current
    fingerprint to be served by, and the next answer teaches it again."""
    proxy = start_proxy("--admin-token", ADMIN)
    with httpx.Client(timeout=10) as client:
        assert ask(client, proxy.v1, REGULAR) == "MISS"
        for number in range(MODELS_KEPT):
            ask(client, proxy.v1, f"made-up-{number:05d}")
        assert ask(client, proxy.v1, REGULAR) == "MISS"
        assert ask(client, proxy.v1, REGULAR) == "HIT"
        assert ask(client, proxy.v1, REGULAR, "another") == "MISS"
        assert ask(client, proxy.v1, REGULAR, "another") == "HIT"


def test_redis_keeps_the_records_of_a_bounded_number_of_models(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    """Shared through Redis, the models past the bound leave the index with their records at
    the proxy's next keep round, and the near-cache in front goes on answering."""
    proxy = start_proxy("--store", redis_url, "--near-cache", "16MiB")
    with httpx.Client(timeout=10) as client:
        for number in range(MODELS_KEPT + 64):
            ask(client, proxy.v1, f"made-up-{number:05d}")
        with redis.Redis.from_url(redis_url) as server:
            assert server.scard("repro:models") == MODELS_KEPT + 64
            left = settled(lambda: server.scard("repro:models"), lambda n: n <= MODELS_KEPT)
            assert left == MODELS_KEPT
            # The records go in a step after the index's trim (`TRIM` pops, then they are
            # deleted): read until that step is done, as the index is.
            kept = settled(
                lambda: list(server.scan_iter(match="repro:fp:*", count=1000)),
                lambda found: len(found) <= MODELS_KEPT,
            )
            assert len(kept) == MODELS_KEPT
        assert ask(client, proxy.v1, REGULAR) == "MISS"
        assert ask(client, proxy.v1, REGULAR) == "HIT"
