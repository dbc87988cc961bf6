"""docs/reference.md names what the code serves, both ways: every route, error code, metric
(with its type and labels), command and flag the code has is documented, and every one the
documents name exists. Drift in either direction fails here rather than in a user's first hour."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from proxy import cli, config, errors
from proxy.metrics import Metrics
from proxy.server.app import create_app
from proxy.testing import peers, plugin
from proxy.tools.sim import control

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"
USER_DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "deploy" / "README.md",
    REFERENCE,
    ROOT / "docs" / "operations.md",
    ROOT / "docs" / "security.md",
    ROOT / "docs" / "architecture.md",
    ROOT / "docs" / "fa" / "README.md",
]
CODE = re.compile(r"`([^`\n]+)`")
LONG_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9])(?![\w-])")
OTHER_PROGRAMS_FLAGS = {
    "--full": "bench/bench.py",
    "--init": "docker run",
    "--profile": "docker compose",
    "--build": "docker compose",
    "--cluster": "redis-cli",
}
ROUTE = re.compile(r"^(?:(GET|POST|PUT|PATCH|DELETE) )?(/\S*)$")
# A metric name in prose; recording rules (`model:repro_cache_hits:rate5m`) are not metrics.
METRIC = re.compile(r"(?<![:\w])(repro_[a-z0-9_]+)(?![:\w])")
NOT_METRICS = {
    "repro_proxy": "the pytest plugin's name",
}
SERIES_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section."""
    start = text.index(f"\n## {heading}\n") + len(heading) + 5
    end = text.find("\n## ", start)
    return text[start : end if end >= 0 else len(text)]


def table_rows(text: str) -> list[list[str]]:
    """The cells of the rows of the first markdown table in `text`, less its header."""
    lines = [*text[text.index("\n|") + 1 :].splitlines(), ""]
    table = [line for line in lines[: next(i for i, x in enumerate(lines) if x[:1] != "|")]]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip("|"))] for row in table[2:]]


def both_ways(documented: set[object], in_code: set[object]) -> None:
    assert not in_code - documented, f"not in docs/reference.md: {in_code - documented}"
    assert not documented - in_code, f"in docs/reference.md only: {documented - in_code}"


def reference() -> str:
    return REFERENCE.read_text(encoding="utf-8")


def registered_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the proxy registers; a catch-all as `/v1/*`, any method."""
    app = create_app(config.load({}, environ={}))
    routes = set()
    for route in app.router.routes():
        info = route.get_info()
        path = info.get("path") or info["formatter"]
        if route.method == "HEAD":
            continue
        routes.add((route.method, path.replace("{tail}", "*")))
    return routes


def test_every_route_is_in_the_reference_and_every_route_there_exists() -> None:
    documented = set()
    for row in table_rows(section(reference(), "Routes")):
        for code in CODE.findall(row[0]):
            if match := ROUTE.match(code):
                documented.add((match.group(1) or "*", match.group(2)))
    both_ways(documented, registered_routes())


def error_classes() -> list[type[errors.ProxyError]]:
    found: list[type[errors.ProxyError]] = [errors.ProxyError]
    for cls in found:
        found.extend(cls.__subclasses__())
    assert peers.NotThisSession in found  # the pytest plugin's own, documented alike
    return found


def test_every_error_code_is_in_the_reference_with_its_status() -> None:
    documented = {
        (int(row[0]), row[1].strip("`")) for row in table_rows(section(reference(), "Errors"))
    }
    in_code = {(cls.status, cls.code) for cls in error_classes() if cls is not errors.UpstreamError}
    both_ways(documented, in_code)


def metric_families(registry: CollectorRegistry, metrics: Metrics) -> dict[str, object]:
    """Every repro_* family of the proxy, by its exposed name (`_total` on counters)."""
    families: dict[str, object] = {}
    for value in vars(metrics).values():
        if hasattr(value, "describe") and hasattr(value, "labels"):
            (family,) = value.describe()
            name = family.name + ("_total" if family.type == "counter" else "")
            families[name] = value
    assert families and all(name.startswith("repro_") for name in families)
    return families


def documented_metrics() -> dict[str, tuple[str, list[str]]]:
    """The reference's metrics table: name -> (type, label names)."""
    table = {}
    for name, kind, labels in table_rows(section(reference(), "Metrics")):
        bare = re.sub(r"\([^()]*(\([^()]*\)[^()]*)*\)", "", labels)  # label values, explained
        table[name.strip("`")] = (kind.split()[0], CODE.findall(bare))
    return table


def test_every_metric_is_in_the_reference_with_its_type_and_labels() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    families = metric_families(registry, metrics)
    documented = documented_metrics()
    both_ways(set(documented), set(families))
    for name, (kind, labels) in documented.items():
        family = families[name]
        (description,) = family.describe()  # type: ignore[attr-defined]
        assert description.type == kind, name
        if labels:
            family.labels(*labels)  # type: ignore[attr-defined]  # too many or too few: raises
    shown = {
        (family.name, tuple(sorted(set(sample.labels) - {"le"})))
        for family in registry.collect()
        for sample in family.samples
    }
    for name, (_, labels) in documented.items():
        if labels:
            assert (name.removesuffix("_total"), tuple(sorted(labels))) in shown, name


@pytest.mark.parametrize("document", USER_DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_metric_named_exists(document: Path) -> None:
    families = set(documented_metrics())
    for name in METRIC.findall(document.read_text(encoding="utf-8")):
        if name in NOT_METRICS:
            continue
        base = next((name.removesuffix(s) for s in SERIES_SUFFIXES if name.endswith(s)), name)
        assert name in families or base in families, f"{document.name}: {name}"


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, set[str]]:
    """Each subcommand (`cassette diff`) and its long flags, -h left out."""
    found: dict[str, set[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = commands(sub, f"{prefix}{name} ")
                found |= inner or {f"{prefix}{name}": long_flags(sub)}
    return found


def long_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {
        flag
        for action in parser._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    }


SECTIONS = {
    "sim": "The simulated upstream",
    "check": "`repro-proxy check`",
    "rotations": "`repro-proxy rotations`",
}


def test_every_command_and_its_flags_are_in_the_reference() -> None:
    text = reference()
    rows = table_rows(section(text, "Commands"))
    for command, flags in commands(cli.build_parser()).items():
        mine = [
            " ".join(row)
            for row in rows
            if f"repro-proxy {command}" in row[0] or f"`{command}`" in row[0]
        ]
        assert mine, f"no row for repro-proxy {command} in the Commands table"
        if command == "serve":
            continue  # its flags are the settings, in README.md's generated table
        described = " ".join(mine) + section(text, SECTIONS.get(command, "Commands"))
        missing = flags - set(LONG_FLAG.findall(described))
        assert not missing, f"repro-proxy {command}: {sorted(missing)}"


def test_every_flag_named_exists() -> None:
    parser = cli.build_parser()
    known = long_flags(parser).union(*commands(parser).values())
    known |= set(re.findall(r'addoption\(\s*"(--[\w-]+)"', Path(plugin.__file__).read_text()))
    known |= set(OTHER_PROGRAMS_FLAGS)
    for document in USER_DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        unknown = set(LONG_FLAG.findall(text)) - known
        assert not unknown, f"{document.name}: {sorted(unknown)}"


def test_every_repro_variable_named_exists() -> None:
    """A REPRO_* variable a document names is a setting, or one the commands or tests read."""
    source = "\n".join(
        path.read_text(encoding="utf-8")
        for folder in ("proxy", "tests")
        for path in (ROOT / folder).rglob("*.py")
        if path != Path(__file__)
    )
    for document in USER_DOCUMENTS:
        for name in set(re.findall(r"\bREPRO_[A-Z_]+\b", document.read_text(encoding="utf-8"))):
            assert f'"{name}"' in source, f"{document.name}: {name}"


def test_every_control_route_of_the_sim_is_in_the_reference() -> None:
    """Rows name one path and its methods: "`GET`, `POST /_sim/fingerprint`"."""
    documented = set()
    for row in table_rows(section(reference(), "The simulated upstream")):
        words = " ".join(CODE.findall(row[0])).replace(",", "").split()
        paths = [word for word in words if word.startswith("/")]
        documented |= {(method, paths[0]) for method in words if not method.startswith("/")}
    in_code = {(route.method, route.path) for route in control.routes()}
    both_ways(documented, in_code)


def test_the_variables_the_compose_stack_passes_through_are_in_the_deploy_readme() -> None:
    compose = (ROOT / "deploy" / "compose" / "docker-compose.yml").read_text(encoding="utf-8")
    readme = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    passed = set(re.findall(r"\$\{(REPRO_[A-Z_]+):-", compose))
    assert passed
    assert not {name for name in passed if f"`{name}`" not in readme}
