"""What one test session does with its cassette: the record mode's decisions, the proxy's
settings, the environment, and the message of a request the cassette lacks.

Record modes, named as pytest-recording (vcrpy) names them:

    mode          cassette exists          cassette missing
    none          replay                   replay (every request misses)
    once          replay                   record
    new_episodes  replay, record the rest  record
    all           record everything anew   record

"Replay" is the proxy's replay mode: nothing reaches the upstream. "Record" is read-write under
`pin` on a memory store: each distinct request goes upstream once, and repeats in the session get
the recorded answer. The cassette is written once, at the end, and only by a recording session.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

import orjson

from proxy import config
from proxy.config import Settings
from proxy.core import routes
from proxy.core.call import Call
from proxy.core.entry import Entry
from proxy.core.nearest import Request, explain, readable
from proxy.core.policy import SHARED
from proxy.store import cassette, cassette_write
from proxy.store.cassette import Loaded
from proxy.testing.local import LocalProxy

PLACEHOLDER_KEY = "sk-repro-replay-placeholder"
PLUGIN_OPTIONS = "--llm-"  # what the plugin's options start with (`run`'s: "--")
PLUGIN_FLAG = f"{PLUGIN_OPTIONS}record-mode"
MEMORY_STORE = "memory://?max_bytes=4GiB"  # a cassette is never evicted from its session


class RecordMode(StrEnum):
    NONE = "none"
    ONCE = "once"
    NEW_EPISODES = "new_episodes"
    ALL = "all"


@dataclass
class LLMSession:
    mode: RecordMode
    cassette: str
    upstream: str
    exists: bool = False
    proxy: LocalProxy | None = None
    recorded: list[Request] = field(default_factory=list)
    saved_env: dict[str, str | None] = field(default_factory=dict)
    options: str = PLUGIN_OPTIONS  # as its user's options start, in what it says
    _loaded: list[Loaded] | None = None

    @property
    def records(self) -> bool:
        """Whether this session calls the upstream and writes the cassette."""
        if self.mode is RecordMode.ONCE:
            return not self.exists
        return self.mode is not RecordMode.NONE

    @property
    def loads(self) -> bool:
        return self.exists and self.mode is not RecordMode.ALL

    def settings(self) -> Settings:
        flags = {
            "port": "0",
            "upstream": self.upstream,
            "store": MEMORY_STORE,
            "cache_scope": "shared",
            "cache_mode": "readwrite" if self.records else "replay",
            "fingerprint_policy": "pin",
            "key_check_interval": "0",  # one tenant, the test suite: nobody to keep out
            "log_level": "warning",
        }
        try:
            return config.load(flags, environ={})
        except config.SettingError as exc:
            raise config.SettingError(f"{self.options}upstream: {exc}") from None

    @property
    def flag(self) -> str:
        """The record mode's option, as its user names it."""
        return f"{self.options}record-mode"

    def read(self) -> list[Loaded]:
        """The answers to replay (read once; CassetteError names a bad line)."""
        if self._loaded is None:
            self._loaded = cassette.read(self.cassette, SHARED) if self.loads else []
        return self._loaded

    def start(self, environ: MutableMapping[str, str] = os.environ) -> str:
        """Load the cassette, serve, and point the OpenAI SDKs of this process at the proxy."""
        loaded = self.read()
        self.recorded = [_request(item.entry) for item in loaded]
        self.proxy = LocalProxy(self.settings(), loaded)
        url = self.proxy.start()
        early = early_clients(url)
        if early:
            self.stop(environ)
            raise EarlyClient(
                f"{early[0]} was made before the session's proxy started (at import time, in a "
                "conftest or a plugin), with the base URL it had then: its calls would skip "
                "the cassette, sent to the network with the real key. Make it in a fixture or "
                "lazily, or pass it base_url from the llm_base_url fixture."
            )
        self.point(environ)
        for name in ("NO_PROXY", "no_proxy"):  # httpx reads either, the lower-case first
            self._set(environ, name, _without_proxy(environ.get(name)))
        if not self.records and not environ.get("OPENAI_API_KEY"):
            self._set(environ, "OPENAI_API_KEY", PLACEHOLDER_KEY)
        return url

    def stop(self, environ: MutableMapping[str, str] = os.environ) -> list[bytes]:
        """Stop serving, put the environment back; the lines to write when recording."""
        for name, value in self.saved_env.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        self.saved_env.clear()
        if self.proxy is None:
            return []
        lines = self.proxy.stop()
        return lines if self.records else []

    def elsewhere(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """Why the OpenAI clients made from now on would reach something else than the
        session's proxy, or None: `OPENAI_BASE_URL` changed by a test (without monkeypatch),
        which every later client took, its calls sent to the network with the real key while
        the run said it replayed."""
        if self.proxy is None or environ.get("OPENAI_BASE_URL") == self.proxy.url:
            return None
        return (
            "OPENAI_BASE_URL was changed during the session (by a test, without monkeypatch?): "
            "the OpenAI clients made after it skip the cassette"
        )

    def point(self, environ: MutableMapping[str, str] = os.environ) -> None:
        """Point this process's OpenAI SDKs at the proxy, as `start` does."""
        if self.proxy is not None:
            self._set(environ, "OPENAI_BASE_URL", self.proxy.url)

    def _set(self, environ: MutableMapping[str, str], name: str, value: str) -> None:
        self.saved_env.setdefault(name, environ.get(name))
        environ[name] = value

    def explain(self, misses: Iterable[Call]) -> str:
        """The failure of a test whose requests the cassette lacks, or that refuse any stored
        answer (only-if-cached with no-cache or no-store): no recording would serve those."""
        calls = list(misses)
        refused = [call for call in calls if not call.plan.lookup]
        absent = [call for call in calls if call.plan.lookup]
        parts = [_refusing(call, f"{self.flag}={self.mode}") for call in refused]
        if not absent:
            return "\n".join(parts)
        parts.append(f"LLM request not in the cassette {self.cassette} ({self.flag}={self.mode})")
        for call in absent:
            parts.append(explain(_request(call), self.recorded))
        if not self.exists:
            parts.append(
                f"There is no cassette yet: record one with {self.flag}=once (needs the "
                "upstream and its API key)."
            )
        else:
            parts.append(
                f"Record what is missing with {self.flag}=new_episodes, or everything "
                f"anew with {self.flag}=all."
            )
        return "\n".join(parts)


class Heard(NamedTuple):
    """What the session's proxy told since last asked, as messages (None: nothing): requests
    the cassette lacks, fetches or deletions by id that found nothing, and calls no cassette
    holds (fatal replaying, a warning recording)."""

    missing: str | None
    absent: str | None
    unreplayable: str | None


class EarlyClient(Exception):
    """An OpenAI client made before the session's proxy started, pointing elsewhere."""


def early_clients(url: str) -> list[str]:
    """The OpenAI SDK clients alive in this process whose base URL is not under `url`, each
    as `ClassName(base_url)`; none when the SDK was never imported."""
    openai = sys.modules.get("openai")
    named = (getattr(openai, name, None) for name in ("OpenAI", "AsyncOpenAI"))
    kinds = tuple(kind for kind in named if isinstance(kind, type))
    if not kinds:
        return []
    clients = (
        client
        for client in gc.get_objects()
        if isinstance(client, kinds) and type(client).__name__ != "_ModuleClient"
    )  # `openai.chat`'s own client: made anew when its module settings change, not checked
    urls = ((type(client).__name__, str(getattr(client, "base_url", ""))) for client in clients)
    return [f"{kind}({base})" for kind, base in urls if not base.startswith(url)]


def heard(llm: LLMSession) -> Heard:
    """What `llm`'s proxy was told since the last call (each thing once)."""
    if llm.proxy is None:
        return Heard(None, None, None)
    misses, gone = llm.proxy.misses.take(), llm.proxy.absent.take()
    beyond = llm.proxy.unreplayable.take()
    return Heard(
        llm.explain(misses) if misses else None,
        absent(gone, llm.cassette, llm.mode, llm.flag) if gone else None,
        unreplayable(beyond, llm.records, llm.mode, llm.flag) if beyond else None,
    )


def answers(count: int) -> str:
    return f"{count} answer" if count == 1 else f"{count} answers"


def left_out_line(why: str) -> str:
    """What a recording says of an answer no cassette may hold (`cassette.refusal`)."""
    return f"repro-proxy: left out of the cassette, no cassette may hold it: {why}"


MAX_LISTED = 5
"""Requests a failure or a warning names one by one; past them, how many more."""


def unreplayable(
    request_lines: Iterable[str], records: bool, mode: str, flag: str = PLUGIN_FLAG
) -> str:
    """Why a test's calls outside what a cassette holds fail replaying, or will: a cassette
    holds answers to the cached routes (and replays fetches and deletions by id of what they
    stored); any other call reaches the upstream while recording and is refused replaying."""
    named = _listed(request_lines)
    held = (
        "a cassette holds answers to POST /v1/chat/completions, /v1/completions, /v1/embeddings, "
        "/v1/moderations, /v1/images/generations, /v1/images/edits, /v1/images/variations, "
        "/v1/audio/speech, /v1/audio/transcriptions, /v1/audio/translations, /v1/responses, "
        "/v1/responses/compact and /v1/responses/input_tokens, and to the GETs of other routes "
        "a recording made (their JSON answers), and replays fetches and deletions of stored "
        "ones by id"
    )
    if records:
        return (
            f"repro-proxy: {named} went to the upstream and is not in the cassette: {held}. "
            "Replayed, this test will fail: mock that call in the test."
        )
    return (
        f"repro-proxy: {named} cannot be replayed ({flag}={mode}): {held}; any other "
        "call reaches the upstream only when recording. Mock that call in the test."
    )


def absent(request_lines: Iterable[str], cassette: str, mode: str, flag: str = PLUGIN_FLAG) -> str:
    """Why a fetch or deletion by id, or a read, found nothing: the answer holding the id, or
    the read, was not recorded (or, in `shared` scope, a response is reached by id only by a
    test it answered)."""
    return (
        f"repro-proxy: {_listed(request_lines)} found no stored answer in the cassette "
        f"{cassette} ({flag}={mode}): record it ({flag}=new_episodes); an id after the request "
        "that made it, before fetching or deleting it."
    )


def _listed(request_lines: Iterable[str]) -> str:
    """Each request once, in order; past MAX_LISTED, how many more."""
    distinct = list(dict.fromkeys(request_lines))
    named = ", ".join(distinct[:MAX_LISTED])
    if len(distinct) > MAX_LISTED:
        named += f" and {len(distinct) - MAX_LISTED} more"
    return named


def _refusing(call: Call, mode: str) -> str:
    """Why a request the cassette may hold still could not be answered from it; `mode` as the
    user gave it (`--llm-record-mode=none`)."""
    why = "its Cache-Control (only-if-cached with no-cache or no-store) refuses every stored answer"
    if call.kind == routes.RESPONSES:
        why = (
            "it is never cached (a background response, one continuing a conversation, a "
            "response whose id the proxy cannot track or a stored item named by id, a stored "
            f"prompt without a version), or {why}"
        )
    return (
        f"LLM request {call.route} (model {call.model!r}) cannot be answered from the cassette: "
        f"{why}; nor may it reach the upstream ({mode})."
    )


def _without_proxy(listed: str | None) -> str:
    """NO_PROXY with the proxy's loopback address added: an SDK reading HTTP_PROXY (a corporate
    forward proxy) would send it every request, the user's API key with it, in the clear, and
    fail, since no forward proxy reaches this machine's loopback."""
    hosts = [host.strip() for host in (listed or "").split(",") if host.strip()]
    return ",".join([*hosts, *(h for h in ("127.0.0.1", "localhost") if h not in hosts)])


def _request(asked: Call | Entry) -> Request:
    """What a failure shows of a request: its query as keyed, without a key sent in the URL."""
    if isinstance(asked, Call):
        body, query = asked.request, asked.keyed_query
    else:
        body, query = asked.request, asked.query
    return Request(asked.route, asked.model, asked.namespace, query, readable(body))


def write(path: str, batches: Iterable[Iterable[bytes]], keep: bool = False) -> int:
    """Write the recorded lines as one cassette; nothing when nothing was recorded. `keep`
    (`all` mode in a session that ran part of its suite): the cassette's lines for requests
    this session did not ask stay, those it asked again are replaced."""
    fresh = [list(batch) for batch in batches]
    asked = {cassette_write.identity(orjson.loads(line)) for batch in fresh for line in batch}
    if keep and any(asked) and os.path.isfile(path):
        kept = [
            orjson.dumps(record) + b"\n"
            for record in cassette.records(path)
            if cassette_write.identity(record) not in asked
        ]
        fresh.append(kept)
    lines = cassette_write.merged(fresh)
    if not lines:
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return cassette_write.save(path, lines)
