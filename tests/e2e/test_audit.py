"""`repro-proxy check`: pure distances and tally, then the audit against the real sim and proxy."""

from __future__ import annotations

import argparse
import io
import math
from collections import Counter
from itertools import combinations
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.textdistance import (
    cosine_distance,
    mean_pairwise,
    normalized_levenshtein,
)
from proxy.tools.audit import cli, network
from proxy.tools.audit.plan import Plan
from proxy.tools.audit.tally import Answer, ArmReport, Failure, Report, parse_answer, tally
from tests.fixtures_procs import Proxy, Sim, free_port

ARM_FIELDS = {
    "seed",
    "temperature",
    "requests",
    "ok",
    "failed",
    "errors",
    "distinct",
    "agreement",
    "mean_distance",
    "distance_error",
    "fingerprints",
    "prompt_tokens",
    "completion_tokens",
    "seed_injected",
    "answers",
}
REPORT_FIELDS = {
    "base_url",
    "model",
    "requests_per_arm",
    "max_tokens",
    "distance",
    "embedding_model",
    "arms",
}


# --- distances -------------------------------------------------------------------------------


def reference_levenshtein(a: str, b: str) -> int:
    """The textbook dynamic programme, row by row."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="abcé \n", max_size=40), st.text(alphabet="abcdé \n", max_size=40))
def test_normalized_levenshtein_is_the_textbook_distance_over_the_longer_length(
    a: str, b: str
) -> None:
    longest = max(len(a), len(b))
    expected = reference_levenshtein(a, b) / longest if longest else 0.0
    assert normalized_levenshtein(a, b) == pytest.approx(expected)
    assert normalized_levenshtein(b, a) == normalized_levenshtein(a, b)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=150), st.text(max_size=150))
def test_normalized_levenshtein_on_long_unicode_text(a: str, b: str) -> None:
    longest = max(len(a), len(b))
    expected = reference_levenshtein(a, b) / longest if longest else 0.0
    assert normalized_levenshtein(a, b) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("", "", 0.0),
        ("same", "same", 0.0),
        ("abc", "xyz", 1.0),
        ("", "abcd", 1.0),
        ("kitten", "sitting", 3 / 7),
        ("The sea is calm.", "The sea is calm!", 1 / 16),
    ],
)
def test_normalized_levenshtein(a: str, b: str, expected: float) -> None:
    assert normalized_levenshtein(a, b) == pytest.approx(expected)


def test_cosine_distance() -> None:
    assert cosine_distance([1.0, 2.0], [2.0, 4.0]) == pytest.approx(0.0)
    assert cosine_distance([1.0, 0.0], [0.0, 3.0]) == pytest.approx(1.0)
    assert cosine_distance([1.0, 1.0], [-1.0, -1.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="zero vector"):
        cosine_distance([0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="length"):
        cosine_distance([1.0], [1.0, 0.0])


def test_mean_pairwise_small_cases() -> None:
    one = lambda a, b: 1.0  # noqa: E731
    assert mean_pairwise({}, one) is None
    assert mean_pairwise({"a": 1}, one) is None
    assert mean_pairwise({"a": 5}, one) == 0.0
    assert mean_pairwise({"a": 1, "b": 1}, one) == 1.0
    assert mean_pairwise({"a": 2, "b": 2}, one) == pytest.approx(4 / 6)


@given(st.lists(st.sampled_from(["", "a", "ab", "abc", "xyz"]), max_size=12))
def test_mean_pairwise_equals_the_mean_over_every_pair(answers: list[str]) -> None:
    pairs = list(combinations(answers, 2))
    got = mean_pairwise(Counter(answers), normalized_levenshtein)
    if not pairs:
        assert got is None
    else:
        expected = math.fsum(normalized_levenshtein(a, b) for a, b in pairs) / len(pairs)
        assert got == pytest.approx(expected)


# --- answers, tally, plan --------------------------------------------------------------------


def chat_body(content: Any = "Hello.", fingerprint: Any = "fp_1", **extra: Any) -> bytes:
    message = {"role": "assistant", "content": content, **extra}
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return orjson.dumps({"choices": [choice], "usage": usage, "system_fingerprint": fingerprint})


def test_parse_answer_reads_text_fingerprint_usage_and_injected_seed() -> None:
    got = parse_answer(200, {"x-repro-seed-source": "default"}, chat_body())
    assert got == Answer("Hello.", "fp_1", 3, 5, seed_injected=True)
    assert parse_answer(200, {}, chat_body(fingerprint=None)) == Answer(
        "Hello.", "none", 3, 5, False
    )


def test_parse_answer_compares_tool_calls_as_json() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    got = parse_answer(200, {}, chat_body(content=None, tool_calls=calls))
    assert isinstance(got, Answer)
    assert orjson.loads(got.text)["tool_calls"] == calls


RATE_LIMITED = b'{"error": {"message": "slow down", "code": "rate_limit_exceeded"}}'
SERVER_ERROR = b'{"error": {"message": "oops", "type": "server_error", "code": null}}'


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (429, RATE_LIMITED, "HTTP 429 rate_limit_exceeded"),
        (500, SERVER_ERROR, "HTTP 500 server_error"),
        (502, b"<html>bad gateway</html>", "HTTP 502"),
        (200, b"not json", "malformed answer"),
        (200, b'{"choices": []}', "malformed answer"),
        (200, b'{"choices": [{"text": "a completion, not a chat"}]}', "malformed answer"),
    ],
)
def test_parse_answer_failures(status: int, body: bytes, reason: str) -> None:
    assert parse_answer(status, {}, body) == Failure(reason)


def test_tally_counts_answers_fingerprints_tokens_and_errors() -> None:
    outcomes: list[Answer | Failure] = [
        Answer("a", "fp_1", 3, 5, False),
        Answer("a", "fp_1", 3, 5, False),
        Answer("b", "fp_2", 3, 7, True),
        Failure("HTTP 500"),
        Failure("HTTP 500"),
        Failure("ReadTimeout"),
    ]
    t = tally(iter(outcomes))
    assert (t.ok, t.failed, len(t.answers)) == (3, 3, 2)
    assert t.agreement == pytest.approx(2 / 3)
    assert t.fingerprints == Counter({"fp_1": 2, "fp_2": 1})
    assert t.errors == Counter({"HTTP 500": 2, "ReadTimeout": 1})
    assert (t.prompt_tokens, t.completion_tokens, t.seed_injected) == (9, 17, 1)
    assert tally([Failure("x")]).agreement is None


def plan(**changes: Any) -> Plan:
    values: dict[str, Any] = {
        "base_url": "http://upstream/v1",
        "model": "m",
        "prompt": "Hi",
        "system": None,
        "seed": 7,
        "n": 10,
        "max_tokens": 50,
        "concurrency": 2,
        "distance": "text",
        "embedding_model": "e",
    }
    return Plan(**{**values, **changes})


def test_plan_bodies_differ_only_in_seed_and_temperature() -> None:
    p = plan(system="Be brief.")
    unseeded, seeded = (p.body(arm) for arm in p.arms)
    assert unseeded == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "max_tokens": 50,
    }
    assert seeded == {**unseeded, "seed": 7, "temperature": 0.0}


def test_plan_states_its_cost() -> None:
    assert "20 chat requests" in plan().describe()
    assert "at most 1000 completion tokens" in plan().describe()
    assert "embeddings" not in plan().describe()
    assert "up to 2 embeddings requests of e" in plan(distance="embedding").describe()
    assert plan(distance="embedding", n=300).embedding_requests() == 4


def test_exit_code_is_1_when_an_arm_measured_nothing() -> None:
    p = plan()
    good = tally([Answer("a", "fp", 1, 1, False)] * 2)
    bad = tally([Failure("HTTP 500")] * 2)
    unseeded, seeded = p.arms
    assert Report(p, (ArmReport(unseeded, good, 0.0), ArmReport(seeded, good, 0.0))).exit_code == 0
    assert Report(p, (ArmReport(unseeded, good, 0.0), ArmReport(seeded, bad, None))).exit_code == 1
    broken = ArmReport(seeded, good, None, "embeddings request failed: HTTP 400")
    assert Report(p, (ArmReport(unseeded, good, 0.0), broken)).exit_code == 1


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("argv", [["-n", "1"], ["--concurrency", "0"], ["--max-tokens", "x"]])
def test_flags_are_validated(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "expected an integer" in capsys.readouterr().err


async def test_failed_embeddings_are_reported_not_raised() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        error = {"error": {"message": "no such model", "code": "model_not_found"}}
        return httpx.Response(404, json=error)

    transport = httpx.MockTransport(upstream)
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream/v1/") as client:
        p = plan(distance="embedding")
        report = await network.measure(
            client,
            p,
            p.arms[0],
            tally([Answer("a", "f", 1, 1, False), Answer("b", "f", 1, 1, False)]),
        )
    assert report.mean_distance is None
    assert report.distance_error == "embeddings request failed: HTTP 404 model_not_found"


# --- end to end: the audit against the real sim and proxy ------------------------------------


async def check(
    capsys: pytest.CaptureFixture[str], base_url: str, *argv: str
) -> tuple[int, dict[str, Any]]:
    """Run the audit in-process with --json; the exit code and the parsed report."""
    ns = parse("--base-url", base_url, "--api-key", "sk-audit", "--json", "--yes", *argv)
    code = await cli.run(ns)
    out = capsys.readouterr().out
    return code, orjson.loads(out)


async def test_seed_makes_a_deterministic_upstream_agree(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = await check(capsys, sim.v1, "-n", "8", "--prompt", "Tell me a story")
    unseeded, seeded = report["arms"]["unseeded"], report["arms"]["seeded"]
    assert code == 0
    assert (seeded["distinct"], seeded["agreement"], seeded["mean_distance"]) == (1, 1.0, 0.0)
    assert unseeded["distinct"] > 1
    assert 0 < unseeded["mean_distance"] <= 1
    for arm in (unseeded, seeded):
        assert (arm["ok"], arm["failed"], arm["errors"]) == (8, 0, {})
        assert arm["fingerprints"] == {"fp_sim_0001": 8}
        assert arm["prompt_tokens"] == 8 * 5  # the sim counts words: "user", "Tell me a story"
        assert arm["completion_tokens"] >= 8
        assert arm["seed_injected"] == 0
    bodies = [orjson.loads(r["body"]) for r in sim.llm_requests()]
    assert sorted(b.get("seed") is None for b in bodies) == [False] * 8 + [True] * 8


async def test_divergence_is_measured_near_the_configured_rate(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.settings(divergence=0.5)
    code, report = await check(capsys, sim.v1, "-n", "40", "--concurrency", "8")
    seeded = report["arms"]["seeded"]
    assert code == 0
    assert seeded["distinct"] > 1
    # 40 draws at rate 0.5: the differing share lies within 0.15..0.85 but once in ~10^5 runs
    assert 0.15 <= 1 - seeded["agreement"] <= 0.85
    assert seeded["mean_distance"] > 0


async def test_json_report_has_the_documented_fields(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    _, report = await check(capsys, sim.v1, "-n", "3", "--model", "gpt-4o", "--seed", "99")
    assert set(report) == REPORT_FIELDS
    assert report["model"] == "gpt-4o"
    assert (report["requests_per_arm"], report["distance"]) == (3, "text")
    assert report["embedding_model"] is None
    assert set(report["arms"]) == {"unseeded", "seeded"}
    for arm in report["arms"].values():
        assert set(arm) == ARM_FIELDS
        assert sum(a["count"] for a in arm["answers"]) == 3
    assert (report["arms"]["seeded"]["seed"], report["arms"]["seeded"]["temperature"]) == (99, 0.0)


async def test_embedding_distance_uses_the_upstreams_embeddings(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = await check(
        capsys, sim.v1, "-n", "5", "--distance", "embedding", "--embedding-model", "emb-x"
    )
    unseeded, seeded = report["arms"]["unseeded"], report["arms"]["seeded"]
    assert code == 0
    assert report["embedding_model"] == "emb-x"
    assert seeded["mean_distance"] == 0.0
    assert 0 < unseeded["mean_distance"] <= 2
    embedded = [r for r in sim.llm_requests() if r["path"] == "/v1/embeddings"]
    assert len(embedded) == 1  # all agreeing seeded answers need no embedding at all
    body = orjson.loads(embedded[0]["body"])
    assert body["model"] == "emb-x"
    assert len(body["input"]) == unseeded["distinct"]


async def test_through_the_proxy_every_request_reaches_the_upstream(
    proxy: Proxy, sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = await check(capsys, proxy.v1, "-n", "6")
    chats = [r for r in sim.llm_requests() if r["path"] == "/v1/chat/completions"]
    assert code == 0
    assert len(chats) == 12  # no-cache: no HIT, no coalescing of the identical seeded requests
    unseeded = report["arms"]["unseeded"]
    # the proxy's default seed makes even the unseeded arm reproducible, and the report says so
    assert (unseeded["seed_injected"], unseeded["distinct"]) == (6, 1)
    code, _ = await check(capsys, proxy.v1, "-n", "6")
    assert len(sim.llm_requests()) == 24


async def test_upstream_errors_are_counted_per_arm(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.fault(kind="status", status=503, count=3)
    code, report = await check(capsys, sim.v1, "-n", "5", "--concurrency", "1")
    arms = report["arms"]
    assert code == 0
    assert sum(arm["failed"] for arm in arms.values()) == 3
    assert sum(arm["ok"] for arm in arms.values()) == 7
    errors = Counter(arms["unseeded"]["errors"]) + Counter(arms["seeded"]["errors"])
    assert errors == {"HTTP 503 server_error": 3}


async def test_exit_code_is_1_when_every_request_fails(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.accept_keys("sk-someone-else")
    code, report = await check(capsys, sim.v1, "-n", "2")
    assert code == 1
    for arm in report["arms"].values():
        assert arm["errors"] == {"HTTP 401 invalid_api_key": 2}
        assert (arm["distinct"], arm["agreement"], arm["mean_distance"]) == (0, None, None)


def test_unreachable_upstream_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    ns = parse("--base-url", url, "--api-key", "k", "-n", "2", "--json")
    assert cli.main(ns) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["arms"]["seeded"]["errors"] == {"ConnectError": 2}


async def test_table_and_cost_go_to_the_terminal(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = parse("--base-url", sim.v1, "--api-key", "k", "-n", "3", "--max-tokens", "20", "--yes")
    assert await cli.run(ns) == 0
    out, err = capsys.readouterr()
    assert "6 chat requests" in err
    assert "at most 120 completion tokens" in err
    for label in ("distinct answers", "agreement", "mean pairwise distance", "fp_sim_0001"):
        assert label in out
    assert "seed 12345, temperature 0" in out


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_terminal_confirmation_can_abort(
    sim: Sim, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", FakeTerminal("n\n"))
    ns = parse("--base-url", sim.v1, "--api-key", "k", "-n", "2")
    assert await cli.run(ns) == 1
    assert "Proceed? [y/N]" in capsys.readouterr().err
    assert sim.llm_requests() == []


async def test_no_prompt_without_a_terminal(
    sim: Sim, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    ns = parse("--base-url", sim.v1, "--api-key", "k", "-n", "2", "--json")
    assert await cli.run(ns) == 0
    assert "Proceed" not in capsys.readouterr().err
    assert len(sim.llm_requests()) == 4


async def test_reports_never_print_credentials_in_the_base_url(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reports are pasted into tickets and kept as CI artifacts: a gateway's password in the
    URL's user info, or a key in its query, must not travel with them."""
    port = sim.v1.split(":")[2].split("/")[0]
    url = f"http://ops:gw-password@127.0.0.1:{port}/v1?api-key=gw-query-key"
    for output in (["--json"], []):
        ns = parse("--base-url", url, "--api-key", "sk-audit", "-n", "2", "--yes", *output)
        await cli.run(ns)
        out, err = capsys.readouterr()
        assert f"127.0.0.1:{port}/v1" in out + err
        for secret in ("gw-password", "gw-query-key", "sk-audit"):
            assert secret not in out + err, (output, secret)
