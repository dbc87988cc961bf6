"""The simulator's image generations (`POST /v1/images/generations`): small PNGs fixed by the
prompt and the sampling seed the sim draws for unseeded answers, so two calls differ as a real
model's do and a cache is what makes them alike. As OpenAI's: `gpt-image-*` models answer with
base64 and token usage; others with a URL by default (`response_format`: `url` or `b64_json`).
A `gpt-image-*` request with `stream: true` is answered as typed events: `partial_images` (0 to
3) earlier takes of each image, then its final one, with the usage.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import struct
import time
import zlib

import orjson
from aiohttp import web

from proxy.tools.sim.generation import Reply
from proxy.tools.sim.state import JSON, STATE, BadRequest, Said, SimState, int_param, parse_object
from proxy.tools.sim.uploads import read_form

MAX_IMAGES = 10  # OpenAI's own limit of images per request
SIDE = 8
"""Pixels on a side: the sim's images are tiny; a test of large answers asks for many."""


def images_reply(body: JSON, state: SimState, events: str = "image_generation") -> Reply:
    """`events`: what a streamed answer's events are named after (`image_edit` for edits)."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("prompt must be a non-empty string", "prompt")
    model = body.get("model", "dall-e-2")
    if not isinstance(model, str):
        raise BadRequest("model must be a string", "model")
    count = int_param(body, "n", 1, lo=1, hi=MAX_IMAGES)
    native = model.startswith("gpt-image")
    wanted = body.get("response_format", "b64_json" if native else "url")
    if wanted not in ("url", "b64_json") or (native and "response_format" in body):
        raise BadRequest(
            "response_format must be url or b64_json, and only for dall-e", "response_format"
        )
    data = []
    for _ in range(count):
        image = _png(prompt, secrets.token_bytes(8))
        if wanted == "b64_json":
            data.append({"b64_json": base64.b64encode(image).decode()})
        else:
            name = hashlib.sha256(image).hexdigest()[:24]
            data.append({"url": f"https://images.sim.invalid/{name}.png?se=1h"})
    answer: JSON = {"created": int(time.time()), "data": data}
    if native:
        words = len(prompt.split())
        answer["usage"] = {
            "input_tokens": words,
            "output_tokens": 272 * count,
            "total_tokens": words + 272 * count,
        }
    if body.get("stream") not in (None, False, "false"):
        if not native:
            raise BadRequest("Streaming is supported for gpt-image models only.", "stream")
        partial = int_param(body, "partial_images", 0, lo=0, hi=3)
        return _streamed(answer, prompt, partial, events)
    return answer


def is_image_stream(reply: Reply) -> bool:
    """Whether a reply is streamed images: typed events, sent as the Responses API's are."""
    return (
        isinstance(reply, list) and bool(reply) and str(reply[0].get("type")).startswith("image_")
    )


def _streamed(answer: JSON, prompt: str, partial: int, events: str) -> list[JSON]:
    """Each image's partial takes, then its final one; the usage with the last."""
    shown = {"created_at": answer["created"], "size": "1024x1024", "quality": "auto"}
    shown |= {"background": "auto", "output_format": "png"}
    sent: list[JSON] = []
    for image in answer["data"]:
        for index in range(partial):
            take = base64.b64encode(_png(f"{prompt} {index}", secrets.token_bytes(8))).decode()
            kind = f"{events}.partial_image"
            sent.append({"type": kind, "b64_json": take, "partial_image_index": index, **shown})
        sent.append({"type": f"{events}.completed", "b64_json": image["b64_json"], **shown})
    sent[-1]["usage"] = answer["usage"]
    return sent


def _png(prompt: str, noise: bytes) -> bytes:
    """A SIDE x SIDE grey image whose shades come from the prompt and `noise`."""
    shades = hashlib.sha256(prompt.encode() + noise).digest()
    rows = b"".join(
        b"\x00" + bytes(shades[(y * SIDE + x) % 32] for x in range(SIDE)) for y in range(SIDE)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    head = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


async def edited(request: web.Request, variation: bool) -> Said:
    """`POST /v1/images/edits` and `/v1/images/variations`: images fixed by the prompt and the
    uploaded images' bytes, and noise drawn anew; an edit may also be JSON, naming its images
    by URL or file id, as OpenAI's may."""
    raw, content_type = await request.read(), request.headers.get("Content-Type", "")
    if content_type.startswith("application/json") and not variation:
        body = parse_object(raw)
        shown = orjson.dumps(body.get("images"))
    else:
        fields, files = read_form(raw, content_type)
        images = files.get("image") or files.get("image[]") or []
        if not images or not all(images):
            raise BadRequest("image must be one or more uploaded files", "image")
        body = {**fields, **{k: int(v) for k, v in fields.items() if k in _COUNTS and v.isdigit()}}
        shown = b"".join(hashlib.sha256(image).digest() for image in images)
    if variation:
        body["prompt"] = "a variation"
    elif not isinstance(body.get("prompt"), str):
        raise BadRequest("prompt must be a non-empty string", "prompt")
    body["prompt"] = f"{body['prompt']} of {hashlib.sha256(shown).hexdigest()[:16]}"
    return images_reply(body, request.app[STATE], "image_edit")


_COUNTS = ("n", "partial_images")
"""A form's fields read as integers; other values are the sim's 400s, as OpenAI's are."""
