"""Export and import through a running proxy's admin routes, and the commands that refuse."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from openai import OpenAI

from tests.fixtures_procs import Proxy, ProxyFactory, Sim, free_port, run_cli

TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
MESSAGES = [{"role": "user", "content": "Carry me over."}]
SHARED = ("--admin-token", TOKEN, "--cache-scope", "shared")


def cli(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, admin_token=token)


def on_a_terminal(*args: str) -> str:
    """The command's stdout when stdout is a terminal, as an operator sees it."""
    leader, follower = pty.openpty()
    env = {"PATH": "/usr/bin:/bin", "REPRO_ADMIN_TOKEN": TOKEN, "COLUMNS": "160"}
    proc = subprocess.Popen([sys.executable, "-m", "proxy", *args], stdout=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode()


def one_line_refusal(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def traffic(proxy: Proxy, key: str) -> list[bytes]:
    with OpenAI(base_url=proxy.v1, api_key=key, max_retries=0) as client:
        chat = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        embedding = client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input="Carry me over."
        )
    return [chat.http_response.content, embedding.http_response.content]


def recorded_source(start_proxy: ProxyFactory) -> tuple[Proxy, list[bytes]]:
    """A proxy holding one tenant's answers in the shared scope, and those answers."""
    source = start_proxy(*SHARED)
    return source, traffic(source, "sk-alice")


def offline() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


def test_a_memory_proxy_is_exported_and_another_one_replays_the_import(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    source, recorded = recorded_source(start_proxy)
    tape = tmp_path / "tape.jsonl"
    exported = cli("export", "--url", source.url, "--output", str(tape))
    assert exported.returncode == 0, exported.stderr
    assert exported.stderr.strip() == "exported 2 answers"
    assert len(tape.read_bytes().splitlines()) == 2
    only_chat = cli("export", "--url", source.url, "--model", "gpt-4o-mini")
    assert len(only_chat.stdout.splitlines()) == 1
    assert only_chat.stderr.strip() == "exported 1 answer"

    target = start_proxy(*SHARED, "--cache-mode", "replay", upstream=offline())
    imported = cli("import", "--url", target.url, str(tape))
    assert imported.returncode == 0, imported.stderr
    assert imported.stderr.strip() == "imported 2 answers"
    assert traffic(target, "sk-anyone") == recorded


def test_an_import_into_a_store_that_is_down_is_a_503_in_openai_shape(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    source, _ = recorded_source(start_proxy)
    tape = httpx.get(source.url + "/admin/export", headers=ADMIN, timeout=10).content
    assert len(tape.splitlines()) == 2
    down = f"redis://127.0.0.1:{free_port()}/0"
    target = start_proxy(*SHARED, "--store", down, "--cache-mode", "replay", upstream=offline())
    answer = httpx.post(target.url + "/admin/import", content=tape, headers=ADMIN, timeout=30)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "store_unavailable"


def test_an_import_into_a_per_key_proxy_is_for_the_key_named(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    source, recorded = recorded_source(start_proxy)
    tape = tmp_path / "tape.jsonl"
    assert cli("export", "--url", source.url, "-o", str(tape)).returncode == 0
    target = start_proxy("--admin-token", TOKEN, "--cache-mode", "replay", upstream=offline())

    nameless = cli("import", "--url", target.url, str(tape))
    assert nameless.returncode == 1
    assert "X-Repro-Api-Key" in nameless.stderr and "--api-key" in nameless.stderr
    assert "OPENAI_API_KEY" in nameless.stderr  # what docs/operations.md sets for it
    wrong_scope = cli("import", "--url", target.url, "--cache-scope", "shared", str(tape))
    assert "--cache-scope key" in wrong_scope.stderr

    # The key from the environment, where other local users cannot read it (argv is in `ps`).
    keyed = run_cli(
        "import",
        "--url",
        target.url,
        str(tape),
        admin_token=TOKEN,
        env={"OPENAI_API_KEY": "sk-alice"},
    )
    assert keyed.returncode == 0, keyed.stderr
    assert traffic(target, "sk-alice") == recorded
    with pytest.raises(Exception, match="504"):
        traffic(target, "sk-bob")


def test_the_transfer_routes_refuse_without_the_token(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy("--admin-token", TOKEN)
    for method, path in (("GET", "/admin/export"), ("POST", "/admin/import")):
        assert httpx.request(method, proxy.url + path, timeout=5).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.request(method, proxy.url + path, headers=wrong, timeout=5).status_code == 401
    tokenless = start_proxy()
    assert httpx.get(tokenless.url + "/admin/export", timeout=5).status_code == 404


def stored(proxy: Proxy) -> int:
    return int(httpx.get(proxy.url + "/admin/stats", headers=ADMIN, timeout=5).json()["entries"])


def test_a_hostile_import_is_refused_whole(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    source, _ = recorded_source(start_proxy)
    good = httpx.get(source.url + "/admin/export", headers=ADMIN, timeout=5).content
    target = start_proxy(*SHARED, "--max-body", "4KiB")
    url = target.url + "/admin/import"

    huge = httpx.post(url, content=b"{" * (64 * 1024), headers=ADMIN, timeout=10)
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "request_too_large"

    def chunked() -> object:
        for _ in range(64):
            yield b" " * 1024

    streamed = httpx.post(url, content=chunked(), headers=ADMIN, timeout=10)  # type: ignore[arg-type]
    assert streamed.status_code == 413

    first, second = good.splitlines()
    for body in (
        first + b"\nnot json\n",
        first + b"\n[1, 2]\n",
        first + b'\n{"format": 99}\n',
        second.replace(b'"route"', b'"rout"') + b"\n",
        b"\xff\xfe\n",
    ):
        refused = httpx.post(url, content=body, headers=ADMIN, timeout=10)
        assert refused.status_code == 400, body
        assert refused.json()["error"]["message"].startswith("The cassette is not valid: ")
    assert stored(target) == 0

    accepted = httpx.post(url, content=good, headers=ADMIN, timeout=10)
    assert accepted.json() == {"imported": 2}
    assert stored(target) == 2


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("export",), "name where the answers are: --url"),  # not a store it was not given
        (("import", "tape.jsonl"), "name where the answers are: --url"),
        (("export", "--store", "memory://"), "--store memory://"),
        (("import", "--store", "memory://", "tape.jsonl"), "--store memory://"),
        (
            ("import", "--store", "redis://127.0.0.1:6379/0", "--cache-scope", "key", "t"),
            "--api-key",
        ),
        (("export", "--store", "redis://127.0.0.1:6379/0", "--url", "http://x"), "not both"),
    ],
)
def test_a_transfer_that_could_do_nothing_is_refused_in_one_line(
    args: tuple[str, ...], names: str
) -> None:
    assert names in one_line_refusal(cli(*args))


def test_admin_commands_without_a_token_or_a_filter_say_what_to_pass() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    stats = one_line_refusal(cli("stats", "--url", url, token=None))
    assert "--admin-token" in stats and "REPRO_ADMIN_TOKEN" in stats
    assert "Illegal header" not in stats
    purge = one_line_refusal(cli("purge", "--url", url))
    assert "--all" in purge and '"all"' not in purge


def test_admin_commands_draw_tables_on_a_terminal_and_print_json_when_asked(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--admin-token", TOKEN)
    traffic(proxy, "sk-alice")
    table = on_a_terminal("stats", "--url", proxy.url)
    assert "2 answers" in table and "0 hits" in table and "2 misses" in table
    assert "┃" in table or "│" in table
    asked = on_a_terminal("stats", "--url", proxy.url, "--json")
    assert orjson.loads(asked)["entries"] == 2
    piped = cli("stats", "--url", proxy.url)
    assert orjson.loads(piped.stdout)["entries"] == 2
    models = on_a_terminal("fingerprints", "--url", proxy.url)
    assert "fp_sim_0001" in models and "1 fingerprint" in models
    purged = on_a_terminal("purge", "--url", proxy.url, "--model", "gpt-4o-mini")
    assert purged.strip() == "purged 1 answer"


def test_an_export_keeps_each_answer_on_its_line_whatever_characters_it_holds(
    start_proxy: ProxyFactory, sim: Sim, tmp_path: Path
) -> None:
    proxy, _ = recorded_source(start_proxy)
    exported = httpx.get(proxy.url + "/admin/export", headers=ADMIN, timeout=5).content
    records = [orjson.loads(line) for line in exported.splitlines()]
    for record in records:
        record["body"] += "\u2028\u2029\x85\r"  # line breaks to str.splitlines, not to JSONL
    target = start_proxy(*SHARED)
    body = b"".join(orjson.dumps(record) + b"\n" for record in records)
    assert httpx.post(target.url + "/admin/import", content=body, headers=ADMIN).status_code == 200
    tape = tmp_path / "tape.jsonl"
    done = cli("export", "--url", target.url, "-o", str(tape))
    assert done.stderr.strip() == "exported 2 answers"
    lines = tape.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert sorted(orjson.loads(line)["body"] for line in lines[:-1]) == sorted(
        record["body"] for record in records
    )
