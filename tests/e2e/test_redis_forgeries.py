"""What a second writer to the proxy's Redis can forge (docs/security.md: such a writer is
trusted, but what it writes must not crash the proxy): each forgery fails open or misses."""

from __future__ import annotations

import hashlib
import math

import httpx
import orjson
import pytest
import redis

from proxy.core.codec import Codec
from proxy.core.entry import Entry
from proxy.store import layout
from proxy.store.base import Labels
from tests.fixtures_procs import Proxy, ProxyFactory

TOKEN = "t0ken"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def ask(proxy: Proxy, content: str) -> httpx.Response:
    return proxy.chat(content)


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
    assert rotations.status_code == 200  # what is no rotation is left out
    assert ask(proxy, "one").headers["X-Repro-Cache"] == "HIT"

    client.hset(model, mapping={"current": b"\xff", "backs": b"x y", "fp:forged": b"not json"})
    for content in ("one", "two"):
        answer = ask(proxy, content)
        assert (answer.status_code, answer.headers["X-Repro-Cache"]) == (200, "MISS")
    fingerprints = httpx.get(proxy.url + "/admin/fingerprints", headers=ADMIN, timeout=10)
    assert fingerprints.status_code == 200  # the next answer wrote the state over
    assert "forged" not in fingerprints.text


def test_a_well_formed_but_impossible_fingerprint_state_is_left_out(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    """Records that parse but say what the proxy never writes (a current fingerprint with no
    record of its own, a moment no date can name) were an internal error on the admin routes
    that show them: they read as absent, as a record that does not parse does."""
    proxy = start_proxy("--store", redis_url, "--admin-token", TOKEN, "--near-cache", "0")
    assert ask(proxy, "one").status_code == 200
    client = redis.Redis.from_url(redis_url)
    (model,) = client.scan_iter("repro:fp:*")
    (field,) = (name for name in client.hkeys(model) if name.startswith(b"fp:"))
    record = client.hget(model, field)
    history = model.replace(b"repro:fp:", b"repro:rot:")
    moment = b'{"old": "fp_forged", "new": "fp_sim_0001", "at": %s, "back": false}'
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
            assert (shown.status_code, path, forged) == (200, path, forged)
            assert "fp_with_no_record" not in shown.text
        client.delete(model)
        client.hset(model, mapping=written)
        assert httpx.get(proxy.url + "/admin/fingerprints", headers=ADMIN).status_code == 200
    for at in (b"1e300", b'"nan"', b"-1"):
        client.delete(history)
        client.rpush(history, moment % at)
        shown = httpx.get(proxy.url + "/admin/rotations", headers=ADMIN, timeout=10)
        assert (shown.status_code, at) == (200, at)
        assert "fp_forged" not in shown.text


def test_an_entry_from_no_datable_moment_is_left_out_of_an_export(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    """A value that unpacks but was stored at 1e300 cannot say when it was recorded: the export
    broke off with an internal error at it, so one forged value cost every export after."""
    proxy = start_proxy("--store", redis_url, "--admin-token", TOKEN)
    assert ask(proxy, "one").status_code == 200
    forged = Entry(
        body=b"{}", content_type="application/json", fingerprint="fp_x", stored_at=1e300,
        model="gpt-4o-mini", route="/v1/chat/completions", request=b'{"model":"gpt-4o-mini"}',
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    client.hset(
        "repro:e:{" + "ab" * 32 + "}",
        mapping={"fp_x": Codec(level=0).pack(forged), layout.LABELS: layout.tags(Labels())},
    )
    exported = httpx.get(proxy.url + "/admin/export", headers=ADMIN, timeout=10)
    assert exported.status_code == 200
    assert [orjson.loads(line)["fingerprint"] for line in exported.content.splitlines()] == [
        "fp_sim_0001"
    ]


def test_a_forged_fingerprint_record_is_left_out_of_the_admin_routes(
    start_proxy: ProxyFactory, redis_url: str
) -> None:
    """Times no date can name, names that are no fingerprint: left out, never a 500."""
    proxy = start_proxy("--store", redis_url, "--admin-token", TOKEN, "--near-cache", "0")
    assert ask(proxy, "one").status_code == 200
    client = redis.Redis.from_url(redis_url)
    (model,) = client.scan_iter("repro:fp:*")
    current = client.hget(model, "current")
    record = b'{"first_seen": 1e300, "last_seen": -1e300, "count": 1e30, "order": 1}'
    sane = b'{"first_seen": 1, "last_seen": 1, "count": 1, "order": 2}'
    client.hset(model, mapping={b"fp:" + current: record, b"fp:a\r\nb": sane})
    fingerprints = httpx.get(proxy.url + "/admin/fingerprints", headers=ADMIN, timeout=10)
    assert fingerprints.status_code == 200
    assert "a\\r\\nb" not in fingerprints.text and "gpt-4o-mini" not in fingerprints.text
    assert ask(proxy, "one").status_code == 200


@pytest.mark.parametrize("at", [math.inf, 1e12], ids=["never", "far-ahead"])
def test_forged_guess_times_lock_no_one_out(
    start_proxy: ProxyFactory, redis_url: str, at: float
) -> None:
    """The shared count of wrong admin tokens is a sorted set of times: ones no clock of a
    replica could have written (forever, or years ahead) count for nothing, and are never a
    500 on the admin routes."""
    proxy = start_proxy("--store", redis_url, "--admin-token", TOKEN)
    client = redis.Redis.from_url(redis_url)
    digest = hashlib.sha256(b"guesses:127.0.0.1").hexdigest()[:32]
    client.zadd(f"repro:g:{{{digest}}}", {f"forged{n}": at for n in range(1000)})
    answer = httpx.get(proxy.url + "/admin/fingerprints", headers=ADMIN, timeout=10)
    assert answer.status_code == 200
