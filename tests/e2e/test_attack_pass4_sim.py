"""A web page in the developer's browser (Debian's headless chromium) against `repro-proxy sim`
on 127.0.0.1, which has no authentication: it keeps each request's headers, the API key the
proxy forwards among them (a real one, when the recording shell has OPENAI_API_KEY set), and its
control routes decide what the next answers say. A page rebinding its name to 127.0.0.1 read
the keys; a page of any origin planted the answer a recording then stored."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.e2e.test_e2e_ui import CHROMEDRIVER, CHROMIUM, browser_only
from tests.fixtures_procs import ProxyFactory, Sim, running_sim
from tests.hostile import Scripted, fixed, http_answer

REAL_KEY = "sk-developers-real-key-0123456789"
REBOUND = "rebound.example"


@pytest.fixture
def own_sim() -> Iterator[Sim]:
    """A sim of this test's own: a planted fault must not reach other tests."""
    with running_sim() as sim:
        yield sim


@pytest.fixture
def rebinding_browser() -> Iterator[Any]:
    """Headless chromium in which REBOUND resolves to 127.0.0.1: the state a DNS rebinding
    attack ends in, the page's own name now pointing at the developer's machine."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1")
    made = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    made.set_page_load_timeout(30)
    made.set_script_timeout(30)
    try:
        yield made
    finally:
        made.quit()


READS = """
const done = arguments[arguments.length - 1];
fetch("/_sim/requests").then((r) => r.text()).then(done, (e) => done("failed: " + e));
"""

PLANTS = """
const [url, done] = arguments;
const answer = {
  id: "chatcmpl-planted", object: "chat.completion", created: 1, model: "gpt-4o-mini",
  system_fingerprint: "fp_planted",
  choices: [{index: 0, finish_reason: "stop",
             message: {role: "assistant", content: "Planted by a page."}}],
  usage: {prompt_tokens: 1, completion_tokens: 1, total_tokens: 2},
};
const fault = {kind: "status", status: 200, count: 5, body: answer};
fetch(url + "/_sim/faults", {method: "POST", mode: "no-cors", body: JSON.stringify(fault)})
  .then(() => done("sent"), (e) => done("failed: " + e));
"""


@browser_only
def test_a_page_rebound_to_loopback_reads_no_recorded_key(
    own_sim: Sim, rebinding_browser: Any
) -> None:
    asked = httpx.post(
        own_sim.v1 + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {REAL_KEY}"},
        timeout=10,
    )
    assert asked.status_code == 200
    rebinding_browser.get(f"http://{REBOUND}:{own_sim.port}/_sim/stats")
    seen = rebinding_browser.execute_async_script(READS)
    assert REAL_KEY not in seen
    assert "host_not_allowed" in seen
    # The sim's own clients are served as before: by address, and as localhost.
    assert any(REAL_KEY in str(r["headers"]) for r in own_sim.requests())
    local = httpx.get(f"http://localhost:{own_sim.port}/_sim/stats", timeout=5)
    assert local.status_code == 200


@browser_only
def test_a_page_of_another_origin_plants_no_answer_in_a_recording(
    own_sim: Sim, start_proxy: ProxyFactory, rebinding_browser: Any
) -> None:
    page = http_answer(b"<!doctype html><title>elsewhere</title>", "Content-Type: text/html")
    with Scripted(fixed(page)) as elsewhere:
        rebinding_browser.get(f"http://127.0.0.1:{elsewhere.port}/")
        assert rebinding_browser.execute_async_script(PLANTS, own_sim.url) == "sent"
    proxy = start_proxy(upstream=own_sim.v1)
    with OpenAI(base_url=proxy.v1, api_key="sk-test", max_retries=0) as client:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Name a colour."}]
        )
    assert answer.choices[0].message.content != "Planted by a page."
    assert answer.system_fingerprint != "fp_planted"


def test_what_a_browser_sends_from_another_origin_is_refused(own_sim: Sim) -> None:
    """Each header a browser adds, alone, as older browsers send only some of them."""
    foreign = (
        {"Origin": "http://127.0.0.1:9"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Host": f"{REBOUND}:{own_sim.port}"},
    )
    for headers in foreign:
        refused = httpx.post(own_sim.url + "/_sim/fingerprint", json={"fingerprint": "x"},
                             headers=headers, timeout=5)  # fmt: skip
        assert refused.status_code == 403, headers
        assert refused.json()["error"]["code"] in ("browser_request", "host_not_allowed")
    own = {"Origin": own_sim.url, "Sec-Fetch-Site": "same-origin"}
    assert httpx.get(own_sim.url + "/_sim/fingerprint", headers=own, timeout=5).status_code == 200
    assert httpx.get(own_sim.url + "/_sim/fingerprint", timeout=5).json()["fingerprint"] != "x"
