"""`repro-proxy check` against a hostile upstream: what it keeps of N answers is bounded by the
number of requests in flight, never by N times the largest answer (a real process)."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import zlib
from itertools import count

import orjson

from tests.hostile import Received, Scripted, http_answer

ANSWER_CHARS = 48 * 1024 * 1024
ADDRESS_SPACE = 1536 * 1024 * 1024
"""The command's address space: what 2N answers held whole would pass, what N in flight do not."""


def bounded() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def check(upstream: Scripted, *args: str) -> subprocess.CompletedProcess[str]:
    """`repro-proxy check` against `upstream` (JSON out, no prompt), in an address space of
    ADDRESS_SPACE, with no environment besides PATH (no proxy variables, no API key)."""
    argv = ["check", "--base-url", upstream.v1, *args, "--yes", "--json"]
    return subprocess.run(
        [sys.executable, "-m", "proxy", *argv],
        capture_output=True, text=True, timeout=300, check=False, preexec_fn=bounded,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_check_keeps_a_bounded_part_of_each_huge_answer() -> None:
    """Each answer is 48 KiB on the wire (deflate) and 48 MiB of distinct text: 16 of them held
    whole (the tally's, the report's) need 768 MiB, 32 of them more than the command may take."""
    numbers = count()

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        text = f"{next(numbers):08d}" + "a" * ANSWER_CHARS
        body = orjson.dumps({"choices": [{"message": {"content": text}}]})
        writer.write(http_answer(zlib.compress(body, 1), "Content-Type: application/json",
                                 "Content-Encoding: deflate"))  # fmt: skip
        await writer.drain()

    with Scripted(write) as upstream:
        done = check(upstream, "-n", "16")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    arms = orjson.loads(done.stdout)["arms"]
    for arm in arms.values():
        assert (arm["ok"], arm["distinct"]) == (16, 16)
        assert all(len(answer["text"]) < 1024 * 1024 for answer in arm["answers"])
        assert 0 < arm["mean_distance"] <= 1


def test_check_refuses_an_embedding_longer_than_any_models_before_holding_it() -> None:
    """Embeddings answers of 36 KiB (deflate) holding 12 Mi numbers a vector: as Python floats,
    about a GiB held and seconds of arithmetic, where the largest embedding models give
    thousands."""
    numbers = count()
    vector = b"[" + b"1," * (12 * 1024 * 1024) + b"1]"

    async def write(writer: asyncio.StreamWriter, received: Received) -> None:
        if b"embeddings" in received.head.split(b"\r\n", 1)[0]:
            inputs = orjson.loads(received.body)["input"]
            items = b",".join(
                b'{"index":%d,"embedding":%s}' % (index, vector) for index in range(len(inputs))
            )
            body = zlib.compress(b'{"data":[' + items + b"]}", 1)
        else:
            text = f"answer {next(numbers)}"
            body = zlib.compress(orjson.dumps({"choices": [{"message": {"content": text}}]}))
        writer.write(http_answer(body, "Content-Type: application/json",
                                 "Content-Encoding: deflate"))  # fmt: skip
        await writer.drain()

    with Scripted(write) as upstream:
        done = check(upstream, "-n", "2", "--distance", "embedding")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    for arm in orjson.loads(done.stdout)["arms"].values():
        assert arm["ok"] == 2
        assert "embedding of more than" in arm["distance_error"]


def test_check_names_why_an_answer_was_unusable() -> None:
    """An answer in a coding the command does not read (zstd) is not "too large or too slow":
    the report says what was wrong with it, as the other commands do."""
    answer = http_answer(b"\x28\xb5\x2f\xfd\x00", "Content-Type: application/json",
                         "Content-Encoding: zstd")  # fmt: skip

    async def write(writer: asyncio.StreamWriter, _: Received) -> None:
        writer.write(answer)
        await writer.drain()

    with Scripted(write) as upstream:
        done = check(upstream, "-n", "2")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    reason = "the answer is in an encoding this command does not read: 'zstd'"
    for arm in orjson.loads(done.stdout)["arms"].values():
        assert arm["errors"] == {reason: 2}
