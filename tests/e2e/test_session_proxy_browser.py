"""A page in the developer's browser (Debian's headless chromium) against the pytest plugin's
session proxy on 127.0.0.1: what a page can send without CORS (a no-cors POST, JSON in a
text/plain body) never reaches the cache or the miss report; the same request admitted by a
proxy without the session's check does, so the browser did send it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.server import hostcheck
from proxy.testing import peers
from proxy.testing.session import LLMSession, RecordMode
from tests.e2e.test_e2e_ui import browser_only, driver  # noqa: F401  (the browser fixture)
from tests.fixtures_procs import Sim

PAGE_POSTS = """
const [url, done] = arguments;
const asked = {role: "user", content: "From a page."};
const body = JSON.stringify({model: "gpt-4o-mini", messages: [asked]});
fetch(url + "/chat/completions", {method: "POST", mode: "no-cors", body})
  .then(() => done("answered"), (error) => done(String(error)));
"""


def page_attack(browser: Any, sim: Sim, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The models the session reported as misses after a page's post, and the environment."""
    session = LLMSession(RecordMode.NONE, str(tmp_path / "llm.jsonl"), sim.v1)
    environ: dict[str, str] = {}
    url = session.start(environ)
    try:
        browser.get(sim.url + "/_sim/stats")  # any page of another origin
        assert browser.execute_async_script(PAGE_POSTS, url) == "answered"
        assert session.proxy is not None
        missed = [call.model for call in session.proxy.misses.take()]
    finally:
        session.stop(environ)
    return missed, environ


@browser_only
def test_a_page_in_the_developers_browser_cannot_use_the_session_proxy(
    sim: Sim,
    driver: Any,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missed, environ = page_attack(driver, sim, tmp_path)
    assert missed == []
    assert environ == {}  # every variable the session set is gone again
    monkeypatch.setattr(peers, "refusal", lambda *args, **kwargs: None)
    monkeypatch.setattr(hostcheck, "FOREIGN_SITES", frozenset())  # nor the proxy's own
    unchecked, _ = page_attack(driver, sim, tmp_path)
    assert unchecked == ["gpt-4o-mini"]  # the control: without the check, the page gets in
