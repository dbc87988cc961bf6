"""The audit on a terminal: progress bars while it runs, then the report as a table.

Fingerprints, error codes and distance errors are the upstream's text: every cell is `literal`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from proxy.tools.audit.plan import Arm
from proxy.tools.audit.tally import ArmReport, Report
from proxy.tools.output import literal, plural


@contextmanager
def progress(console: Console, arms: Sequence[Arm], n: int) -> Iterator[Callable[[Arm], None]]:
    """A bar per arm on stderr while requests run; nothing when stderr is not a terminal."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    disable = not console.is_terminal
    with Progress(
        *columns, TimeElapsedColumn(), console=console, transient=True, disable=disable
    ) as bar:
        tasks = {arm.name: bar.add_task(arm.name, total=n) for arm in arms}
        yield lambda arm: bar.advance(tasks[arm.name])


DISTANCES = {
    "text": "text distance, 0 to 1",
    "embedding": "embedding cosine distance, 0 to 2",
}


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
    notes = []
    injected = sum(r.tally.seed_injected for r in report.arms if r.arm.seed is None)
    if injected:
        notes.append(
            f"The proxy injected its default seed into {plural(injected, 'unseeded request')}: "
            "the unseeded arm measures the proxy's seed. Point --base-url at the upstream to see "
            "the upstream alone."
        )
    if _all_not_found(report):
        notes.append(
            "Every request was a 404: does --base-url lack its /v1 (such as "
            "http://127.0.0.1:8080/v1)?"
        )
    return " ".join(notes) or None


def _all_not_found(report: Report) -> bool:
    """Nothing but 404s, none for a model (`model_not_found`): the likeliest cause is a base
    URL without its /v1, which the table alone does not say."""
    errors = [reason for r in report.arms for reason in r.tally.errors]
    answered = sum(r.tally.ok for r in report.arms)
    return (
        not answered
        and bool(errors)
        and all(e.split(" ")[:2] == ["HTTP", "404"] and "model" not in e for e in errors)
    )


def render(report: Report) -> Table:
    """The report as a table: one column per arm, one row per measure."""
    plan = report.plan
    title = f"Determinism of {plan.model} at {plan.shown_url} ({DISTANCES[plan.distance]})"
    caption = _caption(report)
    table = Table(title=literal(title), caption=None if caption is None else literal(caption))
    table.add_column("")
    for r in report.arms:
        table.add_column(literal(_heading(r.arm)), justify="right")
    for label, *cells in zip(_LABELS, *(_cells(r) for r in report.arms), strict=True):
        table.add_row(literal(label), *(literal(cell) for cell in cells))
    return table
