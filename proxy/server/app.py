"""create_app: wire settings, store, upstream and metrics into one aiohttp application."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.config import Settings
from proxy.core import credentials
from proxy.core.budget import Budget, budget_for
from proxy.core.canonical import CACHEABLE_ROUTES
from proxy.core.codec import Codec
from proxy.core.hosts import HostCheck, allowed_hosts
from proxy.core.keyed import Keying
from proxy.core.policy import SHARED, CacheMode, CacheScope
from proxy.core.routes import AZURE_RESPONSES, AZURE_V1, DEPLOYMENT_CALLS, DEPLOYMENTS
from proxy.metrics import Metrics
from proxy.server import admin, bodies, handlers, keep, responses, rotations, transfer, ui
from proxy.server.coalesce import Coalescer
from proxy.server.context import SERVICES, Services, Watch, entry_memo
from proxy.server.dictionary import Dictionaries
from proxy.server.fingerprints import FingerprintTracker
from proxy.server.keycheck import KeyChecker
from proxy.server.observed import UNROUTED, expect, observed, unrouted
from proxy.server.offload import Offload
from proxy.server.probe import Prober
from proxy.server.secret import Secret
from proxy.server.verify import Verifier
from proxy.store import MemoryStore, RedisStore, cassette, cassette_write, open_store
from proxy.store.base import Store, StoreError, StoreUnusable
from proxy.store.encrypted import EncryptedStore, parse_keys
from proxy.store.guard import GuardedStore
from proxy.store.near import NearCache
from proxy.store.retired import Retired
from proxy.store.wrapper import StoreWrapper
from proxy.upstream.client import Upstream
from proxy.upstream.egress import Egress, env_proxy

log = logging.getLogger("proxy.app")

PASSTHROUGH_ROUTE = "/v1/*"
AZURE_PASSTHROUGH_ROUTE = "/openai/*"


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
    multiprocess_dir: str | None = None,
    environ: Mapping[str, str] = os.environ,
    watch: Watch | None = None,
    retired: Retired | None = None,
) -> web.Application:
    """The proxy application; the store is opened from settings unless one is injected.

    `multiprocess_dir` is prometheus-client's shared directory when several workers serve;
    `environ` holds the forward-proxy variables (HTTPS_PROXY, HTTP_PROXY, NO_PROXY); `watch` is
    told of the requests a replay misses or cannot answer; `retired` keeps the answers the upstream
    deletes for a cassette recorded by the caller (`--cassette` records its own).
    """
    app = web.Application(client_max_size=settings.max_body, handler_args=bodies.HANDLER_ARGS)
    metrics = Metrics(registry or CollectorRegistry(), multiprocess_dir)
    app.cleanup_ctx.append(_services(settings, store, metrics, clock, environ, watch, retired))
    router = app.router  # each route answers `Expect` in our shape (`expect`)
    for route in cacheable_routes():
        router.add_post(route, observed(handlers.cacheable, route), expect_handler=expect)
    for route in ("/v1/responses/{id}", AZURE_V1 + "responses/{id}", AZURE_RESPONSES + "/{id}"):
        router.add_get(route, observed(responses.by_id, route), expect_handler=expect)
        router.add_delete(route, observed(responses.delete_by_id, route), expect_handler=expect)
    for route in ("/v1/chat/completions/{id}", AZURE_V1 + "chat/completions/{id}"):
        router.add_get(route, observed(responses.chat_by_id, route), expect_handler=expect)
        changed = observed(responses.forget_changed, route)
        router.add_post(route, changed, expect_handler=expect)
        router.add_delete(route, changed, expect_handler=expect)
    passing = observed(handlers.passthrough, PASSTHROUGH_ROUTE)
    router.add_route("*", "/v1/{tail:(?s:.*)}", passing, expect_handler=expect)
    passing = observed(handlers.passthrough, AZURE_PASSTHROUGH_ROUTE)
    router.add_route("*", "/openai/{tail:(?s:.*)}", passing, expect_handler=expect)
    router.add_get("/healthz", observed(handlers.healthz), expect_handler=expect)
    router.add_get("/readyz", observed(handlers.readyz), expect_handler=expect)
    router.add_get("/metrics", observed(handlers.metrics), expect_handler=expect)
    router.add_get("/admin/fingerprints", observed(admin.admin_fingerprints), expect_handler=expect)
    router.add_get("/admin/stats", observed(admin.admin_stats), expect_handler=expect)
    router.add_post("/admin/purge", observed(admin.admin_purge), expect_handler=expect)
    router.add_get("/admin/export", observed(transfer.admin_export), expect_handler=expect)
    router.add_post("/admin/import", observed(transfer.admin_import), expect_handler=expect)
    router.add_get("/admin/rotations", observed(rotations.admin_rotations), expect_handler=expect)
    router.add_get("/admin/ui", observed(ui.admin_ui), expect_handler=expect)
    router.add_post("/admin/ui/login", observed(ui.ui_login), expect_handler=expect)
    router.add_post("/admin/ui/logout", observed(ui.ui_logout), expect_handler=expect)
    router.add_get("/admin/ui/static/{name}", observed(ui.ui_static), expect_handler=expect)
    router.add_route("*", UNROUTED, observed(unrouted), expect_handler=expect)  # the last
    return app


def cacheable_routes() -> list[str]:
    """The OpenAI routes, and Azure OpenAI's three shapes of them; each pattern is also the
    metrics' route label."""
    openai = sorted(CACHEABLE_ROUTES)
    azure_v1 = [AZURE_V1 + route.removeprefix("/v1/") for route in openai]
    deployments = [DEPLOYMENTS + "{deployment}/" + call for call in DEPLOYMENT_CALLS]
    return [*openai, *azure_v1, *deployments, AZURE_RESPONSES]


def egress(settings: Settings, environ: Mapping[str, str]) -> Egress:
    return Egress(
        ca=settings.upstream_ca,
        cert=settings.upstream_cert,
        key=settings.upstream_key,
        connections=settings.upstream_connections,
        proxy=env_proxy(settings.upstream, environ),
    )


def _services(
    settings: Settings,
    injected: Store | None,
    metrics: Metrics,
    clock: Callable[[], float],
    environ: Mapping[str, str],
    watch: Watch | None,
    retired: Retired | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        store, local_bytes = await _layered_store(settings, injected)
        kept = retired if retired is not None else _recording(settings)
        services = await _assemble(
            settings, store, local_bytes, metrics, clock, environ, watch, kept
        )
        app[SERVICES] = services
        await _load_cassette(settings, services)
        try:
            prober = services.prober
            probe = prober.run if prober.enabled else None
            near = store.run if isinstance(store, NearCache) else None
            async with (
                _background(probe, "fingerprint-probe"),
                _background(near, "near-cache"),
                _background(_keeping(services), "keep"),
            ):
                yield
            # A dictionary another process trained meanwhile, which stored entries may name.
            await services.dictionaries.settle()
            await _save_cassette(settings, store, services.codec, services.retired)
        finally:
            await _close(services)

    return context


def _keeping(services: Services) -> Callable[[], Coroutine[Any, Any, None]] | None:
    """The rounds that give a shared store back what it lost (see keep.py); a store of this
    process's own loses nothing while it runs."""
    store = services.store
    if not store.shared:
        return None
    parts: list[keep.Kept] = [services.secret, services.dictionaries]
    backend = _backend(store)
    if isinstance(backend, RedisStore):
        parts.append(backend)  # its index of models, trimmed to its bound
    if isinstance(store, NearCache):
        parts.insert(0, store)  # first: no other call delays the check that bounds stale HITs
    return functools.partial(keep.keep, parts)


def _backend(store: Store) -> Store:
    """The store under the layers `_layered_store` puts on it."""
    while isinstance(store, GuardedStore | StoreWrapper):
        store = store.inner
    return store


async def _layered_store(settings: Settings, injected: Store | None) -> tuple[Store, int]:
    """The store the handlers use, and how many bytes of entries it keeps in this process (the
    memo of decoded entries is sized after it): the backend, encrypted when a key is set,
    guarded when it can hang or fail, fronted by the near-cache when Redis announces changes."""
    timeout = settings.store_timeout
    # Announced whether or not this process keeps a near-cache (INVALIDATIONS): another may.
    backend = injected or await open_store(settings.store, deadline=timeout)
    subscribes = bool(settings.near_cache)
    if isinstance(backend, RedisStore) and (denied := await backend.denied(subscribes)):
        await backend.close()
        raise StoreUnusable(
            f"the Redis user may not run {', '.join(denied)}, which the proxy needs: "
            "grant them (see the Redis section of docs/operations.md)"
        )
    store = _encrypted(settings, backend)
    if isinstance(backend, RedisStore):
        await _sealing(backend, store)
    if not isinstance(backend, MemoryStore):  # this process's memory neither hangs nor fails
        bounded = isinstance(backend, RedisStore) and backend.deadline == timeout
        store = GuardedStore(store, timeout=timeout, bounded=bounded)
    local_bytes = backend.max_bytes if isinstance(backend, MemoryStore) else 0
    if isinstance(backend, RedisStore) and backend.invalidations and settings.near_cache:
        near = NearCache(store, backend, settings.near_cache)
        await near.keep()  # the generation it starts on: its first round then empties nothing
        store, local_bytes = near, settings.near_cache
    return store, local_bytes


async def _assemble(
    settings: Settings,
    store: Store,
    local_bytes: int,
    metrics: Metrics,
    clock: Callable[[], float],
    environ: Mapping[str, str],
    watch: Watch | None,
    retired: Retired | None,
) -> Services:
    """Every part the handlers share, built on `store`; the secret and the compression
    dictionary are settled with the other processes before the first request."""
    # Replay never reaches the upstream: no probe, no drift check (key checks are skipped).
    calls_upstream = settings.cache_mode is not CacheMode.REPLAY
    upstream = Upstream(
        settings.upstream,
        settings.connect_timeout,
        settings.upstream_timeout,
        egress(settings, environ),
    )
    fingerprints = FingerprintTracker(
        store,
        metrics,
        settings.fingerprint_policy,
        settings.fingerprint_grace,
        clock,
        flap_window=settings.fingerprint_flap_window,
    )
    prober = Prober(
        upstream,
        fingerprints,
        interval=settings.probe_interval if calls_upstream else 0.0,
        api_key=settings.probe_key,
        seed=settings.default_seed,
        clock=clock,
    )
    secret = Secret(store, settings.secret)
    await secret.settle()
    packing = codec(settings)
    dictionaries = Dictionaries(
        store, packing, settings.compression_dictionary, clock, settings.store_timeout
    )
    await dictionaries.settle()
    carriers = credentials.names(settings.credential_header)
    shared = settings.cache_scope is CacheScope.SHARED
    rate = settings.verify_rate if calls_upstream else 0.0
    offload = Offload()
    verifier = Verifier(
        upstream,
        offload,
        fingerprints,
        metrics,
        rate,
        random.random,
        carriers,
        settings.max_entry,
    )
    keys = KeyChecker(
        upstream,
        settings.key_check_interval,
        clock,
        timeout=settings.key_check_timeout,
        carriers=carriers,
        shared=shared,
    )
    return Services(
        settings=settings,
        store=store,
        upstream=upstream,
        metrics=metrics,
        fingerprints=fingerprints,
        coalescer=Coalescer(store, settings.lock_timeout),
        keys=keys,
        offload=offload,
        prober=prober,
        verifier=verifier,
        secret=secret,
        clock=clock,
        codec=packing,
        dictionaries=dictionaries,
        hosts=HostCheck(allowed_hosts(settings.host, settings.allowed_host)),
        credential_names=carriers,
        keying=Keying(settings.unkeyed_header, carriers, shared),
        entries=entry_memo(local_bytes),
        recordings=Budget(budget_for(settings.max_entry)),
        reading=Budget(budget_for(settings.max_body)),
        watch=watch,
        retired=retired,
    )


async def _close(services: Services) -> None:
    services.offload.close()
    await services.dictionaries.close()
    await services.verifier.close()
    await services.keys.close()
    await services.fingerprints.close()
    await services.upstream.close()
    await services.store.close()


@contextlib.asynccontextmanager
async def _background(
    work: Callable[[], Coroutine[Any, Any, None]] | None, name: str
) -> AsyncIterator[None]:
    """Run `work` as a task for the duration of the block (nothing when there is none)."""
    if work is None:
        yield
        return
    task = asyncio.create_task(work(), name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def codec(settings: Settings) -> Codec:
    """Stored values may expand to an answer under --max-entry and its request under --max-body,
    and to nothing more: a blob claiming more is not unpacked."""
    max_raw = settings.max_entry + settings.max_body + ENTRY_SLACK
    return Codec(settings.compression, max_raw, samples=settings.compression_dictionary)


ENTRY_SLACK = 64 * 1024
"""Bytes of an entry's metadata, beyond its answer and request."""


async def _load_cassette(settings: Settings, services: Services) -> None:
    """Load `--cassette`; requests by id for what it holds are answered from it (`recorded`)."""
    if settings.cassette is None or not os.path.isfile(settings.cassette):
        return
    loaded = cassette.read(settings.cassette, SHARED)
    count = await cassette.load(services.store, loaded, services.codec)
    services.recorded.update(cassette.index_keys(loaded))
    log.info("cassette loaded", extra={"path": settings.cassette, "answers": count})


def _recording(settings: Settings) -> Retired | None:
    """A proxy that writes its answers to a cassette keeps those the upstream deletes for it."""
    if settings.cassette is None or settings.cache_mode is CacheMode.REPLAY:
        return None
    return Retired()


async def _save_cassette(
    settings: Settings, store: Store, codec: Codec, retired: Retired | None
) -> None:
    """A recording proxy leaves its answers in the cassette; a replaying one leaves it alone."""
    if settings.cassette is None or settings.cache_mode is CacheMode.REPLAY:
        return
    skipped = cassette.Skipped()
    try:
        count = await cassette_write.write(store, settings.cassette, codec, skipped, retired)
    except OSError as exc:  # named as the cassette's, not taken for the port's (`start_failure`)
        reason = (exc.strerror or str(exc)).lower()
        raise cassette.CassetteError(f"cannot write {settings.cassette!r}: {reason}") from None
    log.info("cassette written", extra={"path": settings.cassette, "answers": count})
    transfer.left_out(skipped)


async def _sealing(backend: RedisStore, store: Store) -> None:
    """An encrypting proxy names its key in the store (see proxy.store.encrypted). One without a
    key refuses a store whose proxies encrypt: it would write answers in the clear that they
    read as absent, and read theirs as absent, a cache of nothing that looks like one. A store
    down now is no reason not to start, as for every other call; the next start names it."""
    mine = store.key_ids[0] if isinstance(store, EncryptedStore) else None
    try:
        sealers, _ = await backend.sealers(mine)
    except StoreError as exc:
        if mine is not None:
            log.warning("the store was not told it is encrypted", extra={"error": str(exc)})
        return
    if mine is None and sealers:
        await backend.close()
        raise StoreUnusable(
            "the proxies of this store encrypt its answers: give this one their key with "
            "--encryption-key (or REPRO_ENCRYPTION_KEY); to stop encrypting, purge the store "
            "and delete its `sealed` key (repro:sealed by default)"
        )


def _encrypted(settings: Settings, store: Store) -> Store:
    if settings.encryption_key is None:
        return store
    return EncryptedStore(store, parse_keys(settings.encryption_key))
