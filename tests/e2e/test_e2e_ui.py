"""`/admin/ui` in a real browser (Debian's headless chromium through chromedriver): the models,
their fingerprints and a side-by-side diff after a rotation in the sim; a hostile answer renders
as text; the session stays on the page's origin. Then the session's rules over plain HTTP:
login, what it reads, logout, cross-site posts, no token."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from proxy.config import Settings
from proxy.core.fingerprints import MAX_MODEL_NAME
from proxy.server import session
from proxy.server.app import create_app
from tests.fixtures_procs import Proxy, ProxyFactory, Sim
from tests.hostile import Received, Scripted, fixed, http_answer

ADMIN = "ui-admin-token-for-tests"
MODEL = "gpt-4o-mini"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
browser_only = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def driver() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    made = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    made.set_page_load_timeout(30)
    try:
        yield made
    finally:
        made.quit()


def sign_in(driver: Any, proxy: Proxy) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(proxy.url + "/admin/ui")
    driver.find_element(By.ID, "token").send_keys(ADMIN)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.body.dataset.loaded === 'true'")
    )


def ask(http: httpx.Client, prompt: str) -> tuple[str, str]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "seed": 5}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    return response.headers["X-Repro-Key"], response.json()["choices"][0]["message"]["content"]


def client(proxy: Proxy) -> httpx.Client:
    return httpx.Client(base_url=proxy.url, headers={"Authorization": "Bearer sk-a"}, timeout=10)


@browser_only
def test_the_page_shows_models_fingerprints_and_a_side_by_side_diff(
    start_proxy: ProxyFactory, sim: Sim, driver: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy("--admin-token", ADMIN, stderr=sink)
    sim.settings(drift=1.0)
    with client(proxy) as http:
        before = dict(ask(http, f"q{i}") for i in range(5))
        sim.set_fingerprint("fp_sim_0002")
        ask(http, "teach the rotation")
        after = dict(ask(http, f"q{i}") for i in range(5))

    sign_in(driver, proxy)
    assert "token" not in driver.current_url and ADMIN not in driver.current_url
    assert driver.get_cookies() == []
    kept = driver.execute_script("return Object.entries(sessionStorage)")
    assert [name for name, _ in kept] == ["repro-session"] and ADMIN not in kept[0][1]
    assert driver.execute_script("return localStorage.length") == 0
    rows = driver.find_elements(By.CSS_SELECTOR, "#models tbody tr")
    assert [row.find_element(By.CLASS_NAME, "model").text for row in rows] == [MODEL]
    assert rows[0].find_element(By.CLASS_NAME, "current").text == "fp_sim_0002"
    timeline = rows[0].find_element(By.CLASS_NAME, "timeline").text
    assert "rotated fp_sim_0001 → fp_sim_0002" in timeline
    assert driver.find_element(By.ID, "tokens-saved").text.isdigit()
    assert "answers" in driver.find_element(By.ID, "store-size").text

    heads = driver.find_element(By.CSS_SELECTOR, "#examples .heads").text
    assert heads.split() == ["before:", "fp_sim_0001", "after:", "fp_sim_0002"]
    pairs = driver.find_elements(By.CSS_SELECTOR, "#examples .example")
    assert len(pairs) == 5
    shown = {
        (p.find_element(By.CLASS_NAME, "old").text, p.find_element(By.CLASS_NAME, "new").text)
        for p in pairs
    }
    assert shown == {(before[key], after[key]) for key in before}
    assert pairs[0].find_elements(By.TAG_NAME, "del") and pairs[0].find_elements(By.TAG_NAME, "ins")
    assert ADMIN.encode() not in log.read_bytes()


@browser_only
def test_another_server_on_the_same_host_receives_nothing_of_the_session(
    start_proxy: ProxyFactory, driver: Any
) -> None:
    """A browser sends a host's cookies to every port of it, and SameSite counts every port one
    site: a session in a cookie would reach any other server on the operator's machine that the
    browser visits (a dev server, another tool's admin page) and read stored answers. The page's
    session is in the origin's own `sessionStorage`, and sent only by its script."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    proxy = start_proxy("--admin-token", ADMIN)
    driver.get(proxy.url + "/admin/ui")
    driver.find_element(By.ID, "token").send_keys("not-the-token")
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert driver.execute_script("return sessionStorage.length") == 0
    assert driver.find_element(By.ID, "token").get_attribute("value") == ""
    with Scripted(fixed(http_answer(b"<p>another app</p>", "Content-Type: text/html"))) as other:
        sign_in(driver, proxy)
        host = proxy.url.split("//")[1].rsplit(":", 1)[0]
        for path in ("/admin/ui", "/admin/stats", "/"):
            driver.get(f"http://{host}:{other.port}{path}")
        heads = b"".join(received.head for received in other.received).lower()
        assert other.received and b"get /admin/stats" in heads
        assert b"cookie" not in heads and b"repro" not in heads
        leaked = driver.execute_script("return sessionStorage.length + localStorage.length")
        assert leaked == 0, "another origin's page can see the session"
    sign_out_after_coming_back(driver, proxy)


def sign_out_after_coming_back(driver: Any, proxy: Proxy) -> None:
    """The tab keeps its session across another site's pages; signing out revokes it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(proxy.url + "/admin/ui")
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.body.dataset.loaded === 'true'")
    )
    kept = driver.execute_script("return sessionStorage.getItem('repro-session')")
    driver.find_element(By.ID, "sign-out").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "token").is_displayed())
    assert driver.execute_script("return sessionStorage.length") == 0
    assert not driver.find_element(By.ID, "board").is_displayed()
    shown = httpx.get(proxy.url + "/admin/stats", headers={session.HEADER: kept}, timeout=10)
    assert shown.status_code == 401  # a copy taken before reads nothing after


@browser_only
def test_a_hostile_answer_renders_as_text(
    start_proxy: ProxyFactory, driver: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    texts = {
        "fp_1": '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">',
        "fp_2": "<b>bold</b><script>window.__xss=3</script>",
    }
    current = ["fp_1"]

    async def answer(writer: asyncio.StreamWriter, _: Received) -> None:
        body = orjson.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "model": MODEL,
                "system_fingerprint": current[0],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": texts[current[0]]},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )
        writer.write(http_answer(body, "Content-Type: application/json"))
        await writer.drain()

    with Scripted(answer) as upstream:
        proxy = start_proxy("--admin-token", ADMIN, upstream=upstream.v1)
        with client(proxy) as http:
            ask(http, "same question")
            current[0] = "fp_2"
            ask(http, "teach the rotation")
            ask(http, "same question")
        sign_in(driver, proxy)
        (pair,) = driver.find_elements(By.CSS_SELECTOR, "#examples .example")
        assert pair.find_element(By.CLASS_NAME, "old").text == texts["fp_1"]
        assert pair.find_element(By.CLASS_NAME, "new").text == texts["fp_2"]
        assert driver.execute_script("return window.__xss") is None
        examples = driver.find_element(By.ID, "examples")
        for tag in ("script", "img", "b"):
            assert examples.find_elements(By.TAG_NAME, tag) == []


# --- the session over plain HTTP, in process --------------------------------------------------


@pytest.fixture
async def page() -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(Settings(upstream="http://127.0.0.1:9", admin_token=ADMIN))
    async with TestClient(TestServer(app)) as made:
        yield made


async def test_the_page_is_one_shell_that_holds_nothing(page: TestClient[Any, Any]) -> None:
    response = await page.get("/admin/ui")
    assert response.status == 200
    text = await response.text()
    assert 'action="/admin/ui/login"' in text and 'type="password"' in text
    assert 'src="/admin/ui/static/ui.js"' in text
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"


async def login(page: TestClient[Any, Any]) -> str:
    response = await page.post("/admin/ui/login", data={"token": ADMIN})
    assert response.status == 200 and "Set-Cookie" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"
    made = await response.json()
    assert made["expires_in"] == session.LIFETIME and ADMIN not in made["session"]
    return str(made["session"])


async def test_a_wrong_token_is_refused_and_gives_no_session(page: TestClient[Any, Any]) -> None:
    response = await page.post("/admin/ui/login", data={"token": "nope"})
    assert response.status == 401
    assert "Set-Cookie" not in response.headers
    error = (await response.json())["error"]
    assert error["message"] == "That is not the admin token." and "session" not in error


async def test_the_session_reads_what_the_page_shows_and_nothing_else(
    page: TestClient[Any, Any],
) -> None:
    """The page reads stats, fingerprints and rotations. The export of every stored prompt
    and every write need the bearer: a stolen session shows no more than the page."""
    shown = {session.HEADER: await login(page)}
    for path in ("/admin/stats", "/admin/fingerprints", "/admin/rotations?examples=10"):
        assert (await page.get(path, headers=shown)).status == 200, path
    assert (await page.get("/admin/export", headers=shown)).status == 401
    purge = await page.post("/admin/purge", json={"all": True}, headers=shown)
    assert purge.status == 401
    assert (await page.get("/admin/stats")).status == 401


async def test_a_session_sent_as_a_cookie_reads_nothing(page: TestClient[Any, Any]) -> None:
    """A cookie reaches every port of the host: another server on localhost would have it."""
    value = await login(page)
    for name in ("repro_admin", session.HEADER):
        cookie = {"Cookie": f"{name}={value}"}
        assert (await page.get("/admin/stats", headers=cookie)).status == 401


async def test_a_copy_of_the_session_reads_nothing_after_the_logout(
    page: TestClient[Any, Any],
) -> None:
    copied = {session.HEADER: await login(page)}
    assert (await page.post("/admin/ui/logout", headers=copied)).status == 204
    assert (await page.get("/admin/stats", headers=copied)).status == 401
    again = await login(page)
    assert again != copied[session.HEADER]  # each login a session of its own
    assert (await page.get("/admin/stats", headers={session.HEADER: again})).status == 200


async def test_a_session_reads_under_its_own_spelling_alone(page: TestClient[Any, Any]) -> None:
    """A logout revokes the session's value: a second spelling of it accepted (a `0` before its
    expiry, upper-case hex) would read on after the logout, as the copy taken before."""
    value = await login(page)
    expires, nonce, mac = value.split(".")
    others = [f"0{value}", f"00{value}", f"{expires}.{nonce.upper()}.{mac}", f"+{value}"]
    others += [f"{expires}.{nonce}.{mac.upper()}", f"{value}.", f"{value}.{nonce}"]
    for other in others:
        assert (await page.get("/admin/stats", headers={session.HEADER: other})).status == 401
    assert (await page.post("/admin/ui/logout", headers={session.HEADER: value})).status == 204
    for other in (value, *others):
        assert (await page.get("/admin/stats", headers={session.HEADER: other})).status == 401


async def test_a_forged_or_expired_session_is_refused(page: TestClient[Any, Any]) -> None:
    expired = session.signed(ADMIN, 0)
    forged = session.signed("another-token", 4_000_000_000)
    for value in (expired, forged, "9999999999.00", "x", ""):
        assert (await page.get("/admin/stats", headers={session.HEADER: value})).status == 401


async def test_a_cross_site_login_or_logout_is_refused(page: TestClient[Any, Any]) -> None:
    here = str(page.make_url("")).rstrip("/")
    others = ("https://evil.example", "null", here.replace("http://", "https://"))
    for path in ("/admin/ui/login", "/admin/ui/logout"):
        for origin in others:
            response = await page.post(path, data={"token": ADMIN}, headers={"Origin": origin})
            assert response.status == 403, origin
            assert "session" not in await response.text()
    own = await page.post("/admin/ui/login", data={"token": ADMIN}, headers={"Origin": here})
    assert own.status == 200


async def test_behind_a_tls_terminator_the_pages_origin_is_https(
    page: TestClient[Any, Any],
) -> None:
    """The terminator says the request came over TLS; the page it served posts from https."""
    https = str(page.make_url("")).rstrip("/").replace("http://", "https://")
    told = {"Origin": https, "X-Forwarded-Proto": "https"}
    assert (await page.post("/admin/ui/login", data={"token": ADMIN}, headers=told)).status == 200
    plain = {"Origin": https.replace("https://", "http://"), "X-Forwarded-Proto": "https"}
    assert (await page.post("/admin/ui/login", data={"token": ADMIN}, headers=plain)).status == 403


async def test_a_huge_login_body_is_refused(page: TestClient[Any, Any]) -> None:
    response = await page.post("/admin/ui/login", data={"token": "x" * 100_000})
    assert response.status == 413


async def test_only_the_page_files_are_served(page: TestClient[Any, Any]) -> None:
    assert (await page.get("/admin/ui/static/ui.js")).status == 200
    for name in ("login.html", "..%2Fui.py", "ui.py"):
        assert (await page.get(f"/admin/ui/static/{name}")).status == 404


async def test_no_admin_token_no_page() -> None:
    app = create_app(Settings(upstream="http://127.0.0.1:9"))
    async with TestClient(TestServer(app)) as made:
        assert (await made.get("/admin/ui")).status == 404
        assert (await made.post("/admin/ui/login", data={"token": ""})).status == 404


STEALS_THE_SESSION = b"""<!doctype html><title>inert</title><script>
document.title = "ran";
const kept = { "X-Repro-Session": sessionStorage.getItem("repro-session") || "" };
fetch("/admin/rotations?examples=10", { headers: kept })
  .then(r => r.text().then(t => { document.title = r.status + ":" + t; }));
</script>"""


@browser_only
@pytest.mark.parametrize("path", ["/v1/files/file-1/content", "/v1/chat/completions"])
def test_an_upstreams_html_never_runs_on_the_proxys_origin(
    start_proxy: ProxyFactory, driver: Any, path: str
) -> None:
    """The proxy's origin also serves the operators' page, whose session (in the tab's
    `sessionStorage`) reads stored answers (/admin/rotations). A page the upstream (or a network
    path to an http:// upstream) answers with, relayed as it came, would run there and read that
    session: every answer relayed from the upstream is sandboxed (an opaque origin, no storage)
    and never sniffed into HTML."""
    from selenium.webdriver.support.ui import WebDriverWait

    with Scripted(fixed(http_answer(STEALS_THE_SESSION, "Content-Type: text/html"))) as upstream:
        proxy = start_proxy("--admin-token", ADMIN, upstream=upstream.v1)
        with client(proxy) as http:
            relayed = http.request("POST" if "chat" in path else "GET", path, json={})
        sign_in(driver, proxy)  # the operator's browser holds the session
        driver.get("about:blank")  # then follows another site's link, or its form
        if "chat" in path:  # text/plain, so that the form's body is JSON
            driver.execute_script(
                "const f = document.createElement('form'); f.method = 'POST';"
                "f.enctype = 'text/plain'; f.action = arguments[0];"
                "const i = document.createElement('input');"
                'i.name = \'{"model": "m", "messages": [], "pad": "\'; i.value = \'"}\';'
                "f.append(i); document.body.append(f); f.submit();",
                proxy.url + path,
            )
        else:
            driver.get(proxy.url + path)
        WebDriverWait(driver, 20).until(
            lambda d: (
                d.current_url.startswith(proxy.url)
                and d.execute_script("return document.readyState") == "complete"
            )
        )
        title = driver.title  # an inline script runs before the page completes loading
        shown = driver.page_source
    if "chat" in path:  # another site's form never reaches the upstream at all
        assert "cross_site_request" in shown and title != "ran", title[:200]
    else:
        assert title == "inert", title[:200]  # unsandboxed: "ran", then "200:" and the answers
    assert "sandbox" in relayed.headers["content-security-policy"]
    assert relayed.headers["x-content-type-options"] == "nosniff"


def test_a_stored_answer_labelled_html_is_served_inert_on_a_hit(start_proxy: ProxyFactory) -> None:
    """A model's text is the prompt writer's to steer: under an upstream's `text/html` it would
    be a page on the proxy's origin, for every later caller whose browser is led to it."""
    answer = orjson.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "model": MODEL,
            "system_fingerprint": "fp_1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "<script>"}}],
        }
    )
    with Scripted(fixed(http_answer(answer, "Content-Type: text/html"))) as upstream:
        proxy = start_proxy(upstream=upstream.v1)
        with client(proxy) as http:
            body = {"model": MODEL, "messages": []}
            miss, hit = (http.post("/v1/chat/completions", json=body) for _ in range(2))
    assert [miss.headers["x-repro-cache"], hit.headers["x-repro-cache"]] == ["MISS", "HIT"]
    for served in (miss, hit):
        assert served.headers["content-security-policy"] == "sandbox; default-src 'none'"
        assert served.headers["x-content-type-options"] == "nosniff"


HOSTILE_MODELS = (
    '<img src=x onerror="window.__xss=1">',
    "</script><script>window.__xss=2</script>",
    "javascript:window.__xss=3",
    "\u202eevil",  # a right-to-left override never closed
    "__proto__",
    "constructor",
    "toString",
    "hasOwnProperty",
    "x" * MAX_MODEL_NAME,  # the longest name the proxy keeps, with no place to break
)


@browser_only
def test_hostile_model_names_render_as_text_and_the_page_stays_usable(
    start_proxy: ProxyFactory, sim: Sim, driver: Any
) -> None:
    """A client names its model freely, and the page lists every model: markup runs nowhere,
    a name that is also a property every object has (`constructor`) is a model like the others,
    and a name with no place to break does not push the page past the window."""
    from selenium.webdriver.common.by import By

    proxy = start_proxy("--admin-token", ADMIN)

    def ask_all(http: httpx.Client, prompt: str) -> None:
        for model in HOSTILE_MODELS:
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "seed": 5}
            assert http.post("/v1/chat/completions", json=body).status_code == 200

    with client(proxy) as http:
        ask_all(http, "before")
        sim.set_fingerprint("fp_sim_0002")
        ask_all(http, "after")
    sign_in(driver, proxy)
    assert driver.execute_script("return window.__xss") is None
    shown = [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#models td.model")]
    assert sorted(shown) == sorted(HOSTILE_MODELS)
    assert driver.find_element(By.ID, "status").get_attribute("hidden") is not None
    for tag in ("img", "script"):
        assert driver.find_elements(By.CSS_SELECTOR, f"#models {tag}, #examples {tag}") == []
    options = driver.find_elements(By.CSS_SELECTOR, "#rotation option")
    assert len(options) == len(HOSTILE_MODELS)
    labels = [option.get_attribute("textContent") for option in options]
    assert sorted(label.split("\u2069: ")[0] for label in labels) == sorted(
        "\u2068" + model for model in HOSTILE_MODELS
    ), "a model name in the rotation list is not isolated from the fingerprints after it"
    assert driver.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth"
    ), "a long model name widened the page past the window"
