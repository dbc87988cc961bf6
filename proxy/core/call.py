"""One cacheable request decided from its facts alone, before any I/O (pure).

`Asked` is what a request says (route, body, credentials, namespace, Cache-Control); `Call` is
everything the proxy decides about it: the canonical body the upstream receives, the seed, the
cache key and the plan. Deciding needs only the rules, the caller's tenant (an HMAC the server
computes) and the request, so it can run anywhere, in a child process included.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from multidict import CIMultiDictProxy

from proxy.core import canonical, forms, policy, responses, routes, uncached
from proxy.core.credentials import STANDARD, Credentials, in_query, of_request, split_query
from proxy.core.entry import (
    AUDIO,
    BASE64,
    COMPACTED,
    COUNTED,
    FLOATS,
    IMAGE_BYTES,
    MESSAGES,
    TEXTS,
    TRANSCRIPT,
    VERDICTS,
    Entry,
    answer_of,
    fingerprint_of,
    is_audio,
    transcript_of,
    usage_of,
)
from proxy.core.keyed import HeaderLines, Keying, vary_of
from proxy.core.owned import entitled, tenants_own
from proxy.core.policy import CacheMode, CacheScope, Enforce, Outcome, Plan
from proxy.core.sealing import sealed
from proxy.errors import InvalidHeader, InvalidParameter, InvalidType

JSON = "application/json"


class Rules(Protocol):
    """The settings that decide a call (the server's Settings has them all)."""

    @property
    def enforce(self) -> Enforce: ...
    @property
    def default_seed(self) -> int: ...
    @property
    def cache_scope(self) -> CacheScope: ...
    @property
    def cache_mode(self) -> CacheMode: ...
    @property
    def stale_if_error(self) -> int: ...


class Call(NamedTuple):
    """One cacheable request, fully decided before any I/O."""

    route: str  # the request path (an Azure one names its deployment)
    kind: str  # the OpenAI route it stands for: its defaults, seed rule and answer shape
    tenant: str  # the HMAC of the caller's credentials (or anonymous), whatever the scope
    namespace: str
    query: str  # as sent, credential parameters included: what the upstream receives
    keyed_query: str  # without credential parameters: what the key names and a store keeps
    model: str
    lineage: str  # the name the model's fingerprints are tracked under (routes.lineage): by
    # model and route family, and by what else routed the request (keyed headers and query)
    key: str
    body: bytes  # exactly what the upstream receives
    seed: int | None
    seed_source: str | None
    plan: Plan
    max_age: int | None
    stale_if_error: int  # seconds; 0 = never serve stale
    stream: bool
    vary: str = ""  # the digest of `headers` (`keyed.vary_of`) the key names, "" for none
    headers: HeaderLines = ()  # the keyed request headers, sent upstream as the client sent them
    chained: str | None = None  # the response a Responses request continues (`chained_on`)
    upstream_keeps: bool = False  # a chat completion the upstream keeps (`store: true`): by its id
    shape: str | None = None  # what a whole answer's items must hold to be stored (`shape_of`)
    kept: bytes | None = None  # what a store keeps of `body` when not it: credentials `sealed`
    shared: bool = False  # keyed in the shared partition: every tenant the upstream accepts reads
    credentials: Credentials = ()  # the request's (`Asked.credentials`): no stored answer holds one
    content_type: str = JSON  # of `body`: a form's (`proxy.core.forms`) names its boundary
    events: str = routes.CHAT  # the route a streamed answer's events are read as (`events_of`)

    @property
    def counted(self) -> str:
        """The model the metrics count the request under: on a per-deployment route its
        deployment, which answers it (Azure does not read the body's `model`: a 2xx there proves
        no name of the caller's, and such names would use up the label slots), as `lineage`."""
        return routes.deployment_of(self.route) or self.model

    @property
    def request(self) -> bytes:
        """The body as a store, an export or a report holds it: what the key names."""
        return self.body if self.kept is None else self.kept

    @property
    def shareable(self) -> bytes:
        """The body that may go upstream with another caller's credentials (the key check's
        test of an open upstream): as a store keeps it, a tool's credentials sealed; a form
        as sent, since a store keeps only its file's digest."""
        return self.body if self.content_type != JSON else self.request

    @property
    def target(self) -> str:
        """The path and query the upstream receives: the ones the key names (so that no spelling
        of the path, `%63ompletions`, reaches a resource the key does not name), and the
        query's credential parameters, which partition by tenant instead."""
        return self.route + "?" + self.query if self.query else self.route


class Asked(NamedTuple):
    """Everything of a request that `prepare` reads, and so the key of its memo."""

    route: str
    query: str
    raw: bytes
    credentials: Credentials  # every credential header: the tenant depends on each
    namespace: str
    cache_control: tuple[str, ...]
    headers: HeaderLines = ()  # the keyed ones (`proxy.core.keyed`)
    content_type: str = ""  # read only on a route that takes a form (`routes.takes_form`)

    @property
    def size(self) -> int:
        """Bytes these facts hold, for a memo that keeps them: a request may carry 128 headers
        of 8 KiB, credentials or keyed ones, beside its body."""
        held = len(self.route) + len(self.query) + len(self.raw) + len(self.namespace)
        held += len(self.content_type)
        for lines in (self.credentials, self.headers):
            held += sum(len(name) + len(value) for name, value in lines)
        return held + sum(map(len, self.cache_control))

    @classmethod
    def of(
        cls,
        route: str,
        query: str,
        raw: bytes,
        headers: CIMultiDictProxy[str],
        carriers: tuple[str, ...] = STANDARD,
        keying: Keying | None = None,
    ) -> Asked:
        """The request facts; `carriers` names the credential-bearing headers, `keying` says
        which others the key covers (by default, the built-in rule in `key` scope)."""
        keying = Keying(carriers=carriers) if keying is None else keying
        return cls(
            route,
            query,
            raw,
            of_request(headers, query, carriers),
            control(headers, NAMESPACE),
            tuple(headers.getall("Cache-Control", ())),
            keying.lines(headers),
            headers.get("Content-Type", "") if routes.takes_form(route) else "",
        )


def prepare_with(settings: Rules, tenant: str, asked: Asked) -> Call:
    """Everything about a request decided from its facts, before any I/O (pure)."""
    route, raw = asked.route, asked.raw
    kind = routes.kind(route)
    upload = kind in routes.FORMS and not forms.is_json(asked.content_type)
    form = forms.read(raw, asked.content_type) if upload else None
    if form is not None:
        body = form.keyed
    else:
        body = canonical.parse_body(raw)
        if kind in routes.FORMS:
            forms.check_json(body)
        checked_flags(body, kind)
        if settings.enforce is policy.Enforce.OFF:
            canonical.reject_ambiguous(raw)
    seeded = policy.enforce(body, route, settings.enforce, settings.default_seed)
    shared = settings.cache_scope is policy.CacheScope.SHARED
    scope = policy.SHARED if shared and not _tenants_own(settings, raw, body) else tenant
    namespace = checked_namespace(asked.namespace)
    directives = policy.parse_cache_control(asked.cache_control)
    model = routes.asked_model(route, body)
    keyed_query, in_query = split_query(asked.query)  # unambiguous: `of_request` checked it
    vary = vary_of(asked.headers, in_query, shared)
    lineage = routes.lineage_of(model, route, vary, keyed_query)
    hidden = sealed(seeded.body)
    keyed = seeded.body if hidden is None else hidden
    key, respelled = canonical.keyed(route, scope, namespace, keyed, keyed_query, vary)
    sent = raw if settings.enforce is policy.Enforce.OFF else respelled
    kept = None if hidden is None else respelled
    if hidden is not None and settings.enforce is not policy.Enforce.OFF:
        sent = canonical.dumps(seeded.body)
    if form is not None:  # the upload as the proxy wrote it; a store keeps what the key names
        sent, kept = form.body, respelled
    return Call(
        route=route,
        kind=kind,
        tenant=tenant,
        namespace=namespace,
        query=asked.query,
        keyed_query=keyed_query,
        model=model,
        lineage=lineage,
        key=key,
        body=sent,
        seed=seeded.seed,
        seed_source=seeded.source,
        plan=uncached.plan(settings.cache_mode, directives, kind, body, lineage),
        max_age=directives.max_age,
        stale_if_error=policy.stale_window(settings.stale_if_error, directives.stale_if_error),
        stream=routes.streamed(kind, body),
        events=routes.events_of(kind, body),
        vary=vary,
        headers=asked.headers,
        chained=responses.chained_on(body) if kind in routes.RESPONSES_STATE else None,
        upstream_keeps=kind == routes.CHAT and body.get("store") is True,
        shape=shape_of(kind, body),
        kept=kept,
        shared=scope == policy.SHARED,
        credentials=asked.credentials,
        content_type=JSON if form is None else form.content_type,
    )


def _tenants_own(settings: Rules, raw: bytes, body: dict[str, object]) -> bool:
    """Whether a request's answer is its tenant's alone even in `shared` scope: one made of
    its account's own files, prompts or stored items, of what credentials in its body fetched,
    or under an access program its organization holds (proxy.core.owned). Not in replay mode,
    which reads only the cassette its operator loaded, keyed in the shared partition."""
    return settings.cache_mode is not CacheMode.REPLAY and tenants_own(raw, body)


def shape_of(kind: str, body: dict[str, object]) -> str | None:
    """What the items of an answer on route `kind` must hold (`entry.has_shape`): an embeddings
    answer's vectors as base64 when the request asks for it (the SDK's default), else as lists
    of numbers. None on the Responses API, whose answer `is_answer` reads whole."""
    if kind == routes.EMBEDDINGS:
        return BASE64 if body.get("encoding_format") == "base64" else FLOATS
    return _SHAPES.get(kind)


_SHAPES = {
    routes.CHAT: MESSAGES,
    routes.COMPLETIONS: TEXTS,
    routes.MODERATIONS: VERDICTS,
    routes.IMAGES: IMAGE_BYTES,
    routes.SPEECH: AUDIO,
    routes.TRANSCRIPTIONS: TRANSCRIPT,
    routes.TRANSLATIONS: TRANSCRIPT,
    routes.IMAGE_EDITS: IMAGE_BYTES,
    routes.IMAGE_VARIATIONS: IMAGE_BYTES,
    routes.COMPACT: COMPACTED,
    routes.INPUT_TOKENS: COUNTED,
}


def of_entry(entry: Entry, key: str, tenant: str, query: str, headers: HeaderLines) -> Call:
    """The request that made the stored `entry` (under `key`), as `tenant` would send it again
    with the credentials of `query` and the keyed `headers`: what serving that answer by
    another way (a fetch by id) must be checked for, as a HIT of that request is. The key
    check vouches for a route, keyed query, keyed headers and model, all of them the entry's."""
    credentials = in_query(split_query(query)[1])
    return Call(
        route=entry.route,
        kind=routes.kind(entry.route),
        tenant=tenant,
        namespace=entry.namespace,
        query="&".join(part for part in (entry.query, credentials) if part),
        keyed_query=entry.query,
        model=entry.model,
        lineage=routes.lineage_of(entry.model, entry.route, entry.vary, entry.query),
        key=key,
        body=entry.request,
        seed=entry.seed,
        seed_source=entry.seed_source,
        plan=policy.plan(policy.CacheMode.READWRITE, policy.Directives(only_if_cached=True)),
        max_age=None,
        stale_if_error=0,
        stream=entry.stream,
        vary=entry.vary,
        headers=headers,
        events=routes.kind(entry.route),
    )


FLAGS = ("stream",)
RESPONSES_FLAGS = (*FLAGS, "background")
"""Body fields the proxy acts on itself (a stream is relayed and recorded, a background job is
never cached): booleans, or null, as the API defines them. Any other type is refused, since
an upstream that reads `1` or `"true"` as true would answer a stream, or queue a job, where
the proxy expects one whole answer and stores it."""

_JSON_TYPES = {str: "a string", int: "an integer", float: "a decimal number"}


def checked_flags(body: dict[str, object], kind: str) -> None:
    for name in RESPONSES_FLAGS if kind == routes.RESPONSES else FLAGS:
        value = body.get(name)
        if value is not None and not isinstance(value, bool):
            got = _JSON_TYPES.get(
                type(value), "an object" if isinstance(value, dict) else "an array"
            )
            raise InvalidType(
                f"Invalid type for '{name}': expected a boolean, but got {got} instead.", name
            )


MAX_NAMESPACE = 256
NAMESPACE = "X-Repro-Namespace"


def control(headers: CIMultiDictProxy[str], name: str) -> str:
    """The value of the proxy's own request header `name` ("" when absent). Lines of it that
    disagree are refused, as nginx refuses two Hosts: a reader in front of the proxy (a
    gateway's allow-list, a log) may take the other one than the proxy's first, and a request
    would be answered from a partition no one checked it for."""
    values = headers.getall(name, ())
    if len(values) > 1 and values.count(values[0]) != len(values):
        raise InvalidHeader(
            f"The header {name} is given more than once, with different values.", name
        )
    return values[0] if values else ""


def checked_namespace(value: str) -> str:
    """A namespace names a partition and labels entries: printable UTF-8 of bounded size."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidParameter("X-Repro-Namespace must be UTF-8.", "X-Repro-Namespace") from None
    if len(value) > MAX_NAMESPACE:
        raise InvalidParameter(
            f"X-Repro-Namespace is longer than {MAX_NAMESPACE} characters.", "X-Repro-Namespace"
        )
    return value


def repro_headers(call: Call, outcome: Outcome, fingerprint: str | None) -> dict[str, str]:
    headers = {"X-Repro-Cache": outcome.value, "X-Repro-Key": call.key}
    if call.seed is not None:
        headers["X-Repro-Seed"] = str(call.seed)
    if call.seed_source is not None:
        headers["X-Repro-Seed-Source"] = call.seed_source
    if fingerprint is not None:
        headers["X-Repro-Fingerprint"] = fingerprint
    return headers


Facts = tuple[str, int, int, str | None, bool]
"""What the proxy reads of a whole answer: its fingerprint, prompt and completion tokens, a
Responses answer's id, and whether it was made under an access program (`owned.entitled`)."""


def facts_of(
    body: bytes, is_response: bool, shape: str | None = None, content_type: str = ""
) -> Facts | None:
    """What the proxy reads of a 200's body; None for one that is no answer (an error some
    gateways send with a 200), or one whose items lack what the route's client reads of them
    (`shape`, `Call.shape`). Plain data in and out, so that a large body can be read in a
    child process and only its facts come back (see `proxy.server.caching.read_facts`).
    Speech is sound, not JSON: its label (`content_type`) says whether it is an answer, and
    it names no fingerprint nor usage."""
    if shape == AUDIO:
        return ("none", 0, 0, None, False) if is_audio(body, content_type) else None
    if shape == TRANSCRIPT:
        said = transcript_of(body, content_type)
        return None if said is None else ("none", *usage_of(said), None, False)
    parsed = answer_of(body, is_response, shape)
    if parsed is None:
        return None
    prompt, completion = usage_of(parsed)
    found_by = responses.id_of(parsed) if is_response else None  # only responses are fetched
    return fingerprint_of(parsed, shape), prompt, completion, found_by, entitled(parsed)


class Answer(NamedTuple):
    """A complete upstream answer, as it is about to be stored."""

    body: bytes
    content_type: str
    fingerprint: str
    prompt_tokens: int
    completion_tokens: int
    stream: bool
    response_id: str | None = None  # a Responses API answer's id, to find it by id later
    entitled: bool = False  # made under an access program its organization holds (`owned`)
    request_id: str = ""  # the upstream's `x-request-id`, if `entry.is_request_id` accepts it
