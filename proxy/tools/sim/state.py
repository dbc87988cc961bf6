"""The simulator's settings and the state its handlers share: tunables, queued faults, records.

Validation lives here too, since the control routes and the generators refuse bad input alike:
a `BadRequest` names the offending parameter, as the real API's 400 does.
"""

from __future__ import annotations

import math
import random
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson
from aiohttp import web

from proxy.values import MAX_SECONDS

JSON = dict[str, Any]
Said = tuple[bytes, str] | JSON | list[JSON]
"""A media route's answer: bytes and their type (sound, a transcript as text), JSON, or a
stream's events."""

TUNABLES = ("latency", "chunk_delay", "divergence", "drift")
_SHARES = frozenset({"divergence", "drift"})
_FAULT_KINDS = frozenset(
    {"status", "cut", "error_event", "hang", "drop", "response_failed", "response_incomplete"}
)
_RECORD_LIMIT = 1000
RECORD_BYTES = 256 * 1024 * 1024
MAX_COUNTED = 1024  # distinct paths /_sim/stats counts apart
MAX_FAULTS = 1024
_RESPONSES_KEPT = 1000


def check_tunable(name: str, value: object) -> float:
    """Validate a tunable's value, naming the setting in the error."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if name in _SHARES and not 0 <= value <= 1:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    if not 0 <= value <= MAX_SECONDS:
        # A wait of 1e300 seconds is a hang, not a latency; serve's seconds stop at the same.
        raise ValueError(
            f"{name} must be a number of seconds from 0 to {MAX_SECONDS}, got {value!r}"
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class SimSettings:
    """Start-up configuration; tests change the tunables later through /_sim/settings."""

    host: str = "127.0.0.1"
    port: int = 8090
    fingerprint: str | None = "fp_sim_0001"
    latency: float = 0.0
    chunk_delay: float = 0.0
    api_keys: tuple[str, ...] = ()
    divergence: float = 0.0
    drift: float = 1.0
    fingerprints: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in TUNABLES:
            check_tunable(name, getattr(self, name))
        check_fingerprints(self.fingerprints)


def check_fingerprints(value: object) -> tuple[str, ...]:
    """Fingerprints to alternate between: a list of non-empty strings (empty: no alternation)."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"fingerprints must be a list of non-empty strings, got {value!r}")
    return tuple(value)


class BadRequest(Exception):
    """A request the real API would refuse with 400; carries the offending parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def parse_object(raw: bytes) -> JSON:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    return data


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def int_param(data: JSON, name: str, default: int, lo: int, hi: int | None = None) -> int:
    """An integer parameter within bounds (null means default), else a 400 naming it."""
    value = data.get(name)
    if value is None:
        return default
    if not is_int(value) or value < lo or (hi is not None and value > hi):
        upper = "" if hi is None else f" and at most {hi}"
        raise BadRequest(f"{name} must be an integer of at least {lo}{upper}", name)
    return value


@dataclass(slots=True)
class Fault:
    """One queued misbehaviour, applied to the next `remaining` LLM requests."""

    kind: str
    remaining: int
    status: int
    headers: dict[str, str]
    body: Any
    after: int

    @classmethod
    def from_json(cls, data: JSON) -> Fault:
        """Validate a POST /_sim/faults body; mistakes answer 400 naming the field."""
        kind = data.get("kind")
        if kind not in _FAULT_KINDS:
            raise BadRequest(f"kind must be one of {sorted(_FAULT_KINDS)}", "kind")
        headers = data.get("headers") or {}
        if not isinstance(headers, dict):
            raise BadRequest("headers must be an object", "headers")
        return cls(
            kind=kind,
            remaining=int_param(data, "count", 1, lo=1),
            status=int_param(data, "status", 500, lo=100, hi=599),
            headers={str(k): str(v) for k, v in headers.items()},
            body=data.get("body"),
            after=int_param(data, "after", 2, lo=0),
        )


@dataclass(slots=True)
class SimState:
    """Everything that changes while the simulator runs, shared by its handlers via the app."""

    fingerprint: str | None
    latency: float
    chunk_delay: float
    divergence: float
    api_keys: frozenset[str]
    drift: float = 1.0
    fingerprints: tuple[str, ...] = ()
    faults: deque[Fault] = field(default_factory=deque)
    requests: deque[JSON] = field(default_factory=deque)
    recorded_sizes: deque[int] = field(default_factory=deque)
    recorded_bytes: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    streams_completed: int = 0
    streams_cancelled: int = 0
    # how each realtime session ended, its close code (None: no close frame), newest last
    realtime_closes: deque[int | None] = field(default_factory=lambda: deque(maxlen=100))
    responses: OrderedDict[str, JSON] = field(default_factory=OrderedDict)
    chats: OrderedDict[str, JSON] = field(default_factory=OrderedDict)  # made with `store: true`
    access_programs: JSON | None = None  # what a Responses request naming none resolves to

    @classmethod
    def from_settings(cls, settings: SimSettings) -> SimState:
        return cls(
            fingerprint=settings.fingerprint,
            latency=settings.latency,
            chunk_delay=settings.chunk_delay,
            divergence=settings.divergence,
            api_keys=frozenset(settings.api_keys),
            drift=settings.drift,
            fingerprints=settings.fingerprints,
        )

    def answer_fingerprint(self) -> str | None:
        """The fingerprint of the next answer: one of `fingerprints` at random while they are
        set (a fleet mid-rollout), else `fingerprint`."""
        if self.fingerprints:
            return random.choice(self.fingerprints)
        return self.fingerprint

    def record(self, request: JSON, size: int) -> None:
        """Keep a request for /_sim/requests: the newest _RECORD_LIMIT, and of them only as many
        as hold RECORD_BYTES of bodies in all (bodies may be up to 64 MiB each)."""
        self.requests.append(request)
        self.recorded_sizes.append(size)
        self.recorded_bytes += size
        while len(self.requests) > _RECORD_LIMIT or self.recorded_bytes > RECORD_BYTES:
            self.requests.popleft()
            self.recorded_bytes -= self.recorded_sizes.popleft()

    def forget_requests(self) -> None:
        self.requests.clear()
        self.realtime_closes.clear()
        self.recorded_sizes.clear()
        self.recorded_bytes = 0

    def count(self, path: str) -> None:
        """Count a request under its path; once MAX_COUNTED paths are counted, a new one counts
        as `other`: a client inventing paths must not grow the simulator's memory."""
        if path in self.hits or len(self.hits) < MAX_COUNTED:
            self.hits[path] += 1
        else:
            self.hits["other"] += 1

    def queue(self, fault: Fault) -> None:
        if len(self.faults) >= MAX_FAULTS:
            raise BadRequest(f"at most {MAX_FAULTS} faults may be queued", "kind")
        self.faults.append(fault)

    def next_fault(self) -> Fault | None:
        """Take one use of the oldest queued fault (FIFO), dropping it once used up."""
        if not self.faults:
            return None
        fault = self.faults[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            self.faults.popleft()
        return fault

    def keep_response(self, response: JSON) -> None:
        """Keep a response for `GET /v1/responses/{id}`, the newest few only."""
        self.responses[response["id"]] = response
        while len(self.responses) > _RESPONSES_KEPT:
            self.responses.popitem(last=False)

    def keep_chat(self, completion: JSON) -> None:
        """Keep a chat completion made with `store: true` for `/v1/chat/completions/{id}`."""
        self.chats[completion["id"]] = completion
        while len(self.chats) > _RESPONSES_KEPT:
            self.chats.popitem(last=False)


STATE = web.AppKey("sim_state", SimState)
