"""The request target a pass-through sends upstream, kept under /v1/ (or Azure's /openai/).

Servers disagree on how to read a path: some decode `%2e%2e` or `%2f` before resolving dot
segments, some treat `\\` as `/` or drop `;params`, some decode twice. So the proxy resolves the
dot segments every reader agrees on (`.` and `..`, percent-encoded or not) itself, refuses a
path that would then leave `/v1/`, and refuses a segment that hides a dot segment any reader
could find (behind an encoded slash, a backslash, a `;`, or a second encoding): such a segment
has no single meaning, so none of them is safe to forward. Everything else is forwarded still
percent-encoded, as the client wrote it.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote, unquote

from proxy.errors import InvalidPath

BASES = ("v1", "openai")
# RFC 3986 pchar, with "%" kept for escapes already there; anything else is percent-encoded.
_SAFE = "!$&'()*+,;=:@%~"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SEPARATORS = re.compile(r"[/\\]")
_DECODINGS = 3


def forward_target(raw: str) -> str:
    """The path and query to send upstream for `raw`, the client's request target as sent.
    Raises InvalidPath for a target that would leave the base it names (/v1/ or /openai/)
    or has no single reading."""
    target = raw.partition("#")[0]  # a fragment is the client's own business
    path, mark, query = target.partition("?")
    if not path.startswith("/"):
        raise InvalidPath("The request target must be a path such as /v1/files.", "path")
    raw_segments = path.split("/")[1:]
    segments = _resolved(raw_segments)
    base = raw_segments[0] if raw_segments[0] in BASES else BASES[0]
    if len(segments) < 2 or segments[0] != base:
        raise InvalidPath(f"The path {_shown(path)} leaves /{base}/.", "path")
    return "/" + "/".join(segments) + mark + query


def lenient(path: str) -> str:
    """`path` (the path of a `forward_target`) as the most lenient reader in use reads it:
    escapes decoded, `\\` as `/`, `;params` dropped, empty segments (`//`, a trailing `/`)
    merged as nginx's merge_slashes does, letters in lower case, and each segment as
    `_segment` reads it. A pass-through path that reads so as one of the proxy's own routes is
    one an upstream may answer as that route."""
    decoded = path
    for _ in range(_DECODINGS):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    segments = (_segment(part) for part in _SEPARATORS.split(decoded))
    return "/" + "/".join(segment for segment in segments if segment).lower()


def _segment(part: str) -> str:
    """A segment as some server reads it: up to a `;` (params) or a NUL (a C string's end),
    without format characters (a zero-width space), trailing dots and spaces (Windows
    servers: `completions.` is `completions`), or a `.json` suffix (suffix patterns)."""
    part = part.partition(";")[0].partition("\x00")[0]
    if not part.isascii():
        part = "".join(char for char in part if unicodedata.category(char) != "Cf")
    return part.rstrip(". ").removesuffix(".json")


def raw_query(raw: str) -> str:
    """The query of `raw`, the client's request target, exactly as sent (still
    percent-encoded): what a cached route keys and the upstream receives. A decoded query sent
    on would put spaces, `#` or raw bytes in the upstream's request line, and change what each
    parameter says (`%2525` would arrive as `%25`)."""
    return raw.partition("#")[0].partition("?")[2]


def _resolved(segments: list[str]) -> list[str]:
    """RFC 3986 remove_dot_segments over raw segments, with `%2e` read as `.`."""
    out: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if _BAD_ESCAPE.search(segment):
            raise InvalidPath("The path has a malformed percent-encoding.", "path")
        dots = unquote(segment)
        if dots == "..":
            if not out:
                raise InvalidPath("The path climbs above the root.", "path")
            out.pop()
        elif dots != ".":
            out.append(_encoded(segment))
            continue
        if index == last:
            out.append("")  # `/v1/a/..` resolves to `/v1/`, as a directory
    return out


def _encoded(segment: str) -> str:
    if _hides_dots(segment):
        raise InvalidPath(
            "A path segment hides a dot segment (behind an encoded slash, a backslash, a `;` "
            "or a second encoding).",
            "path",
        )
    try:
        return quote(segment, safe=_SAFE)
    except UnicodeEncodeError:
        raise InvalidPath("The path is not valid UTF-8.", "path") from None


def _hides_dots(segment: str) -> bool:
    """Whether some reader could find `.` or `..` in this one segment."""
    decoded = segment
    for _ in range(_DECODINGS + 1):
        for part in _SEPARATORS.split(decoded):
            if part.partition(";")[0] in (".", ".."):
                return True
        once = unquote(decoded)
        if once == decoded:
            return False
        decoded = once
    return True  # encoded more often than any reader decodes: no single reading


def _shown(path: str) -> str:
    return path if len(path) <= 200 else path[:200] + "…"
