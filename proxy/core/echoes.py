"""Whether an upstream's answer holds a credential of the request it answers.

An upstream that echoes what it received (an error quoting the request, a debugging gateway
that reflects headers into a JSON field, a tool's token reflected into the text) would have
the caller's key stored: in `shared` scope served to every tenant sending the same request,
and written into cassettes, which users commit. Such an answer is relayed as sent, never
stored. Pure: the server asks this on a miss only, once it has an answer to store.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Iterable, Iterator
from urllib.parse import unquote_plus, urlsplit

import orjson

from proxy.core.credentials import Credentials
from proxy.core.sealing import SIGNING, sealed, sealed_values

SHORTEST = 8
"""Bytes a secret must have to be looked for: a shorter value (a test key `sk-a`, a password
`1234`) turns up in ordinary text, so every answer mentioning it would go unstored, and a
credential that short is guessed sooner than leaked."""

RUN = 16
"""Bytes a run of a secret's unescaped characters must have to be looked for alone: 96 bits
of a random token, and longer than nearly any word, so that a value such as
`application/json` (a tool's header, sealed as any) is not found in every answer saying
`application`."""

_PLAIN = re.compile(rb"[A-Za-z0-9_.~-]+")
"""Characters no JSON writer escapes (RFC 8259 needs none of them; PHP escapes `/`, Gson `=`
and `'`, Go `<>&`, others `+` or every non-ASCII one): a token's usual alphabet but `+/=`."""


def looked_for(credentials: Credentials, body: bytes | None = None) -> tuple[bytes, ...]:
    """`needles` of the request's credentials, and of its tools' in `body` (given only when
    the call seals some, `Call.kept`). A tenant's credentials repeat from request to request:
    their needles are worked out once (`_needles_of`)."""
    found = _needles_of(credentials)
    return found if body is None else found + needles(secrets_of((), body))


@functools.lru_cache(maxsize=1024)
def _needles_of(credentials: Credentials) -> tuple[bytes, ...]:
    return needles(secrets_of(credentials))


def secrets_of(credentials: Credentials, body: bytes | None = None) -> list[bytes]:
    """The secret part of every credential a request carries, and of the credentials its
    tools carry in `body` (given only when the call seals some, `Call.kept`), each of at least
    SHORTEST bytes: a header's last word (an `Authorization` token without its scheme, an
    api-key as sent), a Basic credential's password besides its base64, each value of a
    Cookie, a query parameter's value as written and decoded."""
    found: list[str] = []
    for name, value in credentials:
        found.extend(_parts(name, value))
    if body is not None:
        found.extend(_in_tools(body))
    secrets = (part.encode("utf-8", "surrogateescape") for part in found)
    return list(dict.fromkeys(secret for secret in secrets if len(secret) >= SHORTEST))


def _parts(name: str, value: str) -> Iterator[str]:
    if name.startswith("?"):  # a query parameter, as written in the URL
        yield value
        yield unquote_plus(value)
        return
    if name == "cookie":
        for pair in value.split(";"):
            yield pair.partition("=")[2].strip()
        return
    words = value.split()
    if not words:
        return
    token = words[-1]
    yield token
    if name == "authorization" and len(words) == 2 and words[0].lower() == "basic":
        yield from _basic_password(token)


def _basic_password(token: str) -> Iterator[str]:
    """A Basic credential's password: an echo may decode what it quotes."""
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return
    yield decoded.partition(":")[2]


def _in_tools(body: bytes) -> Iterator[str]:
    """What `proxy.core.sealing.sealed` hides of a body's tools (`sealed_values`): of a URL, its
    password and all past its host (a key in the path, the query); of anything else, the
    value as sent and its last word (a header's token without its scheme)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    hidden = sealed(parsed) if isinstance(parsed, dict) else None
    for value in () if hidden is None else sealed_values(parsed, hidden):
        in_url = list(_in_url(value))
        yield from in_url or (value, *value.split()[-1:])


def _in_url(url: str) -> Iterator[str]:
    """A URL's password, all past its host, and each signing parameter's value (SIGNING) as
    written and decoded, which an answer may quote alone; nothing of a string that names no
    host."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return
    host = parts.netloc.rpartition("@")[2]
    if host:
        yield password or ""
        yield url.partition(host)[2]
        for name, _, value in (piece.partition("=") for piece in re.split("[&;]", parts.query)):
            if any(part in name.lower() for part in SIGNING):
                yield from (value, unquote_plus(value))


def needles(secrets: Iterable[bytes]) -> tuple[bytes, ...]:
    """What to look for in an answer: each secret and, for one a JSON writer may escape (it
    holds a character outside _PLAIN: `/`, `+`, `=`, `"`, non-ASCII), its escaped spellings
    (JSON's own `\\"` and `\\\\`, with `\\/` or without, every such character as `\\u00xx` in
    either case) and its longest run of characters none escapes when that run is RUN bytes or
    more: it then still means the secret, however a writer mixed its escapes."""
    out: list[bytes] = []
    for secret in secrets:
        out.append(secret)
        if _PLAIN.fullmatch(secret):
            continue
        out.extend(_escaped(secret))
        run = max(_PLAIN.findall(secret), key=len, default=b"")
        if len(run) >= RUN:
            out.append(run)
    return tuple(dict.fromkeys(out))


def _escaped(secret: bytes) -> Iterator[bytes]:
    """JSON's own escapes, non-ASCII kept (orjson, Go) or as `\\u00e9` (Python, PHP), each
    with `/` as `\\/` or not (PHP); then every ASCII character a writer may escape as
    `\\u00xx`, lower case or upper, non-ASCII kept (as Gson does `=`)."""
    text = secret.decode("utf-8", "replace")
    for spelled in (orjson.dumps(text)[1:-1], json.dumps(text)[1:-1].encode()):
        yield spelled
        yield spelled.replace(b"/", b"\\/")
    for table in _AS_HEX:
        yield text.translate(table).encode()


_AS_HEX = tuple(
    {code: form % code for code in range(128) if not _PLAIN.fullmatch(bytes([code]))}
    for form in ("\\u%04x", "\\u%04X")
)
"""Each ASCII character a writer may escape, as `\\u00xx` in lower and upper case."""


def echoed(answer: bytes, looked_for: Iterable[bytes]) -> bool:
    """Whether `answer` holds any of `looked_for` (see `needles`)."""
    return any(needle in answer for needle in looked_for)


def echoed_in_kept(
    looked_for: Iterable[bytes], body: bytes, content_type: str, request_id: str
) -> bool:
    """Whether anything of an answer that is kept and served again holds one of `looked_for`:
    its body, and the headers kept with it (its Content-Type, and its request id, which may be
    any short token and so a key's very shape)."""
    needles = tuple(looked_for)
    kept = (body, content_type.encode("utf-8", "surrogateescape"), request_id.encode())
    return any(echoed(part, needles) for part in kept)
