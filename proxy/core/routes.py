"""Which request paths are cacheable, and the OpenAI route each one stands for (pure).

Azure OpenAI serves the same calls under other paths: per deployment
(`/openai/deployments/{deployment}/chat/completions?api-version=…`), under `/openai/v1/…`, and
the Responses API at `/openai/responses`. Each is cached like its OpenAI counterpart, its
`kind`: the same defaults, seed rule and answer checks. The path itself (deployment included)
and the query (`api-version`) stay in the key, so two deployments never share an answer.

A deployment name and an `api-version` end up in cache keys and the upstream's URL: only short
names of a plain character set are accepted, and a query naming `api-version` twice (in any
letter case) is refused, since readers disagree on which copy wins.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qsl

from proxy.errors import InvalidParameter, InvalidPath

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
COMPACT = "/v1/responses/compact"
INPUT_TOKENS = "/v1/responses/input_tokens"
RESPONSES_STATE = frozenset({RESPONSES, COMPACT, INPUT_TOKENS})
"""Routes of the Responses API that may read what the upstream keeps of it (a chain's
response, a conversation, a stored prompt): what makes such a request uncacheable, or a
cached one servable only to some callers, is read alike on each (`proxy.core.uncached`)."""
MODERATIONS = "/v1/moderations"
IMAGES = "/v1/images/generations"
IMAGE_EDITS = "/v1/images/edits"
IMAGE_VARIATIONS = "/v1/images/variations"
SPEECH = "/v1/audio/speech"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
FORMS = frozenset({TRANSCRIPTIONS, TRANSLATIONS, IMAGE_EDITS, IMAGE_VARIATIONS})
"""Routes whose requests are multipart forms (an upload, `proxy.core.forms`); image edits may
also be JSON, naming their images by URL or file id."""
_FORM_ENDINGS = tuple("/" + route.removeprefix("/v1/") for route in FORMS)
DEFAULT_MODELS = {MODERATIONS: "omni-moderation-latest"}
"""The model a route's upstream answers with when the body names none: the name the request's
metrics and fingerprint history go under."""

DEPLOYMENTS = "/openai/deployments/"
AZURE_V1 = "/openai/v1/"
AZURE_RESPONSES = "/openai/responses"
DEPLOYMENT_CALLS = (
    "chat/completions",
    "completions",
    "embeddings",
    "images/generations",
    "images/edits",
    "audio/speech",
    "audio/transcriptions",
    "audio/translations",
)

_DEPLOYMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_API_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


def kind(route: str) -> str:
    """The OpenAI route `route` stands for (itself for an OpenAI route)."""
    if route.startswith(DEPLOYMENTS):
        return "/v1/" + route[len(DEPLOYMENTS) :].partition("/")[2]
    if route.startswith(AZURE_V1):
        return "/v1/" + route[len(AZURE_V1) :]
    if route == AZURE_RESPONSES:
        return RESPONSES
    return route


def pattern(route: str) -> str:
    """The route as metrics name it: a per-deployment path with `{deployment}` in place of the
    name, which is the client's to choose (a label per name would grow without limit)."""
    if not route.startswith(DEPLOYMENTS):
        return route
    return DEPLOYMENTS + "{deployment}/" + route[len(DEPLOYMENTS) :].partition("/")[2]


def deployment_of(route: str) -> str:
    """The Azure deployment a per-deployment route names, else ""."""
    if not route.startswith(DEPLOYMENTS):
        return ""
    return route[len(DEPLOYMENTS) :].partition("/")[0]


def asked_model(route: str, body: dict[str, object]) -> str:
    """The model a request is counted and tracked under: the one its body names, else its
    deployment's name, else the model its route's upstream answers with (`DEFAULT_MODELS`)."""
    named = body.get("model")
    if isinstance(named, str):
        return named
    return deployment_of(route) or DEFAULT_MODELS.get(kind(route), "")


def check_deployment(raw_segment: str) -> str:
    """A deployment name as the client sent it (still percent-encoded), refused unless plain:
    an encoded slash or dot segment would make the key name one deployment and the upstream
    another."""
    if not _DEPLOYMENT.fullmatch(raw_segment) or raw_segment.strip(".") == "":
        raise InvalidPath(
            "The deployment name must be 1 to 64 letters, digits, '.', '_' or '-'.", "deployment"
        )
    return raw_segment


def check_query(query: str) -> str:
    """An Azure route's query, refused when `api-version` is repeated or not a short plain
    version name; returned unchanged, since the upstream reads it as sent."""
    pairs = parse_qsl(query, keep_blank_values=True)
    versions = [v for k, v in pairs if k.lower() == "api-version"]  # Azure ignores the case
    if len(versions) > 1:
        raise InvalidParameter("The query names api-version more than once.", "api-version")
    if versions and not _API_VERSION.fullmatch(versions[0]):
        raise InvalidParameter(
            "api-version must be 1 to 32 letters, digits, '.', '_' or '-'.", "api-version"
        )
    return query


def takes_form(route: str) -> bool:
    """Whether a cacheable route's body is a form (`FORMS`, or Azure's shape of one): asked of
    every request, so by its ending alone."""
    return route.endswith(_FORM_ENDINGS)


def streamed(kind: str, body: dict[str, object]) -> bool:
    """Whether the answer comes as events: `stream: true`, in a form the field `true` as the
    SDK writes it, and speech asked for with `stream_format: sse`."""
    if kind == SPEECH:
        return body.get("stream_format") == "sse"
    flag = body.get("stream")
    return flag is True or (flag == "true" and kind in FORMS)


def events_of(kind: str, body: dict[str, object]) -> str:
    """The route whose events a streamed answer is read as (`proxy.core.sse`): its own, but
    for several images, whose stream ends once per image: read as chat chunks, which they are
    not, their recording is spoilt at once and every event relayed (never cached, see
    `proxy.core.uncached`), where read as images it would end at the first."""
    return CHAT if kind in IMAGE_STREAMS and body.get("n") not in (None, 1) else kind


IMAGE_STREAMS = frozenset({IMAGES, IMAGE_EDITS})
"""Routes whose streamed answers are images: partial takes, then each final image."""


def is_azure(route: str) -> bool:
    return route.startswith("/openai/")


def azure_target(path: str, raw_path: str, query: str) -> tuple[str, str]:
    """The route and query an Azure request keys with, refused unless the path was sent
    plain (no dot segment, no percent-encoding: then the key, the metrics and the upstream
    all read the one deployment the client named)."""
    if raw_path.partition("?")[0] != path:
        raise InvalidPath("An Azure OpenAI path must be sent without dot segments or escapes.")
    if path.startswith(DEPLOYMENTS):
        check_deployment(deployment_of(path))
    return path, check_query(query)


RESPONSES_LINEAGE = "@responses"
EMBEDDINGS_LINEAGE = "@embeddings"
MODERATIONS_LINEAGE = "@moderations"
IMAGES_LINEAGE = "@images"
SPEECH_LINEAGE = "@speech"
TRANSCRIPTS_LINEAGE = "@transcripts"
COMPACTIONS_LINEAGE = "@compactions"
COUNTS_LINEAGE = "@input_tokens"
_APART = {
    RESPONSES: RESPONSES_LINEAGE,
    COMPACT: COMPACTIONS_LINEAGE,
    INPUT_TOKENS: COUNTS_LINEAGE,
    EMBEDDINGS: EMBEDDINGS_LINEAGE,
    MODERATIONS: MODERATIONS_LINEAGE,
    IMAGES: IMAGES_LINEAGE,
    IMAGE_EDITS: IMAGES_LINEAGE,
    IMAGE_VARIATIONS: IMAGES_LINEAGE,
    SPEECH: SPEECH_LINEAGE,
    TRANSCRIPTIONS: TRANSCRIPTS_LINEAGE,
    TRANSLATIONS: TRANSCRIPTS_LINEAGE,
}
OWN_NAME = "@"
"""Ends the lineage of a chat or completions model whose own name ends as another route's
lineage does (`x@embeddings`), or a fleet's (`FLEET`), or in this mark: the name is the
client's to choose, and tracked as is, a chat model `x@embeddings` would share embeddings model
`x`'s fingerprint history, each one's answers a rotation of the other's, its state and
rotations shown as the other's. Marked so only such names move: every lineage already in a
store, and `MODEL@embeddings`, stay put."""
_MARKED = (*_APART.values(), OWN_NAME)

FLEET = "@fleet-"
"""Ends the lineage of a model on a request that a keyed header or query parameter routes,
followed by `FLEET_DIGITS` hex digits of `fleet`."""
FLEET_DIGITS = 16
_FLEET = re.compile(re.escape(FLEET) + f"[0-9a-f]{{{FLEET_DIGITS}}}\\Z")


def fleet(vary: str, query: str) -> str:
    """What a request routed by keyed headers (`vary`, their digest) or keyed query parameters
    (but `api-version`, which names the API, not who answers) adds to its lineage; "" for none.

    A gateway's provider header, or a query parameter it reads, sends a request to another
    fleet, which answers with a fingerprint of its own: tracked under the model's name, each
    such answer would rotate the model's current fingerprint, and make every tenant's stored
    answers of the model misses. A digest, so that no header or query value reaches a store's
    names, a metric label or a log; 64 bits, so that no two routings a store holds share one.
    It depends on the request alone (no process's secret), as a cassette loaded elsewhere
    must name the same lineages; `vary` is already a SHA-256 of the header values."""
    if not vary and not query:
        return ""
    routed = routing(query)
    if not vary and not routed:
        return ""
    out = bytearray(b"repro-proxy fleet\0")
    for part in (vary, *(item for pair in routed for item in pair)):
        raw = part.encode("utf-8", "surrogateescape")
        out += b"%d:%s," % (len(raw), raw)
    return FLEET + hashlib.sha256(out).hexdigest()[:FLEET_DIGITS]


def routing(query: str) -> list[tuple[str, str]]:
    """The parameters of a keyed query that may say who answers (a gateway's `?provider=`):
    every one but `api-version`, which names the API."""
    if not query:
        return []
    pairs = parse_qsl(query, keep_blank_values=True)
    return [(name, value) for name, value in pairs if name.lower() != "api-version"]


def lineage(model: str, route: str, routed: str = "") -> str:
    """The name a model's fingerprints are tracked under on `route`. The Responses API
    reports no fingerprint where chat reports one for the same model, nor do embeddings
    (whose model a local server or gateway may also chat with): tracked together, each answer
    of one would look like a rotation away from the other's, and under `follow` the two would
    evict each other's answers, one tenant's embeddings another's chats. So each keeps a
    history of its own, and no model's lineage is another's (`OWN_NAME`).
    On a per-deployment route the deployment answers, not the body's `model` (Azure does not
    read it): tracked under that name, any caller could make one deployment's fingerprint
    another's current one, and every stored answer of that one a miss. Likewise a request
    that keyed headers or query parameters route (`routed`, its `fleet`) keeps a history of
    its routing's."""
    model = deployment_of(route) or model
    suffix = _APART.get(kind(route))
    if suffix is not None:
        return model + suffix + routed
    marked = model.endswith(_MARKED) or _FLEET.search(model) is not None
    return (model + OWN_NAME if marked else model) + routed


def routed(lineage: str) -> bool:
    """Whether a lineage is a routed request's (`fleet`): the probe, which sends no client's
    headers, cannot ask the fleet that answers it. Asked of every served request: the substring
    test spares nearly all of them the pattern's."""
    return FLEET in lineage and _FLEET.search(lineage) is not None


def lineage_of(model: str, route: str, vary: str, query: str) -> str:
    """`lineage` of a request, or of the stored answer to one, by its keyed headers' digest
    (`vary`) and keyed query."""
    return lineage(model, route, fleet(vary, query))


def model_of(lineage: str) -> str:
    """The model a lineage tracks (`lineage` without its fleet, route's suffix or `OWN_NAME`)."""
    lineage = _FLEET.sub("", lineage)
    for suffix in _MARKED:
        if lineage.endswith(suffix):
            return lineage.removesuffix(suffix)
    return lineage
