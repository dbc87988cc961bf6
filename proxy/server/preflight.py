"""One look at the upstream and the store before serving. A base URL without its `/v1` is the
commonest first-hour mistake, and otherwise shows only as bare 404s to every client.

The look resolves the upstream's host and, when the base URL does not end in `/v1`, asks
`GET <upstream>/models` without any credential (a 401 then means the path exists); after a 404,
`GET <upstream>/openai/models` too, since a root with Azure OpenAI's paths (a gateway or an
emulator on a host that is not Azure's) is rightly given without `/v1`; unless that root also
answers `GET <upstream>/v1/models` (the sim's does), where OpenAI-shaped requests, mapped onto
`<upstream>/chat/completions`, would all be 404s: the newcomer who left out `/v1` is warned
there too. It is bounded by a few
seconds and only warns in the log whatever it finds: the proxy serves anyway, since the upstream
may simply be down for now.
"""

from __future__ import annotations

import asyncio
import logging

from yarl import URL

from proxy.config import mask_password, store_failure
from proxy.errors import UpstreamError
from proxy.store.base import Store, StoreError, StoreTimeout
from proxy.upstream.client import ANSWER_LIMIT, Upstream
from proxy.upstream.headers import USER_AGENT

TIMEOUT = 3.0
CHECK_AGENT = f"{USER_AGENT} (start-up check)"

log = logging.getLogger("proxy.preflight")


async def check_upstream(
    upstream: Upstream, base_url: str, *, proxied: bool, timeout: float = TIMEOUT
) -> None:
    """Resolve the upstream's host (unless a forward proxy does); ask for its models list only
    when the base URL does not end in `/v1`, the one case where a 404 tells something."""
    url = URL(base_url)
    shown = str(url.with_user(None))
    try:
        async with asyncio.timeout(timeout):
            if not proxied:
                await asyncio.get_running_loop().getaddrinfo(url.host, url.port)
            if not asks_models(url):
                return
            lacks_v1 = await _status(upstream, "/v1/models") == 404 and (
                await _status(upstream, AZURE_MODELS) == 404
                or await _status(upstream, V1_MODELS) != 404
            )
    except TimeoutError:
        log.warning(
            "the upstream did not answer at start", extra={"upstream": shown, "seconds": timeout}
        )
        return
    except OSError:
        log.warning("cannot resolve the upstream host", extra={"upstream": shown, "host": url.host})
        return
    except UpstreamError as exc:
        log.warning("the upstream is unreachable", extra={"upstream": shown, "error": exc.message})
        return
    if lacks_v1:
        log.warning(
            "the upstream answers 404 for its models list: does --upstream lack its /v1?",
            extra={
                "upstream": shown,
                "path": url.path.rstrip("/") + "/models",
                "suggestion": suggestion(shown),
            },
        )


async def _status(upstream: Upstream, path: str) -> int:
    """The status of a credential-free GET of `path`, under the base URL."""
    status, _ = await upstream.fetch("GET", path, {"User-Agent": CHECK_AGENT}, None, ANSWER_LIMIT)
    return status


AZURE_MODELS = "/openai/models"
"""Azure OpenAI's models list, under its resource root: a path outside `/v1`, so the upstream
client maps it onto the base URL as it is."""

V1_MODELS = "/v1/v1/models"
"""`<base>/v1/models`: the client's `/v1` is mapped onto the base URL's, which here has none."""

AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
"""Azure OpenAI is given without `/v1` (its paths start with `/openai/`): no models list there."""


def asks_models(url: URL) -> bool:
    """Whether a 404 for `<base>/models` would mean a missing `/v1`: not when the base ends in
    it already, nor for an Azure OpenAI resource, which is rightly given without it."""
    if url.path.rstrip("/").endswith("/v1"):
        return False
    return not (url.host or "").lower().rstrip(".").endswith(AZURE_HOSTS)


def suggestion(base_url: str) -> str:
    """The base URL with `/v1`, or the advice to check it when it already ends so."""
    trimmed = base_url.rstrip("/")
    if trimmed.endswith("/v1"):
        return "check the path of --upstream"
    return f"--upstream {trimmed}/v1"


async def check_store(store: Store, url: str) -> None:
    """A store down at start is named (without its password) with the cause: the proxy serves
    without it, failing open, until it answers (`/readyz` says so meanwhile)."""
    try:
        await store.ping()
    except StoreError as exc:
        extra = {"store": mask_password(url), "error": store_failure(exc, url)}
        if isinstance(exc, StoreTimeout) and url.lower().startswith("rediss://"):
            extra["hint"] = TLS_HINT
        log.warning(
            "the store is unavailable at start: serving without it until it answers", extra=extra
        )


TLS_HINT = "rediss:// speaks TLS first, which a Redis without TLS never answers: redis:// then?"
"""A Redis without TLS reads a TLS handshake as the start of a command and waits for its end:
the ping merely times out, which says nothing of the scheme."""
