"""What reading the keyed request headers costs a request, in process (timeit):

    python3 -m bench.keyed_headers [--number N]

Every cached request passes its headers through `Keying.lines` before the memo is consulted.
The cases: the headers of the official OpenAI SDK (17, from a real client) plus a traceparent,
as a process sees them once it learned their spellings (nearly every request); the same with
one keyed header (a gateway's routing header), which takes the longer way and a digest; and
`Asked.of` as a whole, with the rule and with a rule that keys nothing, for scale.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.call import Asked
from proxy.core.canonical import CHAT
from proxy.core.keyed import Keying, digest

SDK = [
    ("Host", "127.0.0.1:8080"),
    ("Accept-Encoding", "gzip, deflate"),
    ("Connection", "keep-alive"),
    ("Authorization", "Bearer sk-a"),
    ("Accept", "application/json"),
    ("Content-Type", "application/json"),
    ("User-Agent", "AsyncOpenAI/Python 3.60.0"),
    ("x-stainless-lang", "python"),
    ("x-stainless-package-version", "3.60.0"),
    ("x-stainless-os", "Linux"),
    ("x-stainless-arch", "x64"),
    ("x-stainless-runtime", "CPython"),
    ("x-stainless-runtime-version", "3.11.7"),
    ("x-stainless-async", "async:asyncio"),
    ("x-stainless-retry-count", "0"),
    ("x-stainless-read-timeout", "600"),
    ("Content-Length", "57"),
    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
]
RAW = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


class KeysNothing(Keying):
    """The cost of `Asked.of` before headers were keyed, for comparison."""

    def lines(self, headers: object) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return ()


def per_call(run: Callable[[], object], number: int) -> float:
    """Nanoseconds per call, the best of five runs."""
    return min(timeit.repeat(run, number=number, repeat=5)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=200_000)
    number = parser.parse_args().number
    inert = CIMultiDictProxy(CIMultiDict(SDK))
    routed = CIMultiDictProxy(CIMultiDict([*SDK, ("x-portkey-provider", "anthropic")]))
    keying, nothing = Keying(), KeysNothing()
    keying.lines(inert)  # learns the spellings, as the first request of a process does
    lines = keying.lines(routed)
    rows = [
        ("lines(): SDK headers, all inert", per_call(lambda: keying.lines(inert), number)),
        ("lines(): one keyed header", per_call(lambda: keying.lines(routed), number)),
        ("digest() of one keyed header", per_call(lambda: digest(lines), number)),
        (
            "Asked.of: SDK headers, with the rule",
            per_call(lambda: Asked.of(CHAT, "", RAW, inert, keying=keying), number // 4),
        ),
        (
            "Asked.of: SDK headers, keying nothing",
            per_call(lambda: Asked.of(CHAT, "", RAW, inert, keying=nothing), number // 4),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, nanoseconds in rows:
        print(f"{name:<{width}}  {nanoseconds:8.0f} ns")


if __name__ == "__main__":
    main()
