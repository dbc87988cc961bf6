"""Which requests the proxy takes for a WebSocket handshake: only a GET asking to upgrade to
`websocket`, however the client spells or lists it; any other Upgrade is a plain pass-through."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.server.websocket import asked


@pytest.mark.parametrize(
    ("method", "upgrade", "expected"),
    [
        ("GET", ["websocket"], True),
        ("GET", ["WebSocket"], True),
        ("GET", ["h2c, websocket"], True),
        ("GET", ["h2c", " websocket "], True),
        ("GET", ["h2c"], False),
        ("GET", ["websockets"], False),
        ("GET", [], False),
        ("POST", ["websocket"], False),
    ],
)
def test_a_websocket_handshake_is_a_get_upgrading_to_websocket(
    method: str, upgrade: list[str], expected: bool
) -> None:
    headers = CIMultiDict(("Upgrade", value) for value in upgrade)
    assert asked(make_mocked_request(method, "/v1/realtime", headers=headers)) is expected
