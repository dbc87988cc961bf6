"""`repro-proxy check`: measure how reproducible an upstream's answers really are.

A seed is best effort: the same request with the same seed can still come back different. The
audit runs the classic experiment: the same chat request N times without a seed and N times with a
fixed seed and temperature 0, each with `Cache-Control: no-cache` so that a repro-proxy in between
asks the upstream every time, then compares the answers of each arm (distinct answers, agreement,
fingerprints, tokens, mean pairwise distance).

Counting and comparing are pure functions over plain data (`parse_answer`, `tally`, and
`proxy.textdistance`); only `collect` and `embed` talk to the network, through an injected client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from proxy.core.textdistance import cosine_distance, mean_pairwise, normalized_levenshtein

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
DEFAULT_PROMPT = "Describe the sea in three sentences."
NO_CACHE = {"Cache-Control": "no-cache"}
EMBEDDING_BATCH = 256  # inputs per /embeddings request, well under OpenAI's limit of 2048


class AuditError(Exception):
    """A step the audit cannot go on without (an embeddings request) failed; says which."""


# --- the plan (pure) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arm:
    """One side of the experiment: how its N requests are sent."""

    name: str
    seed: int | None
    temperature: float | None


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the audit will send, fixed before the first request so its cost is known."""

    base_url: str
    model: str
    prompt: str
    system: str | None
    seed: int
    n: int
    max_tokens: int
    concurrency: int
    distance: str
    embedding_model: str

    @property
    def arms(self) -> tuple[Arm, Arm]:
        return Arm("unseeded", None, None), Arm("seeded", self.seed, 0.0)

    def body(self, arm: Arm) -> dict[str, Any]:
        """The chat request of one arm; the unseeded arm sends the caller's defaults as is."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        messages = [*system, {"role": "user", "content": self.prompt}]
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        body["max_tokens"] = self.max_tokens  # the field every OpenAI-compatible server knows
        if arm.seed is not None:
            body["seed"] = arm.seed
        if arm.temperature is not None:
            body["temperature"] = arm.temperature
        return body

    def embedding_requests(self) -> int:
        return 0 if self.distance == "text" else 2 * -(-self.n // EMBEDDING_BATCH)

    def describe(self) -> str:
        """The cost, printed before anything is sent: the audit spends real tokens."""
        text = (
            f"check: {2 * self.n} chat requests ({self.n} per arm) of {self.model} "
            f"at {self.base_url}, at most {2 * self.n * self.max_tokens} completion tokens "
            f"({self.max_tokens} per request)"
        )
        if self.distance == "embedding":
            text += f", plus up to {self.embedding_requests()} embeddings requests"
            text += f" of {self.embedding_model}"
        return text


# --- answers and their tally (pure) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """One successful completion, reduced to what the audit compares and counts."""

    text: str
    fingerprint: str
    prompt_tokens: int
    completion_tokens: int
    seed_injected: bool


@dataclass(frozen=True, slots=True)
class Failure:
    """One request that gave no answer; `reason` groups failures in the report."""

    reason: str


Outcome = Answer | Failure


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _error_reason(status: int, body: bytes) -> str:
    """`HTTP 429 rate_limit_exceeded`: the status, and OpenAI's error code when there is one."""
    try:
        error = orjson.loads(body).get("error")
        code = error.get("code") or error.get("type")
    except (orjson.JSONDecodeError, AttributeError):
        code = None
    return f"HTTP {status} {code}" if isinstance(code, str) else f"HTTP {status}"


def _answer_text(choice: Mapping[str, Any]) -> str:
    """The message content; a tool call or refusal is compared as its JSON instead."""
    message = choice.get("message")
    if not isinstance(message, dict):
        raise TypeError("choice without a message")
    content = message.get("content")
    return content if isinstance(content, str) else orjson.dumps(message).decode()


def parse_answer(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    """A chat completion response to an Answer, or a Failure saying what went wrong."""
    if status >= 400:
        return Failure(_error_reason(status, body))
    try:
        data = orjson.loads(body)
        text = _answer_text(data["choices"][0])
        usage = data.get("usage") or {}
    except (orjson.JSONDecodeError, TypeError, KeyError, IndexError, AttributeError):
        return Failure("malformed answer")
    fingerprint = data.get("system_fingerprint")
    return Answer(
        text=text,
        fingerprint="none" if fingerprint is None else str(fingerprint),
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        seed_injected=headers.get("x-repro-seed-source") == "default",
    )


@dataclass(frozen=True, slots=True)
class Tally:
    """What one arm's answers add up to."""

    answers: Counter[str]
    fingerprints: Counter[str]
    errors: Counter[str]
    prompt_tokens: int
    completion_tokens: int
    seed_injected: int

    @property
    def ok(self) -> int:
        return self.answers.total()

    @property
    def failed(self) -> int:
        return self.errors.total()

    @property
    def agreement(self) -> float | None:
        """Share of answers equal to the most common one: 1.0 is fully reproducible."""
        if not self.answers:
            return None
        return self.answers.most_common(1)[0][1] / self.ok


def tally(outcomes: Iterable[Outcome]) -> Tally:
    outcomes = list(outcomes)
    answers = [o for o in outcomes if isinstance(o, Answer)]
    failures = [o for o in outcomes if isinstance(o, Failure)]
    return Tally(
        answers=Counter(a.text for a in answers),
        fingerprints=Counter(a.fingerprint for a in answers),
        errors=Counter(f.reason for f in failures),
        prompt_tokens=sum(a.prompt_tokens for a in answers),
        completion_tokens=sum(a.completion_tokens for a in answers),
        seed_injected=sum(a.seed_injected for a in answers),
    )


@dataclass(frozen=True, slots=True)
class ArmReport:
    """One arm's tally, with the mean distance or the reason it could not be measured."""

    arm: Arm
    tally: Tally
    mean_distance: float | None
    distance_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        t = self.tally
        answers = [{"text": text, "count": count} for text, count in t.answers.most_common()]
        return {
            "seed": self.arm.seed,
            "temperature": self.arm.temperature,
            "requests": t.ok + t.failed,
            "ok": t.ok,
            "failed": t.failed,
            "errors": dict(t.errors.most_common()),
            "distinct": len(t.answers),
            "agreement": t.agreement,
            "mean_distance": self.mean_distance,
            "distance_error": self.distance_error,
            "fingerprints": dict(t.fingerprints.most_common()),
            "prompt_tokens": t.prompt_tokens,
            "completion_tokens": t.completion_tokens,
            "seed_injected": t.seed_injected,
            "answers": answers,
        }


@dataclass(frozen=True, slots=True)
class Report:
    plan: Plan
    arms: tuple[ArmReport, ...]

    @property
    def exit_code(self) -> int:
        """1 when an arm has no answer at all or its distance failed: the audit measured nothing."""
        broken = any(r.tally.ok == 0 or r.distance_error for r in self.arms)
        return 1 if broken else 0

    def to_json(self) -> dict[str, Any]:
        p = self.plan
        return {
            "base_url": p.base_url,
            "model": p.model,
            "requests_per_arm": p.n,
            "max_tokens": p.max_tokens,
            "distance": p.distance,
            "embedding_model": p.embedding_model if p.distance == "embedding" else None,
            "arms": {r.arm.name: r.to_json() for r in self.arms},
        }


def text_distance(counts: Mapping[str, int]) -> float | None:
    return mean_pairwise(counts, normalized_levenshtein)


# --- network ---------------------------------------------------------------------------------


async def ask(client: httpx.AsyncClient, plan: Plan, arm: Arm) -> Outcome:
    """One chat request; transport errors become Failures so one bad request never stops N."""
    try:
        response = await client.post("chat/completions", json=plan.body(arm), headers=NO_CACHE)
    except httpx.HTTPError as exc:
        return Failure(type(exc).__name__)
    return parse_answer(response.status_code, response.headers, response.content)


async def collect(
    client: httpx.AsyncClient, plan: Plan, on_done: Callable[[Arm], None]
) -> dict[str, list[Outcome]]:
    """All 2N requests, at most `concurrency` at once, the arms interleaved.

    Interleaving spreads time-dependent upstream changes (a fingerprint rollout, load) over both
    arms alike instead of blaming them on one.
    """
    gate = asyncio.Semaphore(plan.concurrency)

    async def one(arm: Arm) -> tuple[Arm, Outcome]:
        async with gate:
            outcome = await ask(client, plan, arm)
        on_done(arm)
        return arm, outcome

    results = await asyncio.gather(*(one(arm) for _ in range(plan.n) for arm in plan.arms))
    outcomes: dict[str, list[Outcome]] = {arm.name: [] for arm in plan.arms}
    for arm, outcome in results:
        outcomes[arm.name].append(outcome)
    return outcomes


def _vectors(body: bytes, expected: int) -> list[list[float]]:
    data = sorted(orjson.loads(body)["data"], key=lambda item: item["index"])
    vectors = [[float(x) for x in item["embedding"]] for item in data]
    if len(vectors) != expected:
        raise ValueError(f"{len(vectors)} embeddings for {expected} inputs")
    return vectors


async def _embed_batch(
    client: httpx.AsyncClient, model: str, batch: list[str]
) -> list[list[float]]:
    try:
        body = {"model": model, "input": batch}
        response = await client.post("embeddings", json=body, headers=NO_CACHE)
    except httpx.HTTPError as exc:
        raise AuditError(f"embeddings request failed: {type(exc).__name__}") from exc
    if response.status_code >= 400:
        reason = _error_reason(response.status_code, response.content)
        raise AuditError(f"embeddings request failed: {reason}")
    try:
        return _vectors(response.content, len(batch))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise AuditError(f"embeddings answer malformed: {exc!r}") from exc


async def embed(client: httpx.AsyncClient, model: str, texts: Sequence[str]) -> list[list[float]]:
    """Embeddings of `texts` from the upstream's own /embeddings, in batches it accepts."""
    vectors: list[list[float]] = []
    for start in range(0, len(texts), EMBEDDING_BATCH):
        vectors += await _embed_batch(client, model, list(texts[start : start + EMBEDDING_BATCH]))
    return vectors


async def embedding_distance(
    client: httpx.AsyncClient, model: str, counts: Mapping[str, int]
) -> float | None:
    """Mean pairwise cosine distance; only distinct answers are embedded, none if all agree."""
    if len(counts) < 2:
        return mean_pairwise(counts, lambda a, b: 0.0)
    texts = list(counts)
    vectors = dict(zip(texts, await embed(client, model, texts), strict=True))
    return mean_pairwise(counts, lambda a, b: cosine_distance(vectors[a], vectors[b]))


async def measure(client: httpx.AsyncClient, plan: Plan, arm: Arm, t: Tally) -> ArmReport:
    if plan.distance == "text":
        return ArmReport(arm, t, text_distance(t.answers))
    try:
        return ArmReport(arm, t, await embedding_distance(client, plan.embedding_model, t.answers))
    except (AuditError, ValueError) as exc:
        return ArmReport(arm, t, None, str(exc))


async def audit(
    client: httpx.AsyncClient, plan: Plan, on_done: Callable[[Arm], None] = lambda arm: None
) -> Report:
    """Run the experiment through `client` (its base URL is the upstream or the proxy)."""
    outcomes = await collect(client, plan, on_done)
    arms = [await measure(client, plan, arm, tally(outcomes[arm.name])) for arm in plan.arms]
    return Report(plan, tuple(arms))


# --- terminal view ---------------------------------------------------------------------------


@contextmanager
def _progress(console: Console, arms: Sequence[Arm], n: int) -> Iterator[Callable[[Arm], None]]:
    """A bar per arm on stderr while requests run; nothing when stderr is not a terminal."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    disable = not console.is_terminal
    with Progress(
        *columns, TimeElapsedColumn(), console=console, transient=True, disable=disable
    ) as bar:
        tasks = {arm.name: bar.add_task(arm.name, total=n) for arm in arms}
        yield lambda arm: bar.advance(tasks[arm.name])


def _counted(counter: Counter[str]) -> str:
    return ", ".join(f"{name} x{count}" for name, count in counter.most_common()) or "-"


def _heading(arm: Arm) -> str:
    return "no seed" if arm.seed is None else f"seed {arm.seed}, temperature 0"


def _cells(r: ArmReport) -> list[str]:
    t = r.tally
    agreement = "n/a" if t.agreement is None else f"{t.agreement:.0%}"
    distance = "n/a" if r.mean_distance is None else f"{r.mean_distance:.3f}"
    return [
        f"{t.ok} / {t.failed}",
        _counted(t.errors),
        str(len(t.answers)),
        agreement,
        r.distance_error or distance,
        _counted(t.fingerprints),
        f"{t.prompt_tokens} / {t.completion_tokens}",
    ]


_LABELS = (
    "answers / failed",
    "errors",
    "distinct answers",
    "agreement (most common answer)",
    "mean pairwise distance",
    "system_fingerprints",
    "prompt / completion tokens",
)


def _caption(report: Report) -> str | None:
    injected = sum(r.tally.seed_injected for r in report.arms if r.arm.seed is None)
    if not injected:
        return None
    return (
        f"The proxy injected its default seed into {injected} unseeded requests: the unseeded "
        "arm measures the proxy's seed. Point --base-url at the upstream to see the upstream alone."
    )


def render(report: Report) -> Table:
    """The report as a table: one column per arm, one row per measure."""
    plan = report.plan
    title = f"Determinism of {plan.model} at {plan.base_url} ({plan.distance} distance)"
    table = Table(title=Text(title), caption=_caption(report))
    table.add_column("")
    for r in report.arms:
        table.add_column(Text(_heading(r.arm)), justify="right")
    for label, *cells in zip(_LABELS, *(_cells(r) for r in report.arms), strict=True):
        table.add_row(Text(label), *(Text(cell) for cell in cells))
    return table


# --- command line ----------------------------------------------------------------------------


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `repro-proxy check`; the CLI owns the parser, this module owns the options."""
    add = parser.add_argument
    add("--base-url", default=DEFAULT_BASE_URL, help="the proxy's or an upstream's URL, with /v1")
    add("--api-key", help="API key (default: $OPENAI_API_KEY)")
    add("-n", "--requests", type=_at_least(2), default=10, help="requests per arm (default 10)")
    add("--concurrency", type=_at_least(1), default=4, help="requests in flight (default 4)")
    add("--model", default="gpt-4o-mini", help="chat model (default gpt-4o-mini)")
    add("--prompt", default=DEFAULT_PROMPT, help="the user message")
    add("--system", help="an optional system message")
    add("--seed", type=int, default=12345, help="seed of the seeded arm (default 12345)")
    add("--max-tokens", type=_at_least(1), default=128, help="per request (default 128)")
    add("--distance", choices=("text", "embedding"), default="text", help="default: text")
    add("--embedding-model", default="text-embedding-3-small", help="for --distance embedding")
    add("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    add("--json", action="store_true", help="print one JSON object to stdout")
    add("--yes", "-y", action="store_true", help="start without asking for confirmation")


def plan_from_args(ns: argparse.Namespace) -> Plan:
    return Plan(
        base_url=ns.base_url,
        model=ns.model,
        prompt=ns.prompt,
        system=ns.system,
        seed=ns.seed,
        n=ns.requests,
        max_tokens=ns.max_tokens,
        concurrency=ns.concurrency,
        distance=ns.distance,
        embedding_model=ns.embedding_model,
    )


def _confirmed(skip: bool) -> bool:
    """Ask on a terminal only: a script or CI job (stdin not a TTY) must never hang on a prompt."""
    if skip or not sys.stdin.isatty():
        return True
    print("Proceed? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _client(ns: argparse.Namespace) -> httpx.AsyncClient:
    key = ns.api_key or os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=ns.concurrency)
    base_url = ns.base_url.rstrip("/") + "/"
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=ns.timeout, limits=limits)


async def run(ns: argparse.Namespace) -> int:
    """`repro-proxy check`: the plan on stderr, the report on stdout, 1 if nothing was measured."""
    plan, err = plan_from_args(ns), Console(stderr=True, highlight=False)
    err.print(plan.describe(), markup=False)
    if not (ns.api_key or os.environ.get("OPENAI_API_KEY")):
        err.print("note: no API key (--api-key or OPENAI_API_KEY); sending none", markup=False)
    if not _confirmed(ns.yes):
        err.print("aborted", markup=False)
        return 1
    async with _client(ns) as client:
        with _progress(err, plan.arms, plan.n) as advance:
            report = await audit(client, plan, advance)
    if ns.json:
        print(orjson.dumps(report.to_json()).decode(), flush=True)
    else:
        Console(highlight=False).print(render(report))
    return report.exit_code


def main(ns: argparse.Namespace) -> int:
    return asyncio.run(run(ns))
