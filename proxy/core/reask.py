"""What a drift check may send the upstream again (pure).

`--verify-rate` re-asks a HIT's request to compare the answers, and nobody sees the fresh one,
so the re-ask must leave nothing behind upstream that the request's owner would find there:
- an answer the upstream keeps is asked not to be kept. A Responses request keeps its answer
  unless it says `store: false`, and a chat completion keeps it with `store: true`; re-asked
  as it was, each check would add a response or a stored completion, under the owner's
  account, with an id nobody knows, to what the owner lists, pays storage for, or exports.
  Keeping changes where the answer is kept, not what it says: the re-ask says `store: false`
  (and, on chat, sends no `metadata`, which tags only what is kept);
- a request whose model may call a remote MCP server (a Responses `mcp` tool, among its
  `tools` or an `additional_tools` input item) is never re-asked: the server's tools act on
  the world (send, book, write), and an approval the request carries would be carried out
  again.
"""

from __future__ import annotations

import orjson

from proxy.core import routes
from proxy.core.uncached import tools_of


def reasked(kind: str, body: bytes) -> bytes | None:
    """The body a drift check sends in place of `body` (the one the HIT was keyed by, as sent
    upstream), or None for a request it must not send again."""
    if kind not in (routes.CHAT, routes.RESPONSES):
        return body
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # what cannot be read cannot be told safe
    if not isinstance(request, dict):
        return None
    if kind == routes.RESPONSES:
        if _calls_mcp(request):
            return None
        if request.get("store") is False:
            return body
        return orjson.dumps({**request, "store": False})
    if request.get("store") is not True:
        return body
    return orjson.dumps({k: v for k, v in request.items() if k not in ("store", "metadata")})


def _calls_mcp(request: dict[str, object]) -> bool:
    return any(
        isinstance(tool, dict) and tool.get("type") == "mcp"
        for tools in tools_of(request)
        if isinstance(tools, list)
        for tool in tools
    )
