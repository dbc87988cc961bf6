"""Who may use a test session's proxy: its own user, asking as a program does.

The proxy listens on 127.0.0.1, where every local user and every web page in a browser can
reach it. Another user on a shared CI runner could record answers of their choosing into the
cassette that gets committed, read what was recorded, or fail whichever test runs with a
request the cassette lacks; a web page (a cross-site request, or a name rebound to 127.0.0.1)
could do the same with the developer's browser. So each request must come from a socket the
session's user owns (on Linux, as /proc/net/tcp lists it: the check PostgreSQL's `ident`
authentication makes over TCP, since SO_PEERCRED answers for Unix sockets only), name the
proxy's own address in `Host`, and carry none of the headers only browsers send.

A token in the environment would not do: the OpenAI SDKs read no variable for an extra header,
OPENAI_API_KEY must stay the user's key for the upstream, and a token in OPENAI_BASE_URL's path
would reach every route and key. Every client the tests run (an SDK, curl, httpx) runs as the
session's user and passes this check unchanged.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from proxy.core.hosts import LOCALHOST, is_loopback, read_host
from proxy.errors import ProxyError

TCP_TABLE = "/proc/net/tcp"
BROWSER_HEADERS = ("origin", "sec-fetch-site", "sec-fetch-dest")
"""Headers browsers send and programs do not: a browser names the site and the destination of
every request it makes (`Sec-Fetch-Site`, `Sec-Fetch-Dest`), and the origin of every POST. Not
`Sec-Fetch-Mode`: Node's fetch sends it (`cors`) with every request, the OpenAI JS SDK's too."""


class NotThisSession(ProxyError):
    status = 403
    code = "not_this_session"
    type = "permission_error"
    final = True


def socket_owner(client: tuple[str, int], server: tuple[str, int], table: str = TCP_TABLE) -> int:
    """The uid owning the IPv4 socket at `client` connected to `server`; -1 when the kernel
    lists none such (no /proc, or the socket is gone). A socket its process let go of (inode
    0: a client that sent its request and exited) is listed as root's, whoever made it, so it
    counts as nobody's."""
    wanted = (_address(*client), _address(*server))
    try:
        with open(table, encoding="ascii") as handle:
            next(handle, None)
            for line in handle:
                fields = line.split()
                if len(fields) > 9 and (fields[1], fields[2]) == wanted and fields[9] != "0":
                    return int(fields[7])
    except OSError:
        return -1
    return -1


def _address(host: str, port: int) -> str:
    """`127.0.0.1:8080` as /proc/net/tcp writes it: the address as a native-endian word."""
    (word,) = struct.unpack("=I", socket.inet_aton(host))
    return f"{word:08X}:{port:04X}"


def own_host(value: str, port: int) -> bool:
    """Whether a Host value names this proxy: a loopback name or address, as the proxy's own
    check reads names (`proxy.core.hosts`), and the session's port. Stricter than that check,
    which runs after this one: a request this one admits is never refused by it."""
    host = read_host(value)
    if host is None or not value.endswith(f":{port}"):
        return False
    return host.name == LOCALHOST or (host.address and is_loopback(host.name))


def refusal(request: web.Request, port: int, uid: int, table: str = TCP_TABLE) -> str | None:
    """Why this request may not use the session's proxy, or None."""
    if any(name in request.headers for name in BROWSER_HEADERS):
        return "a request a browser sent"
    if not own_host(request.headers.get("Host", ""), port):
        return "a request for another host name"
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport else None
    own = transport.get_extra_info("sockname") if transport else None
    if not (peer and own) or not os.path.exists(table):
        return None if peer and own else "a connection already gone"
    if socket_owner(peer[:2], own[:2], table) != uid:
        return "a connection of another user"
    return None


def own_user_only(port: Callable[[], int]) -> Middleware:
    """The middleware that answers 403 `not_this_session` to whoever else asks."""
    uid = getattr(os, "geteuid", lambda: -1)()  # no uids where there is no /proc either

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        reason = refusal(request, port(), uid)
        if reason is None:
            return await handler(request)
        error = NotThisSession(
            f"This proxy serves one test session's own user only; refused {reason}."
        )
        return web.Response(
            status=error.status,
            body=error.body(),
            content_type="application/json",
            headers=error.headers,
        )

    return check
