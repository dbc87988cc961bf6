"""Only a key the upstream accepts, recently, may receive a cached answer.

Without this, a revoked key would keep reading its own entries (scope `key`), and with scope
`shared` any string in the Authorization header would read everyone's. A key counts as accepted
when the upstream answered it with a 2xx within `interval` seconds, on a real request or on a
`GET /v1/models` the proxy sends when it needs to know. Verdicts are kept by the key's HMAC,
never by the key.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping

from multidict import CIMultiDictProxy

from proxy.errors import UpstreamError
from proxy.upstream import Upstream, auth_headers

log = logging.getLogger("proxy.keys")

MAX_VERDICTS = 10_000


class KeyChecker:
    def __init__(self, upstream: Upstream, interval: float, clock: Callable[[], float]) -> None:
        self._upstream = upstream
        self._interval = interval
        self._clock = clock
        self._verdicts: OrderedDict[str, tuple[bool, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._interval > 0

    def remember(self, tenant: str) -> None:
        """The upstream just answered this key with a 2xx."""
        self._record(tenant, True)

    async def accepted(self, tenant: str, headers: CIMultiDictProxy[str], unknown: bool) -> bool:
        """Whether the caller's key (from its request `headers`; its HMAC is `tenant`) may read
        the cache now. The credentials are read only when the upstream must be asked.

        `unknown` is the answer when the upstream cannot say (down, no /v1/models) and no
        earlier verdict exists.
        """
        verdict = self._verdicts.get(tenant)
        if verdict is not None and self._clock() - verdict[1] < self._interval:
            return verdict[0]
        status = await self._ask(auth_headers(headers))
        if status is not None and 200 <= status < 300:
            self._record(tenant, True)
            return True
        if status in (401, 403):
            self._record(tenant, False)
            log.info(
                "key refused by the upstream: no cached answers for it", extra={"scope": tenant}
            )
            return False
        return verdict[0] if verdict is not None else unknown

    async def _ask(self, auth: Mapping[str, str]) -> int | None:
        try:
            status, _ = await self._upstream.fetch("GET", "/v1/models", auth, None)
        except UpstreamError:
            return None
        return status

    def _record(self, tenant: str, accepted: bool) -> None:
        self._verdicts[tenant] = (accepted, self._clock())
        self._verdicts.move_to_end(tenant)
        while len(self._verdicts) > MAX_VERDICTS:
            self._verdicts.popitem(last=False)
