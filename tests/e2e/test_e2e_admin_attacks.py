"""The operators' surfaces attacked as another site, a guesser or a TLS terminator would: a
real proxy process, raw aiohttp requests carrying exactly the headers a browser would send."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.server import guesses, session
from tests.fixtures_procs import Proxy, ProxyFactory

ADMIN = "an-admin-token-no-one-guesses-4f1c"
MODEL = "gpt-4o-mini"
EVIL = "https://evil.example"


async def log_in(
    http: aiohttp.ClientSession, proxy: Proxy, **headers: str
) -> aiohttp.ClientResponse:
    return await http.post(
        proxy.url + "/admin/ui/login",
        data={"token": ADMIN},
        headers={"Origin": proxy.url, **headers},
    )


async def session_value(proxy: Proxy) -> str:
    async with aiohttp.ClientSession() as http:
        response = await log_in(http, proxy)
        assert response.status == 200
        return str((await response.json())["session"])


async def entries(http: aiohttp.ClientSession, proxy: Proxy) -> int:
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    async with http.get(proxy.url + "/admin/stats", headers=bearer) as response:
        assert response.status == 200
        stats: dict[str, Any] = await response.json()
        return int(stats["entries"])


FORGED = [
    ("application/x-www-form-urlencoded", b"all=true"),
    ("text/plain", b'{"all": true, "pad": "="}'),  # a form's text/plain body, shaped as JSON
    (
        "multipart/form-data; boundary=x",
        b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--x--\r\n',
    ),
]


@pytest.mark.parametrize(("kind", "body"), FORGED)
async def test_a_cross_site_form_cannot_purge_or_import_with_the_session(
    start_proxy: ProxyFactory, kind: str, body: bytes
) -> None:
    """No other site's page can make a browser send the session's header; were it sent all
    the same, beside a cookie a browser would add, writes still need the bearer."""
    proxy = start_proxy("--admin-token", ADMIN)
    value = await session_value(proxy)
    async with aiohttp.ClientSession() as http:
        ask = {"model": MODEL, "messages": [{"role": "user", "content": "kept"}], "seed": 1}
        headers = {"Authorization": "Bearer sk-a"}
        async with http.post(proxy.v1 + "/chat/completions", json=ask, headers=headers) as made:
            assert made.status == 200
        assert await entries(http, proxy) == 1
        forged = {
            session.HEADER: value,
            "Cookie": f"repro_admin={value}",
            "Origin": EVIL,
            "Content-Type": kind,
            "Sec-Fetch-Site": "same-site",
        }
        for path in ("/admin/purge", "/admin/import"):
            async with http.post(proxy.url + path, data=body, headers=forged) as response:
                assert response.status == 401, path
        assert await entries(http, proxy) == 1


async def test_guessing_the_admin_token_is_stopped(start_proxy: ProxyFactory) -> None:
    """Wrong tokens at the login form and as bearers count together per address; past the
    allowance even the right token is refused, so guessing cannot go on at any rate."""
    proxy = start_proxy("--admin-token", ADMIN)
    value = await session_value(proxy)
    half = guesses.ALLOWED // 2
    async with aiohttp.ClientSession() as http:
        for attempt in range(half):
            wrong = {"token": f"guess-{attempt}"}
            async with http.post(
                proxy.url + "/admin/ui/login", data=wrong, headers={"Origin": proxy.url}
            ) as response:
                assert response.status == 401
        for attempt in range(guesses.ALLOWED - half):
            guess = {"Authorization": f"Bearer guess-{attempt}"}
            async with http.get(proxy.url + "/admin/stats", headers=guess) as response:
                assert response.status == 401
        right = {"Authorization": f"Bearer {ADMIN}"}
        async with http.post(proxy.url + "/admin/purge", json={"all": True}, headers=right) as r:
            assert r.status == 429
            assert 1 <= int(r.headers["Retry-After"]) <= guesses.WINDOW
            assert r.headers["x-should-retry"] == "false"
            assert (await r.json())["error"]["code"] == "too_many_guesses"
        response = await log_in(http, proxy)
        assert response.status == 429 and b"session" not in await response.read()
        # A session opened before the guessing still reads: the guesser locks out guesses.
        page = {session.HEADER: value}
        async with http.get(proxy.url + "/admin/stats", headers=page) as response:
            assert response.status == 200


async def test_admin_answers_holding_stored_text_are_inert_and_not_kept(
    start_proxy: ProxyFactory,
) -> None:
    """The export and the rotations report carry stored prompts and answers, hostile text, on
    the origin of the operators' page: like every answer with the upstream's bytes they must
    never be taken for a page that runs with the session, nor be kept by a cache."""
    proxy = start_proxy("--admin-token", ADMIN)
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as http:
        for path in ("/admin/export", "/admin/rotations", "/admin/stats", "/admin/fingerprints"):
            async with http.get(proxy.url + path, headers=bearer) as response:
                assert response.status == 200, path
                assert response.headers["Cache-Control"] == "no-store", path
                assert response.headers["X-Content-Type-Options"] == "nosniff", path
                assert "sandbox" in response.headers["Content-Security-Policy"], path


async def test_the_login_body_is_bounded_in_size_kind_and_silence(
    start_proxy: ProxyFactory,
) -> None:
    """The login form is open to anyone who reaches the port: its body is read as every other
    body, never by a reader that takes a chunked body up to --max-body, waits on a silent one
    for ever, or spools multipart files to disk."""
    proxy = start_proxy("--admin-token", ADMIN, "--body-timeout", "1")
    form = {"Origin": proxy.url, "Content-Type": "application/x-www-form-urlencoded"}

    async def chunked() -> Any:
        for _ in range(100):
            yield b"token=" + b"x" * 1000 + b"&"

    async with aiohttp.ClientSession() as http:
        url = proxy.url + "/admin/ui/login"
        async with http.post(url, data=chunked(), headers=form) as response:
            assert response.status == 413
        files = aiohttp.FormData()
        files.add_field("token", b"x" * 100_000, filename="spooled.bin")
        async with http.post(url, data=files, headers={"Origin": proxy.url}) as response:
            assert response.status == 415
        many = "&".join(f"f{n}=1" for n in range(50)) + f"&token={ADMIN}"
        async with http.post(url, data=many, headers=form, allow_redirects=False) as response:
            assert response.status == 401

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(
            b"POST /admin/ui/login HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
            b"token=slo"
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 20)  # then it goes silent
    finally:
        writer.close()
    assert status.startswith(b"HTTP/1.1 408"), status


def test_a_secret_flag_is_warned_about_without_its_value(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """`--admin-token` on the command line is in every local user's `ps`."""
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = start_proxy("--admin-token", ADMIN, stderr=sink)
        proxy.proc.terminate()
        proxy.proc.wait(timeout=15)
    text = log.read_text()
    assert '"flag":"--admin-token","variable":"REPRO_ADMIN_TOKEN"' in text
    assert ADMIN not in text


async def _store(http: aiohttp.ClientSession, proxy: Proxy, content: str, namespace: str) -> None:
    ask = {"model": MODEL, "messages": [{"role": "user", "content": content}], "seed": 1}
    headers = {"Authorization": "Bearer sk-a", "X-Repro-Namespace": namespace}
    async with http.post(proxy.v1 + "/chat/completions", json=ask, headers=headers) as made:
        assert made.status == 200


@pytest.mark.parametrize(
    ("selector", "param"),
    [
        ({"namespace": "kept", "fingreprint": "fp_none"}, "fingreprint"),  # a typo'd filter
        ({"namespace": "kept", "dry_run": "true"}, "dry_run"),  # a dry run by another spelling
        ({"namespace": "kept", "dry_run": 1}, "dry_run"),
        ({"all": "yes"}, "all"),
    ],
)
async def test_a_purge_selector_that_says_something_unread_is_refused(
    start_proxy: ProxyFactory, selector: dict[str, Any], param: str
) -> None:
    """A filter the route does not know, or a flag of the wrong type, read as absent would
    purge more than was asked (a whole namespace for a misspelt fingerprint, a real purge for
    a dry run spelt `"true"`): it is refused before anything is deleted."""
    proxy = start_proxy("--admin-token", ADMIN)
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as http:
        await _store(http, proxy, "one", "kept")
        await _store(http, proxy, "two", "kept")
        async with http.post(proxy.url + "/admin/purge", json=selector, headers=bearer) as r:
            assert r.status == 400
            assert (await r.json())["error"]["param"] == param
        assert await entries(http, proxy) == 2


async def test_an_export_selector_that_says_something_unread_is_refused(
    start_proxy: ProxyFactory,
) -> None:
    """An export filtered by a parameter it does not read would hand out every answer; one it
    reads (fingerprint, as purge does) selects."""
    proxy = start_proxy("--admin-token", ADMIN)
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as http:
        await _store(http, proxy, "one", "a")
        await _store(http, proxy, "two", "b")
        url = proxy.url + "/admin/export"
        async with http.get(url, params={"namepsace": "a"}, headers=bearer) as r:
            assert r.status == 400
            assert (await r.json())["error"]["param"] == "namepsace"
        async with http.get(url, params={"fingerprint": "fp_other"}, headers=bearer) as r:
            assert r.status == 200
            assert await r.read() == b""
        async with http.get(url, params={"namespace": "a"}, headers=bearer) as r:
            assert r.status == 200
            assert (await r.read()).count(b"\n") == 1


@pytest.mark.parametrize("digits", ["\u00b2", "\u00b9" * 12])
async def test_a_session_or_count_of_other_digits_is_refused_not_a_crash(
    start_proxy: ProxyFactory, digits: str
) -> None:
    """Superscript digits are digits to `str.isdigit` and not to `int`: a session or a query
    count made of them was an internal error, for anyone, before any token was asked for."""
    proxy = start_proxy("--admin-token", ADMIN)
    forged = {session.HEADER: f"{digits}.{'a' * 32}.00"}
    async with aiohttp.ClientSession() as http:
        async with http.get(proxy.url + "/admin/stats", headers=forged) as response:
            assert response.status == 401
        bearer = {"Authorization": f"Bearer {ADMIN}"}
        url = proxy.url + "/admin/rotations"
        async with http.get(url, params={"examples": digits}, headers=bearer) as response:
            assert response.status == 400
            assert (await response.json())["error"]["param"] == "examples"
