"""Two requests the upstream reads apart must never share a key: attacks on the canonical key
with a real proxy and the sim (which, as self-hosted servers do, reads what it is given
leniently), the official SDK for the uploads and raw httpx for the bodies the SDK would never
send.

- A JSON body on a form route naming a file as the key names an upload (its digest, length,
  extension and type) shared the key of the real upload: in `shared` scope, a tenant who knew
  a public file's digest stored an answer made without the file, and every tenant uploading
  the file got it.
- A tool's credential sealed to its digest: `"1"` and `1` (which the upstream tells apart, and
  refuses one of) had one digest, so one key.
"""

from __future__ import annotations

import hashlib
import io

import httpx
import pytest

from tests.fixtures_procs import ProxyFactory, Sim

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))  # a public image the victim will edit
MP3 = b"ID3" + bytes(range(150))  # a public recording the victim will transcribe
UPLOADS = {
    "/images/edits": ("gpt-image-1", "image", "logo.png", "image/png", PNG, {"prompt": "a hat"}),
    "/audio/transcriptions": ("whisper-1", "file", "talk.mp3", "audio/mpeg", MP3, {}),
}


@pytest.mark.parametrize("path", UPLOADS)
def test_a_json_body_naming_an_uploads_digest_is_refused_and_never_answers_the_upload(
    start_proxy: ProxyFactory, sim: Sim, path: str
) -> None:
    model, field, name, kind, data, fields = UPLOADS[path]
    proxy = start_proxy("--cache-scope", "shared")
    view = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "extension": name[-4:]}
    mimic = {"model": model, **fields, field: {**view, "type": kind}}
    for listed in (False, True):  # as a field, and as an item of a list (`image[]`)
        body = {**mimic, field: [mimic[field]]} if listed else mimic
        refused = httpx.post(
            proxy.v1 + path, json=body, headers={"Authorization": "Bearer sk-attacker"}
        )
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_value", field)
    asked = [r for r in sim.requests() if r["path"] == "/v1" + path]
    assert asked == []  # nothing went upstream, so nothing was stored

    upload = httpx.post(
        proxy.v1 + path,
        data={"model": model, **fields},
        files={field: (name, io.BytesIO(data), kind)},
        headers={"Authorization": "Bearer sk-victim"},
    )
    assert upload.status_code == 200, upload.text
    assert upload.headers["X-Repro-Cache"] == "MISS"


def test_a_json_body_on_a_form_route_without_a_files_shape_is_still_served(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    """Image edits take JSON too (`images: [{"image_url": ...}]`): only the shape of an
    upload's key is refused."""
    proxy = start_proxy()
    body = {
        "model": "gpt-image-1",
        "prompt": "a hat",
        "images": [{"image_url": "data:image/png;base64,iVBORw0KGgo="}],
    }
    served = [
        httpx.post(proxy.v1 + "/images/edits", json=body, headers={"Authorization": "Bearer sk-a"})
        for _ in range(2)
    ]
    assert [r.status_code for r in served] == [200, 200], served[0].text
    assert [r.headers["X-Repro-Cache"] for r in served] == ["MISS", "HIT"]


def test_a_tool_credential_of_another_json_type_is_another_key(
    start_proxy: ProxyFactory, sim: Sim
) -> None:
    proxy = start_proxy()
    keys = []
    for value in ("12345678", 12345678, "true", True):
        tool = {"type": "mcp", "server_label": "s", "server_url": "https://mcp.example/"}
        body = {"model": "gpt-5", "input": "hi", "tools": [{**tool, "headers": {"X-Key": value}}]}
        answer = httpx.post(
            proxy.v1 + "/responses", json=body, headers={"Authorization": "Bearer sk-a"}
        )
        assert answer.headers["X-Repro-Cache"] != "HIT", value
        keys.append(answer.headers["X-Repro-Key"])
    assert len(set(keys)) == 4
