"""The commands that talk to a server (`stats`, `fingerprints`, `purge`, `rotations`, `import`,
`check`, `health`) against a hostile one: each answer is written in the test, byte for byte.

What a server says reaches the operator's terminal only as literal text (no escape sequence, no
rich markup), a wrong answer is one line and exit 1 (never a traceback), an answer is read only
so far and so long, and a credential goes only where it was sent.
"""

from __future__ import annotations

import asyncio
import os
import pty
import resource
import select
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from proxy.core.entry import Entry
from proxy.store import cassette
from tests.fixtures_procs import run_cli
from tests.hostile import Received, Scripted, Writer, dripping_json, fixed, http_answer

TOKEN = "admin-token-for-tests"
HOSTILE = "\x1b]0;pwned\x07\x1b[2J[link=https://evil.example/]click[/link][bold]x[/bold]\u202e"
"""A window title, a screen erase, a hyperlink and a style in rich markup, and a bidi override."""


def json_answer(value: object, status: str = "200 OK") -> bytes:
    return http_answer(orjson.dumps(value), "Content-Type: application/json", status=status)


def run_tty(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`repro-proxy ARGS` with stdout and stderr on a terminal (a pty), as an operator runs it:
    the exit status and every byte the terminal received."""
    leader, follower = pty.openpty()
    environ = {"PATH": "/usr/bin:/bin", "COLUMNS": "2000", "TERM": "xterm-256color", **(env or {})}
    environ["REPRO_ADMIN_TOKEN"] = TOKEN
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=environ,
    )
    os.close(follower)
    seen = bytearray()
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            if not ready:
                raise TimeoutError("the command wrote nothing for 60 s")
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the command closed the terminal
                break
            if not data:
                break
            seen += data
        status = proc.wait(timeout=60)
    finally:
        proc.kill()
        os.close(leader)
    return status, seen.decode(errors="replace")


def assert_literal(shown: str) -> None:
    """The hostile text reached the terminal only as visible characters."""
    assert "\x1b]0;" not in shown and "\x1b[2J" not in shown and "\x07" not in shown
    assert "\x1b]8;" not in shown  # no hyperlink made of the markup
    assert "\u202e" not in shown
    assert "[link=https://evil.example/]" in shown
    assert "\\x1b" in shown and "\\u202e" in shown


FINGERPRINTS = {
    HOSTILE: {
        "current": HOSTILE,
        "first_seen": HOSTILE,
        "last_seen": "2026-01-01T00:00:00Z",
        "history": [],
    }
}


def test_fingerprints_table_shows_a_servers_text_literally() -> None:
    with Scripted(fixed(json_answer(FINGERPRINTS))) as server:
        status, shown = run_tty("fingerprints", "--url", f"http://127.0.0.1:{server.port}")
    assert status == 0, shown
    assert_literal(shown)


def test_fingerprints_as_json_on_a_terminal_escape_what_orjson_leaves_raw() -> None:
    """orjson escapes only characters below U+0020: a server's U+009B (an 8-bit CSI, which
    some terminals act on), DEL and U+202E reached the terminal as they were."""
    hostile = HOSTILE + "\u009b2J\x7f\u2066"
    answer = {hostile: {**FINGERPRINTS[HOSTILE], "current": hostile}}
    with Scripted(fixed(json_answer(answer))) as server:
        status, shown = run_tty(
            "fingerprints", "--json", "--url", f"http://127.0.0.1:{server.port}"
        )
    assert status == 0, shown
    assert not any(char in shown for char in "\x1b\x07\x7f\u009b\u202e\u2066")
    assert "\\u009b" in shown and "\\u202e" in shown
    assert orjson.loads(shown.replace("\r\n", "\n"))[hostile]["current"] == hostile


def test_an_error_message_from_the_server_is_shown_literally() -> None:
    error = {"error": {"message": HOSTILE}}
    with Scripted(fixed(json_answer(error, status="500 Internal Server Error"))) as server:
        status, shown = run_tty("stats", "--url", f"http://127.0.0.1:{server.port}")
    assert status == 1, shown
    assert_literal(shown)
    assert "Traceback" not in shown


def test_a_non_json_error_body_is_shown_literally() -> None:
    page = http_answer(HOSTILE.encode(), "Content-Type: text/html", status="502 Bad Gateway")
    with Scripted(fixed(page)) as server:
        status, shown = run_tty("stats", "--url", f"http://127.0.0.1:{server.port}")
    assert status == 1, shown
    assert_literal(shown)


ROTATIONS = {
    "models": {
        HOSTILE: {
            "rotations": [
                {
                    "at": HOSTILE,
                    "change": "new",
                    "from": HOSTILE,
                    "to": "fp_b",
                    "requests": HOSTILE,
                    "identical": 0,
                    "distance": {"mean": 0.5, "p90": 0.5},
                    "examples": [{"key": HOSTILE, "distance": 0.5, "old": HOSTILE, "new": "x"}],
                }
            ]
        }
    },
    "complete": False,
    "scanned": HOSTILE,
}


def test_rotations_report_shows_a_servers_text_literally() -> None:
    with Scripted(fixed(json_answer(ROTATIONS))) as server:
        status, shown = run_tty("rotations", "--url", f"http://127.0.0.1:{server.port}")
    assert status == 0, shown
    assert_literal(shown)


def chat_answer(content: str, fingerprint: object, usage: object) -> bytes:
    body = {
        "choices": [{"message": {"role": "assistant", "content": content}}],
        "system_fingerprint": fingerprint,
        "usage": usage,
    }
    return json_answer(body)


def test_check_report_shows_an_upstreams_fingerprint_and_error_code_literally() -> None:
    async def write(writer: asyncio.StreamWriter, received: Received) -> None:
        if b'"seed"' in received.body:
            error = {"error": {"message": "no", "code": HOSTILE}}
            writer.write(json_answer(error, status="429 Too Many Requests"))
        else:
            writer.write(chat_answer("same", HOSTILE, {"prompt_tokens": 1}))
        await writer.drain()

    with Scripted(write) as upstream:
        status, shown = run_tty("check", "--base-url", upstream.v1, "-n", "2", "--yes")
    assert status == 1, shown  # the seeded arm got no answer
    assert_literal(shown)


@pytest.mark.parametrize(
    "answer",
    [
        chat_answer("same", "fp_a", [1, 2]),
        http_answer(
            b'{"choices": [{"message": {"content": "same"}}], "system_fingerprint": '
            + b"[" * 1000
            + b"]" * 1000
            + b"}",
            "Content-Type: application/json",
        ),
    ],
    ids=["usage-a-list", "fingerprint-nested-past-recursion"],
)
def test_check_reads_an_answer_with_fields_of_the_wrong_type_as_malformed(answer: bytes) -> None:
    with Scripted(fixed(answer)) as upstream:
        done = run_cli("check", "--base-url", upstream.v1, "-n", "2", "--yes", "--json")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1
    arms = orjson.loads(done.stdout)["arms"]
    assert arms["seeded"]["errors"] == {"malformed answer": 2}


def test_check_compares_huge_distinct_answers_in_bounded_time() -> None:
    """Two answers of millions of characters would cost hours of exact edit distance: the
    command must end (run_cli gives it 60 s) with the distance as an upper bound."""
    answers = iter(range(1000))

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        number = next(answers)
        text = "".join(chr(97 + (i * 7 + number) % 26) for i in range(3_000_000))
        writer.write(chat_answer(text, "fp_a", {}))
        await writer.drain()

    with Scripted(write) as upstream:
        done = run_cli("check", "--base-url", upstream.v1, "-n", "2", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    distance = orjson.loads(done.stdout)["arms"]["seeded"]["mean_distance"]
    assert 0 < distance <= 1


@pytest.mark.parametrize(
    "answer",
    [
        json_answer({"entries": "many", "bytes": [], "hits": None, "misses": 1}),
        json_answer([1, 2, 3]),
        http_answer(b"<html>not json</html>", "Content-Type: text/html"),
        http_answer(b"[" * 100_000 + b"]" * 100_000, "Content-Type: application/json"),
    ],
    ids=["wrong-types", "a-list", "not-json", "deeply-nested"],
)
def test_a_wrong_answer_is_one_line_not_a_traceback(answer: bytes) -> None:
    with Scripted(fixed(answer)) as server:
        for command in ("stats", "fingerprints", "rotations"):
            status, shown = run_tty(command, "--url", f"http://127.0.0.1:{server.port}")
            assert status == 1, shown
            assert "Traceback" not in shown
            assert len(shown.strip().splitlines()) == 1, shown


def test_import_reads_a_wrong_answer_as_one_line(tmp_path: Path) -> None:
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi."}]}
    answer = {"choices": [{"message": {"role": "assistant", "content": "Hello."}}]}
    entry = Entry(
        body=orjson.dumps(answer),
        content_type="application/json",
        fingerprint="fp_a",
        stored_at=1.0,
        model="gpt-4o-mini",
        route="/v1/chat/completions",
        request=orjson.dumps(request),
    )
    recorded = tmp_path / "llm.jsonl"
    recorded.write_bytes(orjson.dumps(cassette.to_record("k", entry)) + b"\n")
    with Scripted(fixed(json_answer({"imported": {"n": 1}}))) as server:
        url = f"http://127.0.0.1:{server.port}"
        done = run_cli("import", str(recorded), "--url", url, admin_token=TOKEN)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def endless(sent: list[int]) -> Writer:
    """A 200 that declares a gigabyte of JSON and sends it as fast as it is read."""

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Content-Length: 1073741824\r\n\r\n[")
        piece = b"0," * 512 * 1024
        for _ in range(1024):
            writer.write(piece)
            await writer.drain()
            sent[0] += len(piece)

    return write


def test_an_endless_answer_is_read_only_so_far() -> None:
    sent = [0]
    with Scripted(endless(sent)) as server:
        done = run_cli("stats", "--url", f"http://127.0.0.1:{server.port}", admin_token=TOKEN)
    assert done.returncode == 1
    assert "larger than" in done.stderr, done.stderr
    assert sent[0] < 256 * 1024 * 1024


def test_an_answer_that_drips_forever_ends_at_the_timeout() -> None:
    finished = threading.Event()
    with Scripted(dripping_json(40, 0.5, finished)) as server:
        url = f"http://127.0.0.1:{server.port}"
        done = run_cli("stats", "--url", url, "--timeout", "2", admin_token=TOKEN)
        assert not finished.is_set()  # the command gave up while the answer still dripped
    assert done.returncode == 1
    assert "timeout" in done.stderr.lower() or "did not answer" in done.stderr, done.stderr


def test_a_redirect_takes_neither_the_token_nor_the_request_elsewhere() -> None:
    with Scripted(fixed(json_answer({"entries": 1}))) as elsewhere:
        redirect = http_answer(b"", f"Location: http://127.0.0.1:{elsewhere.port}/admin/stats",
                               status="307 Temporary Redirect")  # fmt: skip
        with Scripted(fixed(redirect)) as server:
            done = run_cli("stats", "--url", f"http://127.0.0.1:{server.port}", admin_token=TOKEN)
        assert elsewhere.received == []
    assert done.returncode == 1
    assert "307" in done.stderr


def test_a_password_in_the_url_is_never_printed() -> None:
    error = json_answer({"error": {"message": "down"}}, status="503 Service Unavailable")
    with Scripted(fixed(error)) as server:
        url = f"http://operator:pa55word@127.0.0.1:{server.port}/?key=s3cret"
        for command in ("stats", "rotations"):
            done = run_cli(command, "--url", url, admin_token=TOKEN)
            assert done.returncode == 1
            assert "pa55word" not in done.stderr and "s3cret" not in done.stderr, done.stderr
    done = run_cli("stats", "--url", "http://operator:pa55word@127.0.0.1:9", admin_token=TOKEN)
    assert done.returncode == 1
    assert "pa55word" not in done.stderr, done.stderr


def test_the_admin_token_in_the_clear_to_another_host_is_warned_of() -> None:
    done = run_cli("stats", "--url", "http://192.0.2.1:9", "--timeout", "1", admin_token=TOKEN)
    assert done.returncode == 1
    assert "in the clear" in done.stderr, done.stderr
    with Scripted(fixed(json_answer({"entries": 0, "bytes": 0, "hits": 0, "misses": 0}))) as s:
        done = run_cli("stats", "--url", f"http://127.0.0.1:{s.port}", admin_token=TOKEN)
    assert "in the clear" not in done.stderr, done.stderr


def test_health_asks_the_proxy_itself_never_a_forward_proxy() -> None:
    """A container that reaches the upstream through HTTP_PROXY must still check its own port."""
    healthy = http_answer(b"ok", "Content-Type: text/plain")
    with Scripted(fixed(healthy)) as proxy, Scripted(fixed(healthy)) as forward:
        env = {"HTTP_PROXY": f"http://127.0.0.1:{forward.port}"}
        env["http_proxy"] = env["HTTP_PROXY"]
        done = run_cli("health", "--url", f"http://127.0.0.1:{proxy.port}", env=env)
        assert forward.received == []
        assert len(proxy.received) == 1
    assert done.returncode == 0, done.stderr


def test_health_does_not_follow_a_redirect_to_a_healthy_server() -> None:
    healthy = http_answer(b"ok", "Content-Type: text/plain")
    with Scripted(fixed(healthy)) as elsewhere:
        redirect = http_answer(b"", f"Location: http://127.0.0.1:{elsewhere.port}/healthz",
                               status="302 Found")  # fmt: skip
        with Scripted(fixed(redirect)) as server:
            done = run_cli("health", "--url", f"http://127.0.0.1:{server.port}")
        assert elsewhere.received == []
    assert done.returncode == 1


def test_an_export_cut_short_leaves_the_previous_export(tmp_path: Path) -> None:
    """A server that stops half-way (or lies about its length) must not cost the operator the
    export already on disk: the new one replaces it only once complete."""
    previous = tmp_path / "export.jsonl"
    previous.write_bytes(b'{"kept": true}\n')

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n")
        writer.write(b"Content-Length: 100000\r\n\r\n" + b'{"half": "way"}\n' * 10)
        await writer.drain()
        writer.close()

    with Scripted(write) as server:
        url = f"http://127.0.0.1:{server.port}"
        done = run_cli("export", "--url", url, "-o", str(previous), admin_token=TOKEN)
    assert done.returncode == 1, done.stderr
    assert previous.read_bytes() == b'{"kept": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.jsonl"]  # no temporary left


def zstd_bomb(blocks: int) -> bytes:
    """A zstd frame of RLE blocks: 4 bytes on the wire for each 128 KiB it inflates to."""
    frame = bytearray(b"\x28\xb5\x2f\xfd\x00\x38")  # magic; no size given; 128 KiB window
    for number in range(blocks):
        last = number == blocks - 1
        frame += ((128 * 1024) << 3 | 1 << 1 | last).to_bytes(3, "little") + b"\x00"
    return bytes(frame)


def test_an_export_is_not_inflated_without_bound(tmp_path: Path) -> None:
    """The export streams to disk, so its size is the server's to choose; its memory is not. A
    64 KiB answer labelled `Content-Encoding: zstd` inflates to 2 GiB in one read, which the
    HTTP client would hold whole (and copy) before the command wrote a byte."""
    previous = tmp_path / "export.jsonl"
    previous.write_bytes(b'{"kept": true}\n')
    bomb = http_answer(zstd_bomb(16 * 1024), "Content-Type: application/x-ndjson",
                       "Content-Encoding: zstd")  # fmt: skip
    limit = 1536 * 1024 * 1024  # the command's address space: the bomb cannot reach the machine

    def bounded() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    with Scripted(fixed(bomb)) as server:
        url = f"http://127.0.0.1:{server.port}"
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "export", "--url", url, "-o", str(previous)],
            capture_output=True, text=True, timeout=120, check=False, preexec_fn=bounded,
            env={"PATH": "/usr/bin:/bin", "REPRO_ADMIN_TOKEN": TOKEN},
        )  # fmt: skip
        asked = server.received[0].headers.get("accept-encoding")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "encoding" in done.stderr, done.stderr
    assert asked == "identity"
    assert previous.read_bytes() == b'{"kept": true}\n'


def test_a_forward_proxy_is_never_handed_a_token_for_loopback() -> None:
    """HTTP_PROXY (set on many operators' machines) cannot reach this machine's loopback: an
    admin command or `check` sent through it would only hand it the admin token or API key,
    in the clear, and fail."""
    stats = json_answer({"entries": 0, "bytes": 0, "hits": 0, "misses": 0})
    with Scripted(fixed(stats)) as server, Scripted(fixed(stats)) as forward:
        env = {name: f"http://127.0.0.1:{forward.port}" for name in ("HTTP_PROXY", "http_proxy")}
        env |= {"ALL_PROXY": env["HTTP_PROXY"], "OPENAI_API_KEY": "sk-operator"}
        url = f"http://127.0.0.1:{server.port}"
        done = run_cli("stats", "--url", url, admin_token=TOKEN, env=env)
        assert done.returncode == 0, done.stderr
        exported = run_cli("export", "--url", url, admin_token=TOKEN, env=env)
        assert exported.returncode == 0, exported.stderr
        checked = run_cli("check", "--base-url", f"http://localhost:{server.port}/v1",
                          "-n", "2", "--yes", "--json", env=env)  # fmt: skip
        assert "Traceback" not in checked.stderr, checked.stderr
        assert forward.received == []
        assert len(server.received) == 2 + 4


@pytest.mark.parametrize("token", ["tok\u20acen", "tok\r\nX-Injected: 1", "\u201ctoken\u201d"])
def test_a_credential_no_header_can_carry_is_one_line_naming_its_source(token: str) -> None:
    """A pasted typographic quote or a stray newline: one line saying so, no traceback, no
    request sent, and the value itself never printed."""
    with Scripted(fixed(json_answer({"entries": 0}))) as server:
        url = f"http://127.0.0.1:{server.port}"
        stats = run_cli("stats", "--url", url, admin_token=token)
        checked = run_cli("check", "--base-url", url + "/v1", "--yes", "-n", "2",
                          env={"OPENAI_API_KEY": token})  # fmt: skip
        assert server.received == []
    for done, source in ((stats, "the admin token"), (checked, "the API key")):
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and source in done.stderr, done.stderr
        assert "tok" not in done.stderr.replace("token", ""), done.stderr


DEEP = "[" * 1000 + "]" * 1000  # within orjson's limit, past Python's recursion


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("fingerprints", '{"m": {"current": DEEP, "first_seen": "a", "last_seen": "b", '
                         '"history": []}}'.replace("DEEP", DEEP)),
        ("rotations", orjson.dumps(ROTATIONS).decode().replace('"fp_b"', DEEP)),
        ("rotations", orjson.dumps(ROTATIONS).decode().replace('"x"', DEEP)),
    ],
)  # fmt: skip
def test_a_container_where_text_belongs_is_one_line_not_a_traceback(
    command: str, answer: str
) -> None:
    """A cell is text: a list or an object in its place is a wrong answer, not something to
    print as Python would (which recurses without bound)."""
    page = http_answer(answer.encode(), "Content-Type: application/json")
    with Scripted(fixed(page)) as server:
        status, shown = run_tty(command, "--url", f"http://127.0.0.1:{server.port}")
    assert status == 1, shown
    assert "Traceback" not in shown and "not what a repro-proxy sends" in shown, shown
