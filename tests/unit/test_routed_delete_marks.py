"""A deletion mark names the routing its `DELETE` came by, as the id index does; an unrouted
one keeps the key marks always had, so those a store holds still count."""

from __future__ import annotations

import hashlib

import orjson

from proxy.core import responses

VARY = "ab" * 32


def test_an_unrouted_mark_keeps_its_key_and_a_routed_one_is_apart() -> None:
    old = {"id": "resp_1", "index": "deleted", "v": 1}
    unrouted = responses.deleted_key("resp_1")
    assert unrouted == hashlib.sha256(orjson.dumps(old, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert responses.deleted_key("resp_1", "", "api-version=2025-01-01") == unrouted
    routed = {
        responses.deleted_key("resp_1", VARY),
        responses.deleted_key("resp_1", "", "provider=own"),
        responses.deleted_key("resp_1", "", "provider=other"),
        responses.deleted_key("resp_1", VARY, "provider=own"),
    }
    assert len(routed) == 4 and unrouted not in routed
