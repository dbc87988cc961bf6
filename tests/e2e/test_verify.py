"""Drift sampling: the text comparison (pure) and --verify-rate against the sim (real processes)."""

from __future__ import annotations

import time

import httpx
import orjson

from proxy.core.entry import VERDICTS
from proxy.server.verify import MAX_COMPARED, answer_text, drift, fresh_fingerprint
from tests.fixtures_procs import Proxy, ProxyFactory, Sim


def test_drift_is_the_normalized_edit_distance_of_the_texts() -> None:
    assert drift("same", "same") == 0.0
    assert drift("kitten", "sitting") == 3 / 7
    assert drift("", "abcd") == 1.0


def test_drift_of_long_answers_compares_a_bounded_prefix() -> None:
    stored, fresh = "ab" * 250_000, "ba" * 250_000
    assert drift(stored, fresh) == drift(stored[:MAX_COMPARED], fresh[:MAX_COMPARED]) > 0


def test_answers_that_differ_only_past_the_cap_still_differ() -> None:
    stored = "a" * (MAX_COMPARED + 10)
    assert drift(stored, stored + "b") == 1 / (MAX_COMPARED + 11)


def test_answer_text_of_plain_and_streamed_answers() -> None:
    plain = orjson.dumps(
        {
            "choices": [
                {"index": 1, "message": {"content": "second"}},
                {
                    "index": 0,
                    "message": {
                        "content": "first",
                        "tool_calls": [{"function": {"name": "f", "arguments": '{"a":1}'}}],
                    },
                },
            ]
        }
    )
    assert answer_text(plain, stream=False) == 'firstf{"a":1}\nsecond'
    frames = [
        {"system_fingerprint": "fp_x", "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
    ]
    stream = b"".join(b"data: " + orjson.dumps(f) + b"\n\n" for f in frames) + b"data: [DONE]\n\n"
    assert answer_text(stream, stream=True) == "Hello"
    assert fresh_fingerprint(stream, stream=True) == "fp_x"
    assert answer_text(b"not json", stream=False) == ""


def test_a_fresh_answer_that_is_no_answer_teaches_no_fingerprint() -> None:
    """An error with status 200, a stream that reported one, or JSON where a stream was asked
    for: None (the check's `error`), never `none`, which would be a rotation."""
    error = orjson.dumps({"error": {"message": "Rate limited."}, "system_fingerprint": "fp_x"})
    assert fresh_fingerprint(error, stream=False) is None
    assert fresh_fingerprint(b'data: {"error": {"message": "no"}}\n\n', stream=True) is None
    answer = orjson.dumps({"choices": [{"message": {"content": "hi"}}]})
    assert fresh_fingerprint(answer, stream=True) is None
    assert fresh_fingerprint(answer, stream=False) == "none"
    done = b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
    assert fresh_fingerprint(done + b"data: [DONE]\n\n", stream=True) == "none"
    named = b'data: {"system_fingerprint": "fp_new", "choices": []}\n\n'
    spoiled = named + b'data: {"error": {"message": "overloaded"}}\n\n'
    assert fresh_fingerprint(spoiled, stream=True) is None  # as the client path: not learned
    assert fresh_fingerprint(named, stream=True) == "fp_new"  # cut short: learned


def test_a_moderations_text_is_its_verdicts_and_its_fingerprint_its_snapshot() -> None:
    """Scores move a little between two runs of one snapshot; a verdict moving is drift."""

    def verdict(flagged: bool, score: float) -> bytes:
        result = {
            "flagged": flagged,
            "categories": {"hate": flagged},
            "category_scores": {"hate": score},
        }
        return orjson.dumps({"model": "omni-moderation-2024-09-26", "results": [result]})

    assert answer_text(verdict(False, 0.001), False) == answer_text(verdict(False, 0.002), False)
    assert drift(answer_text(verdict(False, 0.1), False), answer_text(verdict(True, 0.9), False))
    moderated = verdict(False, 0.001)
    assert fresh_fingerprint(moderated, False, shape=VERDICTS) == "omni-moderation-2024-09-26"
    assert fresh_fingerprint(moderated, False) == "none"  # a chat answer naming its model
    for hostile in ("omni moderation", "x" * 200, "fp\r\nSet-Cookie: a=b", 7):
        answer = orjson.dumps({"model": hostile, "results": [{"flagged": False}]})
        assert fresh_fingerprint(answer, False, shape=VERDICTS) == "none"


def test_verify_rate_samples_moderations_too(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy("--verify-rate", "1")
    body = {"input": "words of violence"}
    headers = {"Authorization": "Bearer sk-alice"}
    for expected in ("MISS", "HIT"):
        answer = httpx.post(proxy.v1 + "/moderations", json=body, headers=headers, timeout=10)
        assert answer.headers["X-Repro-Cache"] == expected
    model = "omni-moderation-latest"
    assert wait_for(proxy, 1, model=model, result="same") == 1
    assert proxy.metric("repro_verify_total", model=model, result="rotated") == 0


def ask(proxy: Proxy, content: str) -> httpx.Response:
    return proxy.chat(content, model="m", key="sk-alice")


def wait_for(proxy: Proxy, total: float, **labels: str) -> float:
    return proxy.metric_reaching("repro_verify_total", total, **labels)


def test_verify_rate_counts_same_and_differs_at_the_sims_divergence(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy("--verify-rate", "1")
    for index in range(4):
        ask(proxy, f"q{index}")
    for index in range(4):
        hit = ask(proxy, f"q{index}")
        assert hit.headers["X-Repro-Cache"] == "HIT"
        wait_for(proxy, index + 1, model="m", result="same")
    assert proxy.metric("repro_verify_total", model="m", result="same") == 4
    sim.settings(divergence=1.0)
    for index in range(4):
        ask(proxy, f"q{index}")
        wait_for(proxy, index + 1, model="m", result="differs")
    assert proxy.metric("repro_verify_total", model="m", result="differs") == 4
    assert proxy.metric("repro_verify_distance_count", model="m", fingerprint="fp_sim_0001") == 8
    assert (
        proxy.metric("repro_verify_distance_bucket", model="m", fingerprint="fp_sim_0001", le="0.0")
        == 4
    )
    sim.fault(kind="status", status=500, count=1)
    assert ask(proxy, "q1").headers["X-Repro-Cache"] == "HIT"
    assert wait_for(proxy, 1, model="m", result="error") == 1
    sim.set_fingerprint("fp_sim_0002")
    ask(proxy, "q0")
    assert wait_for(proxy, 1, model="m", result="rotated") == 1
    assert ask(proxy, "q2").headers["X-Repro-Cache"] == "MISS"  # the rotation was learned


def test_no_verification_by_default(proxy: Proxy, sim: Sim) -> None:
    ask(proxy, "q")
    ask(proxy, "q")
    time.sleep(0.5)
    assert len(sim.llm_requests()) == 1


def reasks(sim: Sim, text: str) -> list[dict[str, object]]:
    """The bodies of the requests the sim received holding `text`, in order."""
    asked = [orjson.loads(r["body"]) for r in sim.llm_requests()]
    return [body for body in asked if text in orjson.dumps(body).decode()]


def test_a_check_asks_the_upstream_not_to_keep_its_answer(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """A response is kept upstream unless it says otherwise; re-asked as it was, every check
    added one, with an id nobody knows, to what its owner lists and pays for."""
    proxy = start_proxy("--verify-rate", "1")
    responses = {"model": "m", "input": "a response kept by default"}
    chat = {"model": "m", "messages": [{"role": "user", "content": "kept chat"}], "store": True}
    chat["metadata"] = {"run": "7"}
    for expected in ("MISS", "HIT"):
        for path, body in (("/responses", responses), ("/chat/completions", chat)):
            answer = proxy.post(path, body, key="sk-alice")
            assert answer.headers["X-Repro-Cache"] == expected
    assert wait_for(proxy, 2, model="m", result="same") == 2
    first, again = reasks(sim, "kept by default")
    assert "store" not in first and again["store"] is False
    first, again = reasks(sim, "kept chat")
    assert first["store"] is True and first["metadata"] == {"run": "7"}
    assert "store" not in again and "metadata" not in again
    assert again["messages"] == first["messages"]


def test_no_check_re_runs_an_mcp_call_or_asks_where_the_client_forbade_it(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """A remote MCP server's tools act on the world, and `only-if-cached` says the upstream
    is not to be asked: neither HIT is re-asked, while a plain one, after them, is."""
    proxy = start_proxy("--verify-rate", "1")
    mcp = {"type": "mcp", "server_label": "mail", "server_url": "https://127.0.0.1/mcp"}
    acting = {"model": "m", "input": "send the mail", "tools": [mcp], "store": False}
    forbidden = {"model": "m", "input": "only from the cache", "store": False}
    plain = {"model": "m", "input": "a plain question", "store": False}
    for body in (acting, forbidden, plain):
        assert proxy.post("/responses", body, key="sk-alice").headers["X-Repro-Cache"] == "MISS"
    only_cached = {"Cache-Control": "only-if-cached"}
    for body, headers in ((acting, {}), (forbidden, only_cached), (plain, {})):
        answer = proxy.post("/responses", body, key="sk-alice", headers=headers)
        assert answer.headers["X-Repro-Cache"] == "HIT"
    assert wait_for(proxy, 1, model="m", result="same") == 1
    assert len(reasks(sim, "a plain question")) == 2
    deadline = time.monotonic() + 1.0  # a check started before the plain one's had ended
    while time.monotonic() < deadline:
        assert len(reasks(sim, "send the mail")) == 1
        assert len(reasks(sim, "only from the cache")) == 1
        time.sleep(0.1)
