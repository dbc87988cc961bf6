"""`repro-proxy check`: measure how reproducible an upstream's answers really are.

A seed is best effort: the same request with the same seed can still come back different. The
audit runs the classic experiment: the same chat request N times without a seed and N times with a
fixed seed and temperature 0, each with `Cache-Control: no-cache` so that a repro-proxy in between
asks the upstream every time, then compares the answers of each arm (distinct answers, agreement,
fingerprints, tokens, mean pairwise distance).

    plan.py     the arms and their requests (pure)
    tally.py    answers parsed, counted and reported (pure, with `proxy.core.textdistance`)
    network.py  the requests, through an injected httpx client
    view.py     progress bars and the report table (rich)
    cli.py      the command's flags, and running it
"""

from __future__ import annotations

from proxy.tools.audit.cli import add_arguments, main

__all__ = ["add_arguments", "main"]
