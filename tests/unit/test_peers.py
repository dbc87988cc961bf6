"""Which user owns the client end of a loopback connection, as /proc/net/tcp lists it."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from proxy.core.hosts import HostCheck, Verdict, allowed_hosts
from proxy.testing.peers import TCP_TABLE, own_host, refusal, socket_owner

HEAD = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
)


@pytest.mark.skipif(sys.byteorder != "little", reason="the table below is little-endian")
def test_the_client_end_names_its_owner_and_the_server_end_does_not_count(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(
        HEAD
        # the server's accepted end (127.0.0.1:8080 <- 127.0.0.1:40000), owned by uid 0
        + "   0: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0 "
        + "0 111\n"
        # the client's end (127.0.0.1:40000 -> 127.0.0.1:8080), owned by uid 1000
        + "   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000 "
        + "0 222\n"
        # a client end its process let go of (FIN_WAIT2, no inode): listed as root's
        + "   2: 0100007F:9C42 0100007F:1F90 05 00000000:00000000 03:00000000 00000000     0 "
        + "0 0\n"
    )
    assert socket_owner(("127.0.0.1", 40000), ("127.0.0.1", 8080), str(table)) == 1000
    assert socket_owner(("127.0.0.1", 40001), ("127.0.0.1", 8080), str(table)) == -1
    assert socket_owner(("127.0.0.1", 40002), ("127.0.0.1", 8080), str(table)) == -1
    assert socket_owner(("127.0.0.1", 40000), ("127.0.0.1", 8080), str(tmp_path / "no")) == -1


@pytest.mark.skipif(not os.path.exists(TCP_TABLE), reason="Linux's /proc/net/tcp")
def test_a_real_loopback_connection_is_owned_by_this_process_user() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        assert socket_owner(client.getsockname(), server.getsockname()) == os.geteuid()


@pytest.mark.parametrize(
    ("value", "own"),
    [
        ("127.0.0.1:8080", True),
        ("localhost:8080", True),
        ("LOCALHOST:8080", True),
        ("localhost.:8080", True),
        ("[::1]:8080", True),
        ("127.0.0.2:8080", True),
        ("localhost:8081", False),
        ("localhost", False),
        ("evil.example:8080", False),
        ("127.0.0.1.evil.example:8080", False),
        ("10.0.0.1:8080", False),
        ("localhost:18080", False),
        ("", False),
    ],
)
def test_the_session_answers_loopback_names_of_its_own_port_only(value: str, own: bool) -> None:
    assert own_host(value, 8080) is own


@pytest.mark.parametrize("value", ["127.0.0.1:8080", "localhost.:8080", "[::1]:8080"])
def test_what_the_session_admits_the_proxys_own_host_check_admits_too(value: str) -> None:
    assert own_host(value, 8080)
    assert HostCheck(allowed_hosts("127.0.0.1", ())).verdict(value) is Verdict.ALLOWED


NODE = {  # what the OpenAI JS SDK sends through Node's fetch, besides the X-Stainless-* family
    "Host": "127.0.0.1:8080",
    "Accept": "application/json",
    "Accept-Language": "*",
    "Sec-Fetch-Mode": "cors",
    "User-Agent": "OpenAI/JS 7.60.0",
}


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        ({}, False),  # a Node program: its fetch's Sec-Fetch-Mode is no browser's
        ({"Origin": "http://127.0.0.1:3000"}, True),
        ({"Sec-Fetch-Site": "same-origin"}, True),
        ({"Sec-Fetch-Dest": "empty"}, True),
    ],
)
def test_a_node_program_is_no_browser_and_a_browser_is_told_by_its_own_headers(
    extra: dict[str, str], refused: bool
) -> None:
    request = make_mocked_request("POST", "/v1/chat/completions", headers={**NODE, **extra})
    said = refusal(request, 8080, os.geteuid(), table="/nonexistent")
    assert (said == "a request a browser sent") is refused
