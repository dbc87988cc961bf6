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


def test_the_pointer_for_every_partition_names_id_domain_and_routing_alone() -> None:
    """`everywhere_key` takes no scope nor namespace (a deletion by any key of the organization
    reaches each partition), but is apart from each partition's index and from the deletion
    mark, per domain (a chat id never finds a response's entry) and per routing."""
    everywhere = responses.everywhere_key("resp_1")
    apart = {
        everywhere,
        responses.everywhere_key("resp_1", index=responses.CHAT_INDEX),
        responses.everywhere_key("resp_2"),
        responses.everywhere_key("resp_1", VARY),
        responses.everywhere_key("resp_1", "", "provider=own"),
        responses.index_key("", "", "resp_1"),
        responses.deleted_key("resp_1"),
    }
    assert len(apart) == 7
    assert responses.everywhere_key("resp_1", "", "api-version=2025-01-01") == everywhere
