"""Only credentials the upstream accepts, recently, may receive a cached answer.

Without this, a revoked key would keep reading its own entries (scope `key`), and with scope
`shared` any string in a credential header would read everyone's. A tenant counts as accepted
when the upstream answered its credentials with a 2xx within `interval` seconds, on a real
request (`remember`) or on a `GET /v1/models` the proxy sends when it needs to know (for an
Azure route, Azure's own list: `/openai/models?api-version=`, or `/openai/v1/models`). A 2xx
counts only as an answer (a model list, a completion): gateways refuse a bad key with a 200
and an error body, which is a refusal.

In `shared` scope a `/v1/models` 2xx counts only where that endpoint refuses made-up credentials
of the same shape: some gateways list their models to anyone, and then the list proves nothing.
There, a tenant reads only once the upstream served one of its real requests, or once the
upstream served this very request to made-up credentials (an open upstream, with nothing to
protect). A keyless caller is never vouched for by `/v1/models`: it reads, in either scope, only
within `interval` of a keyless request the upstream served with a 2xx.

A served request vouches only for what it asked (`KeyChecker.asking`): gateways grant access
per model, per routing header or per query (a free local model beside a paid one), so the
upstream serving one request to made-up credentials, or to none, says nothing of the others.
Wherever a partition is shared (`shared` scope, and the `anonymous` tenant in either), such a
verdict is kept under the tenant with the route, keyed query, keyed headers and model it was
served for; only a model list that refuses made-up credentials vouches for a tenant as a whole.

Each check has its own deadline (`timeout`), and identical concurrent checks share one upstream
call; distinct ones make at most MAX_CHECKS calls at once, each read to ANSWER_LIMIT at most.
When the upstream cannot say (down, hung, no `/v1/models`), a refusal stands, an accepted
tenant keeps reading for at most one more interval, and then it is treated as never checked:
nothing in `shared` scope, its own partition in `key` scope (answers made for those very
credentials). Verdicts are kept by the tenant's HMAC, never by the credentials.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlencode

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.credentials import (
    STANDARD,
    Credentials,
    of_request,
    shape,
    stranger,
    upstream_headers,
    with_query,
)
from proxy.core.entry import (
    AUDIO,
    COUNTED,
    TRANSCRIPT,
    counted,
    is_answer,
    is_audio,
    is_sound_type,
    json_object,
    transcript_of,
)
from proxy.core.keyed import digest
from proxy.core.lru import LRU
from proxy.core.policy import ANONYMOUS
from proxy.core.responses import api_version
from proxy.core.routes import AZURE_V1, RESPONSES, is_azure
from proxy.core.sse import StreamRecorder
from proxy.errors import UpstreamError, UpstreamTooLarge
from proxy.upstream.client import ANSWER_LIMIT, Upstream

if TYPE_CHECKING:
    from proxy.core.call import Call

log = logging.getLogger("proxy.keys")

MAX_VERDICTS = 10_000
MAX_LEARNED = 1024
MAX_LEARNING = 256
"""Made-up-credential asks (`_learn`) per interval, whatever their shapes: a shape is the
credential header names a caller sends, which it may invent per request, and each new one cost
the upstream two more calls (four per request, one of them the caller's whole body). Past the
budget the upstream is taken as unable to say: the request reads nothing shared and is asked
upstream, as a miss is; shapes already learned keep their verdicts."""
MAX_CHECKS = 32
"""Upstream calls of key checks in flight at most, whatever the keys: identical checks share
one call, and made-up keys, each a distinct check, must not open calls without bound."""
Judge = Callable[[bytes | None, str], bool | None]
"""Whether a 2xx is what was asked for, from its body (None past ANSWER_LIMIT, never read
whole: made-up keys would each have the proxy buffer and parse what the upstream likes) and
its Content-Type; None when it does not say."""
REFUSED = frozenset({401, 403})

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Flights(Generic[K, V]):
    """At most one task per key at a time: callers asking the same thing share its result.
    A caller that gives up (cancelled) leaves the task running for the others."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    async def join(self, key: K, work: Callable[[], Coroutine[Any, Any, V]]) -> V:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.create_task(work())
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class KeyChecker:
    def __init__(
        self,
        upstream: Upstream,
        interval: float,
        clock: Callable[[], float],
        *,
        timeout: float = 5.0,
        carriers: tuple[str, ...] = STANDARD,
        shared: bool = False,
    ) -> None:
        """`shared`: the cache scope is `shared` (one cache for all keys)."""
        self._upstream = upstream
        self._interval = interval
        self._clock = clock
        self._timeout = timeout
        self._carriers = carriers
        self._shared = shared
        self._verdicts: LRU[str, tuple[bool, float]] = LRU(MAX_VERDICTS)
        self._learned: LRU[Hashable, tuple[bool, float]] = LRU(MAX_LEARNED)
        self._asked: deque[float] = deque(maxlen=MAX_LEARNING)  # when `_learn` last asked
        self._checks: Flights[str, bool | None] = Flights()
        self._probes: Flights[Hashable, bool | None] = Flights()
        self._slots = asyncio.Semaphore(MAX_CHECKS)

    @property
    def enabled(self) -> bool:
        return self._interval > 0

    def remember(self, call: Call) -> None:
        """The upstream just answered a real request of this caller with a 2xx: it vouches for
        what that request asked (`asking`)."""
        self._verdicts.put(self.asking(call), (True, self._clock()))

    def asking(self, call: Call) -> str:
        """The name a verdict from a served request is kept under: the tenant, in a partition
        of its own; where a partition is shared, the tenant and what it asked (route, keyed
        query, keyed headers, model), since an upstream may serve anyone some requests and
        only its keys others. Never a tenant's name (those are hex or `anonymous`)."""
        if not self._shared and call.tenant != ANONYMOUS:
            return call.tenant
        return call.tenant + " " + _asked(call)

    def known(self, call: Call) -> bool | None:
        """The verdict on the caller of `call` while it is fresh, else None: what nearly every
        HIT reads. One on what it asks comes first, then one on the tenant as a whole."""
        asking = self.asking(call)
        if asking != call.tenant:
            verdict = self._fresh(asking)
            if verdict is not None:
                return verdict
        return self._fresh(call.tenant)

    def _fresh(self, name: str) -> bool | None:
        verdict = self._verdicts.get(name)
        if verdict is not None and self._clock() - verdict[1] < self._interval:
            return verdict[0]
        return None

    async def accepted(self, call: Call, headers: CIMultiDictProxy[str]) -> bool:
        """Whether the caller of `call` (credentials in its request `headers`, read only when
        the upstream must be asked) may read the cache now."""
        known = self.known(call)
        if known is not None:
            return known
        credentials = of_request(headers, call.query, self._carriers)
        if not credentials:
            return False  # nothing to ask about: only a keyless request served 2xx vouches
        found = await self._checks.join(
            self.asking(call), lambda: self._deadline(self._check(call, credentials))
        )
        return self._fallback(call) if found is None else found

    async def close(self) -> None:
        await self._checks.close()
        await self._probes.close()

    async def _check(self, call: Call, credentials: Credentials) -> bool | None:
        listed, query = models_list(call)
        models = with_query(listed, query, credentials)
        headers = upstream_headers(credentials)
        served = await self._ask("GET", models, headers, None, lists_models)
        if served is False:
            log.info("credentials refused by the upstream: no cached answers for them")
            return self._record(call.tenant, False)
        if served is None:
            return None
        if not self._shared or await self._models_tell_apart(call, credentials):
            return self._record(call.tenant, True)
        served = await self._serves_strangers(call, credentials)
        return None if served is None else self._record(self.asking(call), served)

    async def _models_tell_apart(self, call: Call, credentials: Credentials) -> bool:
        """Whether the model list refuses made-up credentials of this shape (learned per
        interval and list); when the upstream cannot say, it does not."""
        listed, query = models_list(call)
        key = ("models", shape(credentials), listed, query)
        made_up = stranger(credentials)
        models = with_query(listed, query, made_up)
        headers = upstream_headers(made_up)
        served = await self._learn(key, "GET", models, headers, None, lists_models)
        return served is False

    async def _serves_strangers(self, call: Call, credentials: Credentials) -> bool | None:
        """Whether the upstream answers this request, sent with made-up credentials, with an
        answer (learned per shape and what it asks, once per interval). It goes with the
        request's keyed headers (a gateway's routing ones), as the caller's does: without, a
        gateway open for its default provider would vouch for a paid one a header names. It
        goes as a store keeps it, a tool's credentials sealed (`sealing.sealed`): an open
        gateway would otherwise run the caller's tools with the caller's token for a stranger.
        A form goes as sent (`Call.shareable`): a store keeps only its file's digest."""
        key = ("route", shape(credentials), _asked(call))
        made_up = stranger(credentials)
        replaced = {name for name, _ in credentials}
        headers = CIMultiDict((n, v) for n, v in call.headers if n not in replaced)
        headers.extend(upstream_headers(made_up))
        headers["Content-Type"] = call.content_type
        path = with_query(call.route, call.keyed_query, made_up)
        judge = partial(answers, stream=call.stream, kind=call.events, shape=call.shape)
        return await self._learn(key, "POST", path, headers, call.shareable, judge)

    async def _learn(
        self,
        key: Hashable,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None,
        judge: Judge,
    ) -> bool | None:
        """Whether the upstream serves these made-up credentials (None: it did not say)."""
        now = self._clock()
        known = self._learned.get(key)
        if known is not None and now - known[1] < self._interval:
            return known[0]
        if len(self._asked) == MAX_LEARNING and now - self._asked[0] < self._interval:
            return None  # the budget is spent (MAX_LEARNING)
        self._asked.append(now)
        served = await self._probes.join(
            key, lambda: self._deadline(self._ask(method, path, headers, body, judge))
        )
        if served is not None:
            self._learned.put(key, (served, self._clock()))
        return served

    async def _deadline(self, work: Awaitable[V]) -> V | None:
        try:
            async with asyncio.timeout(self._timeout):
                return await work
        except TimeoutError:
            log.info("key check timed out: no answer in time, or too many checks in flight")
            return None

    async def _ask(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None,
        judge: Judge,
    ) -> bool | None:
        """Whether the upstream served this request (None: it did not say). A 2xx that
        `judge` finds no answer is a refusal: gateways refuse a bad key with a 200 and an
        error body, and such an answer vouches for nothing. It is judged here, on the loop.
        At most MAX_CHECKS calls are in flight: past that, a check waits for one to end,
        within its deadline."""
        async with self._slots:
            try:
                status, answer, content_type = await self._fetch(method, path, headers, body)
            except UpstreamError:
                return None
        if status in REFUSED:
            return False
        if not _ok(status):
            return None
        return judge(answer, content_type)

    async def _fetch(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, bytes | None, str]:
        """The status, body and Content-Type of the upstream's answer, the body None past
        ANSWER_LIMIT: a check needs the status and, of a 2xx, enough to tell an answer from
        an error."""
        answer = await self._upstream.send(method, path, headers, body, whole=True)
        content_type = answer.headers.get("Content-Type", "")
        try:
            return answer.status, await answer.read(ANSWER_LIMIT), content_type
        except UpstreamTooLarge:
            return answer.status, None, content_type
        finally:
            answer.release()

    def _fallback(self, call: Call) -> bool:
        """The upstream cannot say: a refusal stands, an acceptance lasts one more interval."""
        verdict = self._verdicts.get(self.asking(call)) or self._verdicts.get(call.tenant)
        if verdict is not None and not verdict[0]:
            return False
        if verdict is not None and self._clock() - verdict[1] < 2 * self._interval:
            return True
        return not self._shared

    def _record(self, name: str, accepted: bool) -> bool:
        self._verdicts.put(name, (accepted, self._clock()))
        return accepted


def _asked(call: Call) -> str:
    """What a served request vouches for, as a digest (a model name may be huge): the route,
    the keyed query, the keyed headers and the model."""
    asked = (("route", call.route), ("query", call.keyed_query), ("vary", call.vary))
    return digest((*asked, ("model", call.model)))


def models_list(call: Call) -> tuple[str, str]:
    """The path and query of the model list that tells whether the upstream accepts the
    caller's credentials. An Azure upstream is its resource root, without `/v1`: `/v1/models`
    would reach `<root>/models`, a 404 that never tells, and a revoked `api-key` would keep
    reading its own entries; Azure lists models under its own paths, with the api-version
    the caller asked for on a versioned route."""
    if call.route.startswith(AZURE_V1):
        return "/openai/v1/models", ""
    if is_azure(call.route):
        version = api_version(call.keyed_query)
        return "/openai/models", urlencode({"api-version": version}) if version else ""
    return "/v1/models", ""


def _ok(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def lists_models(body: bytes | None, content_type: str) -> bool:
    """A model list (`{"object": "list", "data": [...]}`), not an error dressed as a 200. Past
    ANSWER_LIMIT a list (a gateway routing to hundreds of models lists more than that), since
    an error dressed as a 200 is a short object."""
    if body is None:
        return True
    listed = json_object(body)
    return listed is not None and isinstance(listed.get("data"), list)


def answers(
    body: bytes | None, content_type: str, stream: bool, kind: str, shape: str | None
) -> bool | None:
    """Whether a 2xx body answers the request it came for: a whole answer, or a stream that
    was an answer to its clean end; speech, by its label (`is_audio`), however long. Any
    other answer past ANSWER_LIMIT says nothing: a gateway's error may quote the caller's
    long prompt."""
    if shape == AUDIO and not stream:
        return is_sound_type(content_type) if body is None else is_audio(body, content_type)
    if body is None:
        return None
    if stream:
        recorder = StreamRecorder(len(body), kind)
        recorder.feed(body)
        return recorder.answered
    if shape == TRANSCRIPT:
        return transcript_of(body, content_type) is not None
    answer = json_object(body)
    if answer is not None and shape == COUNTED:
        return counted(answer)
    return answer is not None and is_answer(answer, kind == RESPONSES)
