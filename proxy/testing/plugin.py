"""The pytest plugin (entry point `pytest11`, name `repro_proxy`): tests that call an LLM through
the OpenAI SDKs record to a cassette once and replay it offline, deterministically, afterwards.

Installed with repro-proxy, it stays idle in sessions that do not use it: it starts its proxy only
when an `--llm-*` option is given, the `llm_cassette` ini option is set, the cassette exists
(`tests/cassettes/llm.jsonl` by default), or a test asks for `llm_base_url`. Then one proxy per
process (per worker under pytest-xdist) serves on a free port, `OPENAI_BASE_URL` points at it for
the session, and a request the cassette lacks fails the test that made it. `-p no:repro_proxy`
disables it.

The proxy and everything it needs are imported only by a session that uses it: an idle session
pays for this module alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from typing import TYPE_CHECKING

import pytest

from proxy.testing import DEFAULT_CASSETTE, DEFAULT_UPSTREAM, RECORD_MODES

if TYPE_CHECKING:
    from proxy.testing.session import LLMSession

SESSION = pytest.StashKey["LLMSession"]()
BATCHES = pytest.StashKey[list[list[bytes]]]()
SUMMARY = pytest.StashKey[str]()
WORKER_OUTPUT = "repro_proxy_cassette"
LEFT_OUT = pytest.StashKey[list[str]]()
WORKER_LEFT_OUT = "repro_proxy_left_out"


class LLMReplayWarning(UserWarning):
    """A recorded test made a call no cassette holds: replayed, it will fail. `-W
    error::proxy.testing.plugin.LLMReplayWarning` makes such a recording fail at once."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("repro-proxy", "deterministic LLM tests (repro-proxy)")
    group.addoption(
        "--llm-record-mode",
        choices=RECORD_MODES,
        default=None,
        help="none (default): replay only, a request not in the cassette fails its test; once: "
        "record if the cassette does not exist, else replay; new_episodes: replay what is "
        "recorded, record the rest; all: record everything anew",
    )
    group.addoption(
        "--llm-cassette",
        default=None,
        metavar="PATH",
        help=f"the cassette (default: the llm_cassette ini option, else {DEFAULT_CASSETTE} "
        "under the rootdir)",
    )
    group.addoption(
        "--llm-upstream",
        default=None,
        metavar="URL",
        help="where recordings come from, with its /v1 (default: REPRO_UPSTREAM, else "
        "https://api.openai.com/v1)",
    )
    parser.addini("llm_cassette", f"the cassette, relative to the rootdir ({DEFAULT_CASSETTE})")


def pytest_configure(config: pytest.Config) -> None:
    if not _wanted(config):
        return
    llm = _session(config)
    config.stash[SESSION] = llm
    from proxy.tools.remote import cleartext_warning

    warning = cleartext_warning(llm.upstream, "the API key") if llm.records else None
    if warning is not None and not hasattr(config, "workerinput"):  # once, not per worker
        config.issue_config_time_warning(pytest.PytestConfigWarning(f"repro-proxy: {warning}"), 2)
    if _controller(config):
        config.stash[BATCHES] = []
        config.stash[LEFT_OUT] = []
    if llm.loads:  # a bad cassette is one clear error, before any worker starts
        from proxy.store.cassette import CassetteError

        try:
            llm.read()
        except (CassetteError, OSError) as exc:
            raise pytest.UsageError(f"repro-proxy: {llm.cassette}: {exc}") from None


def _wanted(config: pytest.Config) -> bool:
    given = ("llm_record_mode", "llm_cassette", "llm_upstream")
    if any(config.getoption(name) is not None for name in given) or config.getini("llm_cassette"):
        return True
    return os.path.isfile(_cassette_path(config))


def _cassette_path(config: pytest.Config) -> str:
    given = config.getoption("llm_cassette")
    if given:
        return os.path.abspath(os.path.join(config.invocation_params.dir, given))
    ini = config.getini("llm_cassette") or DEFAULT_CASSETTE
    return str(config.rootpath / str(ini))


def _session(config: pytest.Config) -> LLMSession:
    from proxy.testing.session import LLMSession, RecordMode

    path = _cassette_path(config)
    mode = RecordMode(config.getoption("llm_record_mode") or RecordMode.NONE)
    upstream = config.getoption("llm_upstream") or os.environ.get("REPRO_UPSTREAM")
    return LLMSession(mode, path, upstream or DEFAULT_UPSTREAM, os.path.isfile(path))


def _controller(config: pytest.Config) -> bool:
    """The pytest-xdist controller runs no test: its workers each start a proxy."""
    return not hasattr(config, "workerinput") and getattr(config.option, "dist", "no") != "no"


def _start(llm: LLMSession) -> str:
    from proxy.config import SettingError
    from proxy.store.cassette import CassetteError
    from proxy.testing.local import ProxyFailed
    from proxy.testing.session import EarlyClient

    try:
        return llm.start()
    except (CassetteError, SettingError, ProxyFailed, OSError, EarlyClient) as exc:
        raise pytest.UsageError(f"repro-proxy: {exc}") from None


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    llm = session.config.stash.get(SESSION, None)
    if llm is not None and not _controller(session.config):
        _start(llm)


@pytest.fixture(scope="session")
def llm_base_url(pytestconfig: pytest.Config) -> str:
    """The session proxy's base URL (with /v1), for code that takes one explicitly."""
    llm = pytestconfig.stash.get(SESSION, None)
    if llm is None:
        llm = pytestconfig.stash[SESSION] = _session(pytestconfig)
    if llm.proxy is None:
        return _start(llm)
    return llm.proxy.url


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item, last=True))


def _guarded(item: pytest.Item, last: bool = False) -> Generator[None, object, object]:
    """Run a test phase; fail it when one of its requests was not in the cassette (by id too),
    or is one no cassette holds (replaying), or when the session's proxy has stopped; warn a
    recording test of a call no cassette holds, which will fail it replayed."""
    try:
        return (yield)
    finally:
        llm = item.config.stash.get(SESSION, None)
        proxy = None if llm is None else llm.proxy
        if llm is not None and proxy is not None:
            from proxy.testing.session import heard

            told = heard(llm)
            for fatal in (told.missing, told.absent):
                if fatal is not None:
                    pytest.fail(fatal, pytrace=False)
            if told.unreplayable is not None:
                if llm.records:
                    item.warn(LLMReplayWarning(told.unreplayable))
                else:
                    pytest.fail(told.unreplayable, pytrace=False)
            if not proxy.alive:
                pytest.fail("repro-proxy: the session's proxy has stopped", pytrace=False)
            # after the teardown only: `monkeypatch` puts a changed variable back in it
            escaped = llm.elsewhere() if last else None
            if escaped is not None:
                llm.point()  # the later tests' clients at the proxy again
                pytest.fail(f"repro-proxy: {escaped}", pytrace=False)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    llm = config.stash.get(SESSION, None)
    if llm is None:
        return
    if _controller(config):
        if llm.records:
            _write(session, llm, config.stash[BATCHES], config.stash[LEFT_OUT])
        return
    from proxy.testing.local import ProxyFailed
    from proxy.testing.session import heard

    if llm.proxy is not None:  # what no test's phase was there to fail: a call made after the last
        told = heard(llm)
        late = [told.missing, told.absent, None if llm.records else told.unreplayable]
        for message in filter(None, late):
            print(f"after the last test: {message}", file=sys.stderr)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    try:
        lines = llm.stop()
    except ProxyFailed as exc:
        print(f"repro-proxy: {exc}", file=sys.stderr)
        return
    left_out = [] if llm.proxy is None or not llm.records else llm.proxy.left_out
    if hasattr(config, "workeroutput"):
        config.workeroutput[WORKER_OUTPUT] = [line.decode() for line in lines]
        config.workeroutput[WORKER_LEFT_OUT] = left_out
    elif llm.records:
        _write(session, llm, [lines], left_out)
    elif llm.proxy is not None and not llm.exists:
        config.stash[SUMMARY] = f"no cassette at {llm.cassette}: nothing to replay"
    elif llm.proxy is not None:
        from proxy.testing.session import answers

        config.stash[SUMMARY] = f"replayed from {llm.cassette} ({answers(len(llm.recorded))})"


def _write(
    session: pytest.Session, llm: LLMSession, batches: list[list[bytes]], left_out: list[str]
) -> None:
    """Write the cassette; one that cannot be written fails the run with one line saying why,
    and so does an answer left out of it as no cassette may hold it (`cassette.refusal`): the
    run passed, but its replay would miss that request."""
    from proxy.testing.session import RecordMode, answers, left_out_line, write

    config = session.config
    try:
        keep = llm.mode is RecordMode.ALL and _partial(session)
        count = write(llm.cassette, batches, keep=keep)
    except (OSError, ValueError) as exc:  # ValueError: a path with a NUL byte
        print(f"repro-proxy: the cassette was not written: {exc}", file=sys.stderr)
        config.stash[SUMMARY] = f"recorded answers lost: {llm.cassette} could not be written"
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
        return
    done = f"wrote {answers(count)} to {llm.cassette}" if count else "recorded nothing"
    config.stash[SUMMARY] = f"{done} (--llm-record-mode={llm.mode})"
    for why in left_out:
        print(left_out_line(why), file=sys.stderr)
    if left_out:
        config.stash[SUMMARY] += f"; left out {answers(len(left_out))} no cassette may hold"
        session.exitstatus = pytest.ExitCode.USAGE_ERROR


def _partial(session: pytest.Session) -> bool:
    """Whether the session ran less than its suite: tests left out by `-k`, `-m` or
    `--deselect`, or a run stopped by `-x`, `--maxfail` or Ctrl-C. `all` then keeps the
    cassette's other lines: written over, a run of a few tests left a cassette of those few,
    and every other test missed."""
    option = session.config.option
    chosen = any(getattr(option, name, None) for name in ("keyword", "markexpr", "deselect"))
    stopped = bool(session.shouldfail or session.shouldstop)
    return chosen or stopped or session.exitstatus == pytest.ExitCode.INTERRUPTED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """A pytest-xdist worker is done: keep what it recorded for the one write at the end."""
    output = getattr(node, "workeroutput", {})
    config = getattr(node, "config", None)
    if config is not None and WORKER_OUTPUT in output and BATCHES in config.stash:
        config.stash[BATCHES].append([line.encode() for line in output[WORKER_OUTPUT]])
        config.stash[LEFT_OUT].extend(output.get(WORKER_LEFT_OUT, []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    summary = terminalreporter.config.stash.get(SUMMARY, None)
    if summary:
        terminalreporter.write_line(f"repro-proxy: {summary}")
