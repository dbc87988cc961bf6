"""The shared store: Redis or Redis Cluster, for replicas that must agree.

Key layout (hash-tagged: on a cluster every command stays within one slot, an entry and its lock
sharing a tag; only on a standalone server does `record` write across keys in one script):

    {prefix}e:{<key>}          hash  <fingerprint> -> value            one cache key's answers,
                                     NUL"labels" -> {"namespace", "model"[, "lineage"]}
                                     (what purges and exports select by)
    {prefix}fp:{<sha1(model)>} hash  model, current, seen (a counter),
                                     backs (times of the latest moves back),
                                     fp:<fingerprint> -> JSON record   one model's fingerprints
    {prefix}rot:{<sha1(model)>} list JSON {old, new, at, back}, newest first, bounded: rotations
    {prefix}models             set   model names                       index for the admin route
    {prefix}routed             set   routed lineages (`routes.routed`) the same, bounded apart
    {prefix}secret             string                                  the shared HMAC secret
    {prefix}dictionary         string                                  the shared zstd dictionary
    {prefix}generation         string  random, rewritten after a loss  what near-caches check
    {prefix}sealed             set   ids of encrypting proxies' keys   what import/export check
    {prefix}l:{<key>}          string  token, with an expiry           one cache key's fill lock
    {prefix}g:{<sha256(name)>} zset  attempt times, expiring           wrong admin tokens
    {prefix}rv:{<sha256(name)>} string "1", with an expiry             a logged-out session

The model name is hashed inside the braces because it may itself contain braces, which would
cut the hash tag short. Fingerprint fields carry the `fp:` prefix so that no fingerprint can
collide with `model`, `current` or `seen`. The Lua scripts are in `scripts.py`; what the
hashes read back as, in `layout.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from proxy.core.codec import MAX_DICTIONARY_BYTES
from proxy.core.fingerprints import ModelFingerprints, Observation, Rotation
from proxy.core.lru import LRU
from proxy.store import layout, redis_client, scripts, subscription
from proxy.store.base import Write
from proxy.store.batch import Batcher, dropped, replies, sha
from proxy.store.redis_client import mapped
from proxy.store.redis_scan import ENTRY_CHANGED, Scans
from proxy.store.subscription import HEARTBEAT

_MODELS_REMEMBERED = 256
_MODEL_NAME_REMEMBERED = 256


class RedisStore(Scans):
    """The Store protocol on an already built Redis or RedisCluster client (bytes responses);
    the calls that walk every entry are in redis_scan."""

    shared = True

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        prefix: str = "repro:",
        invalidations: str = "",
        deadline: float | None = None,
    ) -> None:
        """`invalidations`: a pub/sub channel that every write announces itself on, in the same
        transaction or script as the write, for near-caches in other processes.

        `deadline`: seconds within which every call answers or raises StoreTimeout (bounded
        per batch on the hot path, per call elsewhere); None leaves calls unbounded."""
        # redis-py's annotations mix its sync and async return types; this class maps its
        # errors at one boundary and checks what it reads, so the client is used untyped.
        self._client: Any = cast(Any, client)
        self._prefix = prefix
        # redis-py's asyncio cluster client has no pub/sub: no near-caches to tell there.
        self._cluster = isinstance(client, aioredis.RedisCluster)
        self.invalidations = "" if self._cluster else invalidations
        self.deadline = deadline
        self._batch = Batcher(self._client, deadline)
        self._models_parsed: LRU[frozenset[Any], ModelFingerprints] = LRU(_MODELS_REMEMBERED)
        self._model_keys: LRU[str, str] = LRU(_MODELS_REMEMBERED)

    async def get(self, key: str, fingerprints: Sequence[str] | None) -> dict[str, bytes]:
        if fingerprints is not None and not fingerprints:
            return {}
        with mapped("get"):
            if fingerprints is None:
                found = await self._batch.call("HGETALL", self._entry(key))
                return layout.values(found.items())
            values = await self._batch.call("HMGET", self._entry(key), *fingerprints)
        pairs = zip(fingerprints, values, strict=True)
        return {fp: layout.as_bytes(value) for fp, value in pairs if value is not None}

    async def lookup(
        self, key: str, model: str | None
    ) -> tuple[ModelFingerprints | None, dict[str, bytes]]:
        """Both reads in one pipeline (shared with whatever else is asking at the moment); on a
        cluster the two keys may sit on two nodes, which redis-py then asks in parallel."""
        with mapped("lookup"):
            if model is None:
                found = await self._batch.call("HGETALL", self._entry(key))
                return None, layout.values(found.items())
            state, found = await replies(
                self._batch.send("HGETALL", self._model(model)),
                self._batch.send("HGETALL", self._entry(key)),
            )
            return self._parsed_model(state), layout.values(found.items())

    async def lookup_or_lock(
        self, key: str, model: str | None, token: str, ttl: float
    ) -> tuple[ModelFingerprints | None, dict[str, bytes], bool]:
        """As `lookup`, with the fill lock asked for first in the same batch (the entry and its
        lock share a hash tag: one slot on a cluster). Commands on one connection run in
        order, so whoever takes the lock then reads the entry as it is after every earlier
        write. A lock taken beside an entry that holds something is released at once, unawaited,
        and reported not taken, as the store protocol wants. A lock refused (Redis out of memory
        refuses every write) is not taken either, and the reads beside it stand: a full Redis
        still serves HITs. Plain commands, not a script: a script costs Redis more CPU than
        the commands it runs."""
        ms = max(1, int(ttl * 1000))
        with mapped("lookup"):
            lock = self._batch.send("SET", self._lock(key), token, "NX", "PX", ms)
            reads = [self._batch.send("HGETALL", self._entry(key))]
            if model is not None:
                reads.append(self._batch.send("HGETALL", self._model(model)))
            try:
                found, *state = await replies(*reads)
            except BaseException:
                self._given_up(lock, key, token)
                raise
            taken = await redis_client.taken(lock)
        if found and taken:
            dropped(self._batch.send("DEL", self._lock(key)))
        parsed = self._parsed_model(state[0]) if state else None  # never raises: see layout
        return parsed, layout.values(found.items()), bool(taken) and not found

    def _parsed_model(self, state: Mapping[bytes | str, bytes | str]) -> ModelFingerprints | None:
        """`_parse_model`, remembered: every HIT reads the model's state, which rarely changes."""
        raw = frozenset(state.items())
        found = self._models_parsed.get(raw)
        if found is None:
            found = layout.parse_model(state)
            if found is not None:
                self._models_parsed.put(raw, found)
        return found

    async def put(self, write: Write) -> None:
        """Store the value; the TTL is per key, so it also renews the key's other fingerprints.

        Without a TTL (the default), plain commands in order on one connection: the entry, its
        news, then the lock, which is deleted whoever holds it (a holder whose lock expired
        and was taken over finds the entry filled, which is all the lock waited for): Redis spends
        less CPU on them than on the same commands in a script. With a TTL, a script, so
        that no value is ever stored without its expiry.

        On a cluster, one key per command: the script writes the entry alone and a DEL after it
        releases the lock. While a slot moves, a command naming two of its keys is refused
        (TRYAGAIN) as long as one has moved and the other not, and redis-py asks again for
        almost half a second, holding up every command of its batch."""
        with mapped("put"):
            if write.ttl > 0 and not self._cluster:
                await self._batch.script(scripts.PUT, self._put_keys(write), self._put_args(write))
                return
            if write.ttl > 0:
                args = self._put_args(write._replace(unlock=None))
                sent = [self._batch.script_sent(scripts.PUT, [self._entry(write.key)], args)]
                if write.unlock:
                    sent.append(self._batch.send("DEL", self._lock(write.key)))
                await replies(*sent)
                return
            entry, tags = self._entry(write.key), layout.tags(write.labels)
            sent = [
                self._batch.send(
                    "HSET", entry, write.fingerprint, write.value, layout.LABELS, tags
                ),
                self._batch.send("PERSIST", entry),
            ]
            if self.invalidations:
                news = ENTRY_CHANGED + write.key
                sent.append(self._batch.send("PUBLISH", self.invalidations, news))
            if write.unlock:
                sent.append(self._batch.send("DEL", self._lock(write.key)))
            added, *_ = await replies(*sent)
            if added == 1:  # a fingerprint the key did not hold (a new key adds its labels too)
                await self._batch.script(scripts.TRIM_ANSWERS, [entry], [write.fingerprint])

    async def record(self, write: Write) -> Observation:
        """One script on a standalone server. A cluster keeps the two on their own slots, sent
        together (the observation first) but not atomically: a lookup between them, at a
        rotation only, is a MISS, never a wrong answer."""
        if self._cluster:
            writing = asyncio.ensure_future(self.put(write))
            try:
                return await self.observe_fingerprint(write.model, write.fingerprint, write.now)
            finally:
                await writing
        model = self._model(write.model)
        keys = [model, layout.history_key(model), self._index(write.model), *self._put_keys(write)]
        args = [write.model, repr(write.now), *self._put_args(write)]
        with mapped("record"):
            reply = await self._batch.script(scripts.RECORD, keys, args)
            return layout.observation(reply, write.fingerprint)

    def _put_keys(self, write: Write) -> list[str]:
        return [self._entry(write.key), self._lock(write.key)]

    def _put_args(self, write: Write) -> list[Any]:
        return [
            write.fingerprint, write.value, layout.LABELS, layout.tags(write.labels), write.ttl,
            self.invalidations, ENTRY_CHANGED + write.key, write.unlock or "",
        ]  # fmt: skip

    async def delete(self, key: str) -> None:
        with mapped("delete"):
            async with (
                asyncio.timeout(self.deadline),
                self._client.pipeline(transaction=True) as pipe,
            ):
                pipe.delete(self._entry(key))
                self._announce(pipe, ENTRY_CHANGED + key)
                await pipe.execute()

    def _announce(self, pipe: Any, message: str) -> None:
        if self.invalidations:
            pipe.publish(self.invalidations, message)

    async def listen(self, channel: str, *callbacks: Any, heartbeat: float = HEARTBEAT) -> None:
        """Deliver `channel`'s messages until the connection fails (see subscription.listen)."""
        await subscription.listen(self._client, channel, *callbacks, heartbeat=heartbeat)

    async def observe_fingerprint(
        self, model: str, fingerprint: str, now: float, count: int = 1, moves: bool = True
    ) -> Observation:
        """One atomic script on the model's keys, and the model named in the index in the same
        batch each time, not only by the first caller: an index Redis evicted (it is rarely
        read, so among the first under `allkeys-lru`) is written again by the next observation."""
        args = [model, fingerprint, repr(now), count, self.invalidations, int(moves)]
        name = self._model(model)
        with mapped("observe_fingerprint"):
            reply, _ = await replies(
                self._batch.script_sent(scripts.OBSERVE, [name, layout.history_key(name)], args),
                self._batch.script_sent(scripts.INDEX, [self._index(model)], [model]),
            )
            return layout.observation(reply, fingerprint, moves)

    async def fingerprints(self, model: str) -> ModelFingerprints | None:
        with mapped("fingerprints"):
            state = await self._batch.call("HGETALL", self._model(model))
            return layout.parse_model(state)

    async def all_fingerprints(self) -> dict[str, ModelFingerprints]:
        """The indexes, then every model's hash in one pipeline (split per node on a cluster)."""
        with mapped("all_fingerprints"):
            async with asyncio.timeout(self.deadline):
                names = await self._client.smembers(self._models())
                names |= await self._client.smembers(self._routed())
                models = sorted(filter(None, map(layout.name, names)))
                async with self._client.pipeline(transaction=False) as pipe:
                    for model in models:
                        pipe.hgetall(self._model(model))
                    states = await pipe.execute()
            parsed = {m: layout.parse_model(state) for m, state in zip(models, states, strict=True)}
        return {model: state for model, state in parsed.items() if state is not None}

    async def rotations(self, model: str) -> tuple[Rotation, ...]:
        """One bounded list (ROTATIONS_KEPT), read whole."""
        with mapped("rotations"):
            raw = await self._batch.call("LRANGE", layout.history_key(self._model(model)), 0, -1)
            parsed = map(layout.parse_rotation, reversed(raw))
            return tuple(rotation for rotation in parsed if rotation is not None)

    async def secret(self, candidate: bytes) -> bytes:
        return cast(bytes, await self._first_wins("secret", candidate))

    async def dictionary(self, candidate: bytes | None) -> bytes | None:
        """At most a little more than a dictionary may hold (room for a seal): enough to refuse
        a larger value without reading it whole (asked again while entries name one unknown)."""
        return await self._first_wins("dictionary", candidate, MAX_DICTIONARY_BYTES + 1024)

    async def generation(self) -> bytes:
        """A mark of what the store holds: the same until Redis loses its keys (a FLUSHALL, a
        failover to an empty replica), which no message announces. The first to find it gone
        writes a fresh one, so every caller then reads a mark it has not seen before."""
        return cast(bytes, await self._first_wins("generation", secrets.token_bytes(16)))

    async def sealers(self, mine: str | None, asked: Sequence[str] = ()) -> tuple[int, bool]:
        """Add `mine` (an encrypting proxy's key id) to the store's unless None; how many ids
        it holds, and whether any of `asked` is one. Counted, never read whole: anyone may add."""
        key = self._prefix + "sealed"
        with mapped("sealed"):
            async with asyncio.timeout(self.deadline), self._client.pipeline() as pipe:
                if mine is not None:
                    pipe.sadd(key, mine)
                pipe.scard(key)
                for name in asked:
                    pipe.sismember(key, name)
                found = (await pipe.execute())[-1 - len(asked) :]
        return int(found[0]), any(found[1:])

    async def _first_wins(
        self, name: str, candidate: bytes | None, limit: int | None = None
    ) -> bytes | None:
        """First writer wins; everyone then reads the winner's value (None: only read), or its
        first `limit` bytes."""
        key = self._prefix + name
        with mapped(name):
            async with asyncio.timeout(self.deadline), self._client.pipeline() as pipe:
                if candidate is not None:
                    pipe.set(key, candidate, nx=True)
                if limit is None:
                    pipe.get(key)
                else:
                    pipe.getrange(key, 0, limit - 1)
                stored = (await pipe.execute())[-1]
        if stored is None or (limit is not None and not stored):  # GETRANGE: "" when absent
            return None
        return layout.as_bytes(stored)

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        """A script, not SET NX: a follower bounds a lock no leader could hold (see LOCK). Only
        misses that found the key locked ask; the lookup beside a HIT takes locks plainly."""
        with mapped("lock"):
            ms = max(1, int(ttl * 1000))
            sent = self._batch.script_sent(scripts.LOCK, [self._lock(key)], [token, ms])
            try:
                taken = await sent
            except BaseException:
                self._given_up(sent, key, token)
                raise
        return bool(taken)

    def _given_up(self, lock: asyncio.Future[Any], key: str, token: str) -> None:
        """A lock asked for whose caller stopped waiting (the store deadline, a cancelled
        request) may still be taken when Redis answers, by a token nobody will release: every
        fill of the key would then wait the lock timeout out. Its release is queued behind it
        on the same connection, unawaited; it deletes the lock only if that token holds it."""
        if lock.done() and not lock.cancelled() and lock.exception() is None and not lock.result():
            return
        dropped(lock)
        release = self._batch.script_sent(scripts.UNLOCK, [self._lock(key)], [token])
        release.add_done_callback(dropped)

    async def unlock(self, key: str, token: str) -> None:
        with mapped("unlock"):
            await self._batch.script(scripts.UNLOCK, [self._lock(key)], [token])

    async def locked(self, key: str) -> bool:
        with mapped("locked"):
            return bool(await self._batch.call("EXISTS", self._lock(key)))

    async def attempts(
        self, name: str, now: float, window: float, keep: int, add: bool
    ) -> tuple[float, ...]:
        member = f"{now!r}:{secrets.token_hex(8)}"
        args = [repr(now), repr(window), keep, int(add), member]
        with mapped("attempts"):
            found = await self._batch.script(scripts.ATTEMPTS, [self._named("g", name)], args)
            return layout.times(found)

    async def mark(self, name: str, ttl: float) -> None:
        with mapped("mark"):
            await self._batch.call(
                "SET", self._named("rv", name), b"1", "PX", max(1, math.ceil(ttl * 1000))
            )

    async def marked(self, name: str) -> bool:
        with mapped("marked"):
            return bool(await self._batch.call("EXISTS", self._named("rv", name)))

    async def denied(self, subscribes: bool = True) -> list[str]:
        """The commands the proxy runs beside plain reads and writes that the Redis user may
        not run (ACL): the scripts every write with a TTL and every fingerprint record is, the
        news every writer sends, and the subscription a near-cache (`subscribes`) listens on.
        Checked without side effects (a script that returns, news of no key); a store that
        does not answer now denies nothing."""
        probe = "return 1"
        checks: list[tuple[Any, ...]] = [("EVAL", probe, 0), ("EVALSHA", sha(probe), 0)]
        if self.invalidations:
            checks.append(("PUBLISH", self.invalidations, ENTRY_CHANGED))
        try:
            async with asyncio.timeout(self.deadline), self._client.pipeline(False) as pipe:
                for args in checks:
                    pipe.execute_command(*args)
                answers = await pipe.execute(raise_on_error=False)
        except (*redis_client.FAILURES, TimeoutError):
            return []
        named = zip(checks, answers, strict=True)
        denied = [args[0] for args, answer in named if isinstance(answer, NoPermissionError)]
        channel = self.invalidations
        if (
            channel
            and subscribes
            and not await subscription.permitted(self._client, channel, self.deadline)
        ):
            denied.append("SUBSCRIBE")
        return denied

    async def ping(self) -> None:
        with mapped("ping"):
            await self._client.ping()

    async def close(self) -> None:
        """On a cluster, every node's connections as `aclose` would close them: redis-py's
        does nothing once it has reset itself (after a run of MOVED replies, as while a slot
        moves), though its nodes have connected again since."""
        with mapped("close"):
            await self._batch.close()
            await self._client.aclose()
            if self._cluster:
                await self._client.nodes_manager.aclose()
                await self._client.nodes_manager.aclose("startup_nodes")

    def _entry(self, key: str) -> str:
        return f"{self._prefix}e:{{{key}}}"

    def _lock(self, key: str) -> str:
        return f"{self._prefix}l:{{{key}}}"

    def _model(self, model: str) -> str:
        """Every lookup names its model's key; a handful of models make nearly all traffic, and
        only names of a model's length are remembered: a name is the client's, as long as a
        body allows, and a refused caller's lookups name one too."""
        name = self._model_keys.get(model)
        if name is None:
            digest = hashlib.sha1(model.encode(), usedforsecurity=False).hexdigest()
            name = f"{self._prefix}fp:{{{digest}}}"
            if len(model) <= _MODEL_NAME_REMEMBERED:
                self._model_keys.put(model, name)
        return name

    def _named(self, kind: str, name: str) -> str:
        """A key of the admin state: the name hashed, since it may hold braces or be long."""
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return f"{self._prefix}{kind}:{{{digest}}}"

    def _models(self) -> str:
        return f"{self._prefix}models"

    def _routed(self) -> str:
        return f"{self._prefix}routed"
