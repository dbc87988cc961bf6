"""What a second writer to the proxy's Redis can forge (docs/security.md: such a writer is
trusted, but what it writes must not crash the proxy): each forgery fails open or misses."""

from __future__ import annotations

import httpx
import redis

from tests.fixtures_procs import Proxy, ProxyFactory

TOKEN = "t0ken"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def ask(proxy: Proxy, content: str) -> httpx.Response:
    return httpx.post(
        proxy.v1 + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]},
        headers={"Authorization": "Bearer sk-tenant"},
        timeout=10,
    )


def test_forged_fingerprint_state_and_invalidations_fail_open(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    proxy = start_proxy("--store", redis_url, "--admin-token", TOKEN)
    assert ask(proxy, "one").status_code == 200
    client = redis.Redis.from_url(redis_url)
    (model,) = client.scan_iter("repro:fp:*")
    client.rpush(model.replace(b"repro:fp:", b"repro:rot:"), b"not json", b'{"old": 1}', b"\xff")
    for channel in client.pubsub_channels():
        client.publish(channel, b"\xff\xfe")
        client.publish(channel, b"e:" + b"x" * 1_000_000)
    rotations = httpx.get(proxy.url + "/admin/rotations", headers=ADMIN, timeout=10)
    assert (rotations.status_code, rotations.json()["error"]["code"]) == (503, "store_unavailable")
    assert ask(proxy, "one").headers["X-Repro-Cache"] == "HIT"

    client.hset(model, mapping={"current": b"\xff", "backs": b"x y", "fp:forged": b"not json"})
    for content in ("one", "two"):
        answer = ask(proxy, content)
        assert (answer.status_code, answer.headers["X-Repro-Cache"]) == (200, "MISS")
    fingerprints = httpx.get(proxy.url + "/admin/fingerprints", headers=ADMIN, timeout=10)
    assert fingerprints.status_code == 503


def test_a_well_formed_but_impossible_fingerprint_state_is_a_store_failure(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    """Records that parse but say what the proxy never writes (a current fingerprint with no
    record of its own, a moment no date can name) were an internal error on the admin routes
    that show them: read as a store failure, as a record that does not parse is."""
    proxy = start_proxy("--store", redis_url, "--admin-token", TOKEN)
    assert ask(proxy, "one").status_code == 200
    client = redis.Redis.from_url(redis_url)
    (model,) = client.scan_iter("repro:fp:*")
    (field,) = (name for name in client.hkeys(model) if name.startswith(b"fp:"))
    record = client.hget(model, field)
    history = model.replace(b"repro:fp:", b"repro:rot:")
    moment = b'{"old": "fp_a", "new": "fp_sim_0001", "at": %s, "back": false}'
    forgeries = [
        {"current": b"fp_with_no_record"},
        {field: record.replace(b'"first_seen":', b'"first_seen":1e300,"was":')},
        {field: record.replace(b'"last_seen":', b'"last_seen":"nan","was":')},
    ]
    written = client.hgetall(model)
    for forged in forgeries:
        client.hset(model, mapping={**written, **forged})
        for path in ("/admin/fingerprints", "/admin/rotations"):
            shown = httpx.get(proxy.url + path, headers=ADMIN, timeout=10)
            assert (shown.status_code, path, forged) == (503, path, forged)
        client.delete(model)
        client.hset(model, mapping=written)
        assert httpx.get(proxy.url + "/admin/fingerprints", headers=ADMIN).status_code == 200
    for at in (b"1e300", b'"nan"', b"-1"):
        client.delete(history)
        client.rpush(history, moment % at)
        shown = httpx.get(proxy.url + "/admin/rotations", headers=ADMIN, timeout=10)
        assert (shown.status_code, at) == (503, at)
