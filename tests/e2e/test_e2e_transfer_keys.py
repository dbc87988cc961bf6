"""Export and import against a store that encrypting proxies use: without the key (or with
another) the commands refuse before reading or writing anything, rather than write plaintext
answers the proxies read as absent, or export an empty cassette that looks like a backup."""

from __future__ import annotations

import base64
from pathlib import Path

import redis
import zstandard
from openai import OpenAI

from proxy.store.encrypted import EncryptedStore, parse_keys
from proxy.store.memory import MemoryStore
from tests.fixtures_procs import Proxy, ProxyFactory, Sim, free_port, run_cli

KEY = base64.b64encode(b"k" * 32).decode()
OTHER = base64.b64encode(b"o" * 32).decode()
MESSAGES = [{"role": "user", "content": "Seal me."}]


def ask(proxy: Proxy) -> str:
    with OpenAI(base_url=proxy.v1, api_key="sk-alice", max_retries=0) as client:
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    return str(answer.choices[0].message.content)


def stored_keys(redis_url: str) -> list[bytes]:
    with redis.Redis.from_url(redis_url) as client:
        return sorted(client.scan_iter(match="repro:e:*", count=1000))


def recorded(start_proxy: ProxyFactory, tmp_path: Path) -> Path:
    """A cassette of one answer, recorded by a proxy of its own (memory store)."""
    tape = tmp_path / "tape.jsonl"
    recorder = start_proxy("--cache-scope", "shared", "--cassette", str(tape))
    ask(recorder)
    recorder.proc.terminate()
    assert recorder.proc.wait(timeout=15) == 0
    return tape


def test_an_import_without_the_stores_key_is_refused_and_writes_nothing(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, tmp_path: Path
) -> None:
    tape = recorded(start_proxy, tmp_path)
    start_proxy("--store", redis_url, "--cache-scope", "shared", env={"REPRO_ENCRYPTION_KEY": KEY})
    blind = run_cli("import", "--store", redis_url, str(tape))
    assert blind.returncode == 2
    assert len(blind.stderr.splitlines()) == 1
    assert "--encryption-key" in blind.stderr and "REPRO_ENCRYPTION_KEY" in blind.stderr
    assert stored_keys(redis_url) == []
    wrong = run_cli("import", "--store", redis_url, str(tape), env={"REPRO_ENCRYPTION_KEY": OTHER})
    assert wrong.returncode == 2 and len(wrong.stderr.splitlines()) == 1
    assert "none of the keys given" in wrong.stderr and OTHER not in wrong.stderr
    assert stored_keys(redis_url) == []


def test_an_import_with_the_stores_key_is_what_the_encrypting_proxies_replay(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, tmp_path: Path
) -> None:
    tape = recorded(start_proxy, tmp_path)
    start_proxy("--store", redis_url, "--cache-scope", "shared", env={"REPRO_ENCRYPTION_KEY": KEY})
    # A rotation under way: the proxies still encrypt with the old key, and decrypt the new one.
    keys = f"{OTHER},{KEY}"
    done = run_cli("import", "--store", redis_url, str(tape), env={"REPRO_ENCRYPTION_KEY": keys})
    assert done.returncode == 0, done.stderr
    offline = f"http://127.0.0.1:{free_port()}/v1"
    replay = start_proxy(
        "--store", redis_url, "--cache-scope", "shared", "--cache-mode", "replay",
        env={"REPRO_ENCRYPTION_KEY": f"{KEY},{OTHER}"}, upstream=offline,
    )  # fmt: skip
    assert ask(replay)
    with redis.Redis.from_url(redis_url) as client:
        (name,) = stored_keys(redis_url)
        assert b"Seal me." not in b"".join(client.hvals(name))


def test_an_export_without_the_stores_key_or_with_another_is_refused(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, tmp_path: Path
) -> None:
    source = start_proxy("--store", redis_url, env={"REPRO_ENCRYPTION_KEY": KEY})
    ask(source)
    blind = run_cli("export", "--store", redis_url)
    assert (blind.returncode, blind.stdout) == (2, "")
    assert "--encryption-key" in blind.stderr and len(blind.stderr.splitlines()) == 1
    wrong = run_cli("export", "--store", redis_url, env={"REPRO_ENCRYPTION_KEY": OTHER})
    assert (wrong.returncode, wrong.stdout) == (2, "")
    assert "none of the keys given" in wrong.stderr and OTHER not in wrong.stderr
    opened = run_cli("export", "--store", redis_url, env={"REPRO_ENCRYPTION_KEY": KEY})
    assert opened.returncode == 0 and len(opened.stdout.splitlines()) == 1


def test_a_store_sealed_before_its_proxies_marked_it_still_says_what_was_left_out(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    """No mark (proxies of an earlier version): the export counts what it could not open, and
    says whether a key was missing or the one given is another."""
    source = start_proxy("--store", redis_url, env={"REPRO_ENCRYPTION_KEY": KEY})
    ask(source)
    with redis.Redis.from_url(redis_url) as client:
        client.delete("repro:sealed")
    blind = run_cli("export", "--store", redis_url)
    assert blind.returncode == 0
    assert "left out 1 stored answer it cannot read" in blind.stderr
    assert "give the store's --encryption-key" in blind.stderr
    wrong = run_cli("export", "--store", redis_url, env={"REPRO_ENCRYPTION_KEY": OTHER})
    assert "left out 1 stored answer it cannot read" in wrong.stderr
    assert "the keys given open none of them" in wrong.stderr and OTHER not in wrong.stderr


def test_a_hostile_mark_is_neither_a_traceback_nor_a_way_in(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, tmp_path: Path
) -> None:
    """Anyone who can write to the store can plant the mark: of the wrong type it is a store
    failure (exit 1, one line), and a planted id is no key."""
    tape = recorded(start_proxy, tmp_path)
    with redis.Redis.from_url(redis_url) as client:
        client.set("repro:sealed", "not a set")
        broken = run_cli("import", "--store", redis_url, str(tape))
        assert broken.returncode == 1 and len(broken.stderr.splitlines()) == 1
        assert "Traceback" not in broken.stderr
        # Nor does it keep an encrypting proxy from starting (it warns).
        encrypting = start_proxy("--store", redis_url, env={"REPRO_ENCRYPTION_KEY": KEY})
        assert ask(encrypting)
        client.delete(*client.scan_iter(match="repro:e:*", count=1000))
        client.delete("repro:sealed")
        client.sadd("repro:sealed", "x" * 4096)
    planted = run_cli("import", "--store", redis_url, str(tape))
    assert planted.returncode == 2 and "--encryption-key" in planted.stderr
    assert stored_keys(redis_url) == []


def test_a_store_sealed_before_the_mark_is_told_by_its_sealed_dictionary(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str, tmp_path: Path
) -> None:
    """Encrypting proxies of an earlier version left no mark, but their dictionary is sealed."""
    tape = recorded(start_proxy, tmp_path)
    trained = zstandard.train_dictionary(1024, [f"answer {n} ".encode() * 20 for n in range(200)])
    sealer = EncryptedStore(MemoryStore(), parse_keys(KEY))
    with redis.Redis.from_url(redis_url) as client:
        client.set("repro:dictionary", sealer.seal("\x00dictionary", "", trained.as_bytes()))
    blind = run_cli("import", "--store", redis_url, str(tape))
    assert blind.returncode == 2 and "--encryption-key" in blind.stderr
    assert stored_keys(redis_url) == []
    with redis.Redis.from_url(redis_url) as client:
        client.set("repro:dictionary", trained.as_bytes())  # a plain store's: no refusal
    plain = run_cli("import", "--store", redis_url, str(tape))
    assert plain.returncode == 0, plain.stderr


def test_a_proxy_without_the_key_refuses_a_store_its_peers_encrypt(
    start_proxy: ProxyFactory, sim: Sim, redis_url: str
) -> None:
    """It would write answers in the clear that its encrypting peers read as absent, and read
    theirs as absent: a cache of nothing that looks like one. A proxy with another key starts
    (a rotation begins with one), and encrypts."""
    start_proxy("--store", redis_url, env={"REPRO_ENCRYPTION_KEY": KEY})
    upstream = sim.url + "/v1"
    blind = run_cli(
        "serve", "--port", str(free_port()), "--upstream", upstream, "--store", redis_url
    )
    assert blind.returncode == 2, blind.stderr
    assert "Traceback" not in blind.stderr
    last = blind.stderr.strip().splitlines()[-1]
    assert last.startswith("repro-proxy: --store: the proxies of this store encrypt its answers")
    assert "--encryption-key" in last and "REPRO_ENCRYPTION_KEY" in last
    other = start_proxy("--store", redis_url, env={"REPRO_ENCRYPTION_KEY": OTHER})
    assert ask(other)
    with redis.Redis.from_url(redis_url) as client:
        assert client.scard("repro:sealed") == 2
        assert all(
            b"Seal me." not in value
            for key in stored_keys(redis_url)
            for value in client.hvals(key)
        )
