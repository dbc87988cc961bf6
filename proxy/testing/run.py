"""`repro-proxy run -- COMMAND`: the pytest plugin's session for a test suite of any language
(Vitest, Jest, go test, a shell script), around one command.

The command runs with `OPENAI_BASE_URL` pointing at a proxy of this process (and a placeholder
`OPENAI_API_KEY` when replaying without one), which the official SDKs read; the record modes
and the cassette are the plugin's (`proxy.testing.session`). A command cannot be failed test by
test, so what the plugin fails a test for is said on standard error as it happens, and a command
that exits 0 all the same, having caught the SDK's error, exits 1 here: a replay that missed is
not a pass.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from proxy.testing import DEFAULT_CASSETTE, DEFAULT_UPSTREAM, RECORD_MODES

if TYPE_CHECKING:
    from proxy.testing.session import LLMSession

POLL_SECONDS = 0.2
"""How often what the proxy was told is reported while the command runs."""
NOT_RUN = 127  # as a shell's exit status for a command it cannot find or run
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals passed on to the command: CI runners stop a job with SIGTERM (then SIGKILL), a
terminal with SIGINT; the command ends its own way, and the cassette is written after it."""


def add_command(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run a test command (any language) against a cassette: record once, then replay",
        description="Run COMMAND with OPENAI_BASE_URL pointing at a proxy that replays the "
        "cassette, or records it (--record-mode), as the pytest plugin does; exits with "
        "COMMAND's status, or 1 where COMMAND exited 0 after a request missed the cassette.",
    )
    run.add_argument(
        "--cassette",
        default=DEFAULT_CASSETTE,
        metavar="PATH",
        help=f"the cassette (default {DEFAULT_CASSETTE})",
    )
    run.add_argument(
        "--record-mode",
        choices=RECORD_MODES,
        default="none",
        help="none (default): replay only; once: record if the cassette does not exist, else "
        "replay; new_episodes: replay what is recorded, record the rest; all: record anew",
    )
    run.add_argument(
        "--upstream",
        default=None,
        metavar="URL",
        help="where recordings come from, with its /v1 (default: REPRO_UPSTREAM, else "
        f"{DEFAULT_UPSTREAM})",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS ...]")


def main(args: argparse.Namespace) -> int:
    from proxy.config import SettingError
    from proxy.store.cassette import CassetteError
    from proxy.testing.local import ProxyFailed
    from proxy.testing.session import LLMSession, RecordMode
    from proxy.tools.remote import cleartext_warning

    argv = list(args.argv[1:] if args.argv[:1] == ["--"] else args.argv)
    if not argv:
        print("repro-proxy run: give the command to run after --", file=sys.stderr)
        return 2
    path = os.path.abspath(args.cassette)
    upstream = args.upstream or os.environ.get("REPRO_UPSTREAM") or DEFAULT_UPSTREAM
    mode = RecordMode(args.record_mode)
    llm = LLMSession(mode, path, upstream, os.path.isfile(path), options="--")
    warning = cleartext_warning(llm.upstream, "the API key") if llm.records else None
    if warning is not None:
        print(f"repro-proxy: {warning}", file=sys.stderr)
    environ = dict(os.environ)
    try:
        url = llm.start(environ)
    except (CassetteError, OSError) as exc:
        print(f"repro-proxy: {args.cassette}: {exc}", file=sys.stderr)
        return 2
    except (SettingError, ProxyFailed) as exc:
        print(f"repro-proxy: {exc}", file=sys.stderr)
        return 2
    doing = f"recording to {args.cassette}" if llm.records else f"replaying {args.cassette}"
    print(f"repro-proxy: {doing} at {url} (OPENAI_BASE_URL)", file=sys.stderr)
    status, missed = _run(argv, environ, llm)
    try:
        lines = llm.stop(environ)
    except ProxyFailed as exc:
        print(f"repro-proxy: {exc}", file=sys.stderr)
        return status or 2
    if llm.records:
        written = _written(llm, lines)
        if not written:
            return status or 2
    if missed and status == 0:
        print(
            "repro-proxy: the command exited 0, but requests were not answered from the "
            "cassette (above): exit 1",
            file=sys.stderr,
        )
        return 1
    return status


def _run(argv: Sequence[str], environ: dict[str, str], llm: LLMSession) -> tuple[int, bool]:
    """The command's exit status (128 + N if signal N ended it), and whether a request it made
    missed the cassette while replaying."""
    try:
        child = subprocess.Popen(list(argv), env=environ)
    except OSError as exc:
        print(f"repro-proxy: cannot run {argv[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return NOT_RUN, False

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    missed = False
    try:
        while child.poll() is None:
            time.sleep(POLL_SECONDS)
            missed = _report(llm) or missed
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    missed = _report(llm) or missed
    code = child.returncode
    return (128 - code if code < 0 else code), missed


def _report(llm: LLMSession) -> bool:
    """Say on standard error what the proxy was told since the last report, as the plugin fails
    or warns a test for it; whether any of it was a miss while replaying."""
    from proxy.testing.session import heard

    told = heard(llm)
    for message in told:
        if message is not None:
            print(message, file=sys.stderr)
    fatal = told.unreplayable is not None and not llm.records
    return told.missing is not None or told.absent is not None or fatal


def _written(llm: LLMSession, lines: list[bytes]) -> bool:
    """Write the cassette, and say what was written; False when the recording is lost or
    incomplete (an answer no cassette may hold was left out)."""
    from proxy.testing.session import answers, left_out_line, write

    try:
        count = write(llm.cassette, [lines])
    except (OSError, ValueError) as exc:  # ValueError: a path with a NUL byte
        print(f"repro-proxy: the cassette was not written: {exc}", file=sys.stderr)
        return False
    done = f"wrote {answers(count)} to {llm.cassette}" if count else "recorded nothing"
    print(f"repro-proxy: {done} (--record-mode={llm.mode})", file=sys.stderr)
    left_out = [] if llm.proxy is None else llm.proxy.left_out
    for why in left_out:
        print(left_out_line(why), file=sys.stderr)
    return not left_out
