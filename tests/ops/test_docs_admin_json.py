"""The admin routes' JSON is the JSON docs/reference.md shows: the same fields, nested the same
way, from a real proxy in front of the real sim after a rotation."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures_procs import ProxyFactory, Sim

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "docs-admin-token"
JSON_BLOCK = re.compile(r"^```json\n(.*?)^```", re.MULTILINE | re.DOTALL)


def documented() -> list[Any]:
    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    start = text.index("\n## Admin routes\n")
    return [
        json.loads(block)
        for block in JSON_BLOCK.findall(text[start : text.index("\n## ", start + 1)])
    ]


def fields(value: Any, at: str = "") -> Iterator[str]:
    """Every object member's path (`models.*.rotations[].from`); list items that are not
    objects (the documents' "…") name no field."""
    if isinstance(value, dict):
        for name, inner in value.items():
            yield f"{at}.{name}"
            yield from fields(inner, f"{at}.{name}")
    elif isinstance(value, list):
        for item in value:
            yield from fields(item, f"{at}[]")


def test_the_admin_answers_have_the_documented_fields(start_proxy: ProxyFactory, sim: Sim) -> None:
    proxy = start_proxy(env={"REPRO_ADMIN_TOKEN": TOKEN})
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Name a colour."}]}
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=proxy.url, timeout=30, trust_env=False) as client:
        key = {"Authorization": "Bearer k"}
        assert client.post("/v1/chat/completions", json=ask, headers=key).status_code == 200
        sim.set_fingerprint("fp_docs_rotated")
        other = {**ask, "messages": [{"role": "user", "content": "Name a river."}]}
        for body in (other, ask):  # the first teaches the rotation, the second misses on it
            answer = client.post("/v1/chat/completions", json=body, headers=key)
            assert answer.headers["X-Repro-Cache"] == "MISS"
        live = [
            client.get("/admin/fingerprints", headers=admin).json(),
            client.get("/admin/stats", headers=admin).json(),
            client.post(
                "/admin/purge", json={"model": "gpt-4o-mini", "dry_run": True}, headers=admin
            ).json(),
            client.get("/admin/rotations", params={"examples": 1}, headers=admin).json(),
        ]
    assert live[3]["models"]["gpt-4o-mini"]["rotations"][-1]["examples"]  # a pair to compare
    shown = documented()
    assert len(shown) == len(live)
    for doc, got in zip(shown, live, strict=True):
        assert set(fields(doc)) == set(fields(got)), (doc, got)
