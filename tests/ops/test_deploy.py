"""deploy/: Prometheus rules and config, the Grafana dashboard, compose and Kubernetes manifests.

Checked with the real tools: promtool (Debian `prometheus`) checks and unit-tests the rules;
every PromQL expression is parsed with Prometheus's grammar (promql-parser) and may name only
metrics and labels that proxy.metrics.Metrics registers, or series the recording rules define;
the compose file is validated against the Compose Specification schema that check-jsonschema
vendors; the kustomization is rendered by `kubectl kustomize` and every resource validated
against the Kubernetes schemas of kubernetes-validate (strict) or, for the Prometheus Operator's
resources, cloudcoil's models of its CRDs. Wiring between files (mounts, ports, names, settings)
is checked against the proxy's own CLI parser and settings loader.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import re
import secrets
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser as pp
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from proxy import cli, config
from proxy.core.hosts import HostCheck, Verdict, allowed_hosts
from proxy.core.policy import Outcome
from proxy.metrics import Metrics
from proxy.store import open_store
from proxy.store.base import StoreError
from proxy.tallies import CounterTallies, HistogramTallies
from tests.fixtures_redis import running_redis

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "repro-proxy.json"
K8S = DEPLOY / "k8s"
K8S_VERSIONS = ("1.29.0", "1.37.0")  # native sidecars appeared in 1.29; the newest schemas

TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series
KNOWN_VALUES = {
    "cache": {o.lower() for o in Outcome} | {"error"},
    "type": {"prompt", "completion"},
    "result": {"same", "differs", "rotated", "error"},  # proxy.verify's outcomes of a check
}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}


VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def run(*argv: str | Path) -> str:
    """Run a tool; fail the test with its output unless it exits 0."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{output}"
    return output


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (promtool: Debian package prometheus)"
    return path


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --- what the proxy exports -------------------------------------------------------------------


@cache
def exported_series() -> dict[str, frozenset[str]]:
    """Every series name /metrics can show, with its labels, from the proxy's own registry."""
    metrics = Metrics(CollectorRegistry())
    series: dict[str, frozenset[str]] = {}
    for family in vars(metrics).values():
        if isinstance(family, MetricWrapperBase):
            labels = frozenset(family._labelnames)  # prometheus-client keeps them on the wrapper
        elif isinstance(family, CounterTallies | HistogramTallies):
            labels = frozenset(family.labelnames)
        else:
            continue
        (described,) = family.describe()  # the name without _total, and the type
        name, kind = described.name, described.type
        suffixes = {
            "counter": ("_total", "_created"),
            "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
        }[kind]
        for suffix in suffixes:
            series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def test_exported_series_cover_the_contract() -> None:
    series = exported_series()
    assert series["repro_requests_total"] == {"route", "cache"}
    assert series["repro_fingerprint_info"] == {"model", "fingerprint"}
    assert series["repro_request_duration_seconds_bucket"] == {"route", "cache", "le"}
    assert series["repro_upstream_duration_seconds_count"] == {"route", "status"}
    assert series["repro_verify_total"] == {"model", "result"}
    assert series["repro_verify_distance_bucket"] == {"model", "fingerprint", "le"}


# --- PromQL: names, labels and label values ---------------------------------------------------

Labels = frozenset[str] | None  # None: a scalar


class PromQLChecker:
    """Infers the labels of each subexpression and collects every misuse of a name or label."""

    def __init__(self, series: Mapping[str, frozenset[str]]) -> None:
        self.series = dict(series)
        self.problems: list[str] = []
        self.used: set[str] = set()

    def check(self, expr: str) -> Labels:
        self.problems.clear()
        labels = self.labels(pp.parse(expr))
        assert not self.problems, f"{expr}\n  " + "\n  ".join(self.problems)
        return labels

    def require(self, needed: set[str] | list[str], have: Labels, where: str) -> None:
        missing = set(needed) - (have or frozenset())
        if missing:
            self.problems.append(f"{where}: no label {sorted(missing)} (has {sorted(have or [])})")

    def labels(self, node: Any) -> Labels:
        if isinstance(node, pp.VectorSelector):
            return self.selector(node)
        if isinstance(node, pp.MatrixSelector):
            return self.selector(node.vector_selector)
        if isinstance(node, pp.ParenExpr | pp.UnaryExpr | pp.SubqueryExpr):
            return self.labels(node.expr)
        if isinstance(node, pp.NumberLiteral | pp.StringLiteral):
            return None
        if isinstance(node, pp.AggregateExpr):
            return self.aggregate(node)
        if isinstance(node, pp.Call):
            return self.call(node)
        if isinstance(node, pp.BinaryExpr):
            return self.binary(node)
        raise AssertionError(f"unexpected PromQL node {type(node).__name__}")

    def selector(self, node: pp.VectorSelector) -> Labels:
        if node.name not in self.series:
            self.problems.append(f"{node.name}: neither exported by the proxy nor recorded")
            return frozenset()
        self.used.add(node.name)
        recorded = ":" in node.name
        have = self.series[node.name] | (frozenset() if recorded else TARGET_LABELS)
        for matcher in node.matchers.matchers:
            self.require([matcher.name], have | {"__name__"}, f"{node.name} matcher")
            self.known_value(node.name, matcher)
        return have

    def known_value(self, name: str, matcher: pp.Matcher) -> None:
        allowed = KNOWN_VALUES.get(matcher.name)
        if allowed is None:
            return
        if matcher.op == pp.MatchOp.Equal:
            ok = matcher.value in allowed
        elif matcher.op == pp.MatchOp.Re:  # each alternative must match a value
            alternatives = matcher.value.split("|")
            ok = all(any(re.fullmatch(a, v) for v in allowed) for a in alternatives)
        else:
            ok = True
        if not ok:
            self.problems.append(f"{name}: {matcher.name} never takes {matcher.value!r}")

    def aggregate(self, node: pp.AggregateExpr) -> Labels:
        inner = self.labels(node.expr)
        modifier = node.modifier
        if modifier is None:
            return frozenset()
        self.require(modifier.labels, inner, f"{node.op} by/without")
        if modifier.type == pp.AggModifierType.By:
            return frozenset(modifier.labels)
        return (inner or frozenset()) - set(modifier.labels)

    def call(self, node: pp.Call) -> Labels:
        args = [self.labels(arg) for arg in node.args]
        name = node.func.name
        if name == "vector":
            return frozenset()
        vectors = [a for a in args if a is not None]
        if not vectors:
            return None
        if name == "histogram_quantile":
            self.require(["le"], vectors[0], "histogram_quantile")
            return vectors[0] - {"le"}
        return vectors[0]

    def binary(self, node: pp.BinaryExpr) -> Labels:
        lhs, rhs = self.labels(node.lhs), self.labels(node.rhs)
        if lhs is None or rhs is None:
            return rhs if lhs is None else lhs
        op = str(node.op)
        matching = node.modifier.matching if node.modifier else None
        if matching is not None and matching.type == pp.LabelModifierType.Include:
            self.require(matching.labels, lhs, f"{op} on (…) left side")
            self.require(matching.labels, rhs, f"{op} on (…) right side")
        elif matching is None and op != "or" and lhs != rhs:
            self.problems.append(f"{op}: sides never match ({sorted(lhs)} vs {sorted(rhs)})")
        if op == "or":
            return lhs | rhs
        card = node.modifier.card if node.modifier else None
        if card == pp.VectorMatchCardinality.ManyToOne:
            return lhs | set(node.modifier.group_labels)
        if card == pp.VectorMatchCardinality.OneToMany:
            return rhs | set(node.modifier.group_labels)
        return lhs


def substitute(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced by values PromQL accepts."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    expr = expr.replace("$model", ".*")
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


@cache
def rules() -> list[dict[str, Any]]:
    return [rule for f in RULE_FILES for group in load_yaml(f)["groups"] for rule in group["rules"]]


def checker() -> PromQLChecker:
    """A checker that knows the exported series and, in file order, the recorded ones."""
    promql = PromQLChecker(exported_series())
    for rule in rules():
        if "record" in rule:
            labels = promql.check(rule["expr"])
            assert labels is not None, f"{rule['record']} records a scalar"
            promql.series[rule["record"]] = labels
    return promql


def test_promtool_checks_the_rule_files() -> None:
    assert {f.name for f in RULE_FILES} == {"repro-recording.yml", "repro-alerts.yml"}
    run(tool("promtool"), "check", "rules", "--lint=all", "--lint-fatal", *RULE_FILES)


def test_promtool_checks_the_prometheus_config() -> None:
    output = run(tool("promtool"), "check", "config", "--lint-fatal", PROMETHEUS / "prometheus.yml")
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in output


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    assert RULE_TESTS
    output = run(tool("promtool"), "test", "rules", *RULE_TESTS)
    assert output.count("SUCCESS") == len(RULE_TESTS), output


def test_every_rule_has_a_unit_test() -> None:
    tested_alerts: set[str] = set()
    tested_exprs: list[str] = []
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            tested_alerts |= {t["alertname"] for t in case.get("alert_rule_test", [])}
            tested_exprs += [t["expr"] for t in case.get("promql_expr_test", [])]
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts == tested_alerts
    records = {r["record"] for r in rules() if "record" in r}
    assert set(re.findall(r"[a-z_]+:[a-z_0-9]+:[a-z_0-9]+", " ".join(tested_exprs))) == records


def test_rules_use_only_exported_metrics_and_their_labels() -> None:
    promql = checker()
    for rule in rules():
        if "alert" in rule:
            promql.check(rule["expr"])
    assert {
        "repro_fingerprint_info",
        "repro_fingerprint_changes_total",
        "repro_verify_total",
        "repro_verify_distance_sum",
        "repro_verify_distance_count",
    } <= promql.used


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(repro_cache_hit_total[5m])", "neither exported by the proxy nor recorded"),
        ("repro:no_such_rule:rate5m", "neither exported by the proxy nor recorded"),
        ("sum by (modle) (rate(repro_cache_hits_total[5m]))", r"no label \['modle'\]"),
        ("repro_request_duration_seconds_count{le='1'}", r"no label \['le'\]"),
        ("model:repro_cache_hit_ratio:rate5m{route='/v1/embeddings'}", r"no label \['route'\]"),
        (
            "histogram_quantile(0.5, sum by (route) (repro_request_duration_seconds_bucket))",
            r"histogram_quantile: no label \['le'\]",
        ),
        ('repro_requests_total{cache="HIT"}', "cache never takes 'HIT'"),
        ('repro_requests_total{cache=~"hit|stale|expired"}', "cache never takes"),
        ('repro_verify_total{result="different"}', "result never takes 'different'"),
        ("sum by (fingerprint) (repro_verify_total)", r"no label \['fingerprint'\]"),
        (
            "sum by (model) (repro_cache_hits_total) / sum(repro_cache_misses_total)",
            "sides never match",
        ),
    ],
)
def test_the_checker_rejects_unknown_names_labels_and_values(expr: str, problem: str) -> None:
    with pytest.raises(AssertionError, match=problem):
        checker().check(expr)


# --- Grafana ----------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def dashboard_queries(board: dict[str, Any]) -> Iterator[str]:
    for panel in panels(board):
        for target in panel["targets"]:
            yield target["expr"]
    for annotation in board["annotations"]["list"]:
        yield annotation["expr"]


def test_dashboard_is_the_output_of_its_generator() -> None:
    path = DEPLOY / "grafana" / "build_dashboard.py"
    spec = importlib.util.spec_from_file_location("build_dashboard", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == DASHBOARD.read_text(), f"regenerate: python {path}"


def test_dashboard_queries_use_only_exported_metrics_and_recorded_series() -> None:
    promql = checker()
    queries = [substitute(q) for q in dashboard_queries(dashboard())]
    for query in queries:
        promql.check(query)
    assert promql.used >= {
        "repro_requests_total",
        "repro_tokens_saved_total",
        "repro_fingerprint_info",
        "repro_fingerprint_changes_total",
        "repro_request_duration_seconds_bucket",
        "repro_upstream_duration_seconds_bucket",
        "repro_upstream_duration_seconds_count",
        "repro_store_errors_total",
        "repro_store_compression_ratio",
        "repro_websockets_open",
        "repro_websocket_session_seconds_bucket",
        "repro:cache_hit_ratio:rate5m",
        "repro_verify_total",
        "repro_verify_distance_bucket",
        "model:repro_verify_determinism:ratio_rate1h",
        "model_fingerprint:repro_verify_distance:mean1h",
    }


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Prometheus's own parser, through promtool, on each query as a recording rule."""
    queries = [substitute(q) for q in dashboard_queries(dashboard())]
    group = {
        "name": "dashboard",
        "rules": [{"record": f"dashboard:query_{i}:x", "expr": q} for i, q in enumerate(queries)],
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    output = run(tool("promtool"), "check", "rules", path)
    assert f"SUCCESS: {len(queries)} rules found" in output


def test_dashboard_variables_name_exported_labels() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    found = re.fullmatch(r"label_values\((\w+), (\w+)\)", variables["model"]["query"])
    assert found, variables["model"]["query"]
    metric, label = found.groups()
    assert label in exported_series()[metric]


def test_dashboard_has_the_panels_operators_need() -> None:
    board = dashboard()
    by_type: dict[str, list[str]] = {}
    for panel in panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            by_type.setdefault(panel["type"], []).append(target["expr"])
    series = " ".join(by_type["timeseries"])
    assert "sum by (cache) (rate(repro_requests_total[" in series
    assert "model:repro_cache_hit_ratio:rate5m" in series
    assert "repro_tokens_saved_total" in series
    for quantile in ("0.5", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, cache) (rate(repro_request" in series
        assert f"histogram_quantile({quantile}, sum by (le, route) (rate(repro_upstream" in series
    assert "route:repro_upstream_errors:ratio_rate5m" in series
    assert 'repro_requests_total{cache="error"}' in series
    assert "repro_store_errors_total" in series
    assert "model:repro_verify_determinism:ratio_rate1h" in series
    assert "sum by (result) (rate(repro_verify_total{" in series
    assert "model_fingerprint:repro_verify_distance:mean1h" in series
    assert "histogram_quantile(0.9, sum by (le, model) (rate(repro_verify_distance_bucket" in series
    (fingerprints,) = by_type["table"]
    assert re.fullmatch(
        r"count by \(model, fingerprint\) \(repro_fingerprint_info\{.*\} == 1\)", fingerprints
    )
    rotations, back = board["annotations"]["list"]
    assert rotations["enable"] and "repro_fingerprint_changes_total" in rotations["expr"]
    assert "- sum by (model) ((repro_fingerprint_flaps_total" in rotations["expr"]
    assert rotations["titleFormat"] == "Fingerprint rotated: {{model}}"
    assert back["enable"] and "repro_fingerprint_changes_total" not in back["expr"]
    assert "repro_fingerprint_flaps_total" in back["expr"]
    assert back["titleFormat"] == "Fingerprint rotated back: {{model}}"
    (page,) = board["links"]
    assert (page["type"], page["url"]) == ("link", "${proxy_url}/admin/ui")


def test_dashboard_determinism_row_holds_the_verify_panels() -> None:
    rows: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []
    for panel in sorted(
        dashboard()["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])
    ):
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], [])
        else:
            current.append(panel)
    determinism = {p["title"]: p for p in rows["Determinism"]}
    ratio = determinism["Determinism ratio"]
    assert ratio["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert [t["expr"] for t in ratio["targets"]] == [
        'model:repro_verify_determinism:ratio_rate1h{model=~"$model"}'
    ]
    results = determinism["Verify results"]
    assert results["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert [t["legendFormat"] for t in results["targets"]] == ["{{result}}"]
    distance = determinism["Distance between stored and fresh answers"]
    assert {t["legendFormat"] for t in distance["targets"]} == {
        "mean {{model}} {{fingerprint}}",
        "p90 {{model}}",
    }


def test_dashboard_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


# --- docker compose ---------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return dict(load_yaml(COMPOSE))


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set in the environment."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of each bind mount (sources relative to the compose file)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    check = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    run(*check, COMPOSE)
    broken = copy.deepcopy(compose())
    broken["services"]["proxy"]["read_only_rootfs"] = True
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    assert subprocess.run([*check, str(path)], capture_output=True).returncode == 1


def test_compose_proxy_is_a_valid_serve_command_on_redis() -> None:
    services = compose()["services"]
    assert set(services) == {"proxy", "redis", "prometheus", "grafana", "sim"}
    proxy = services["proxy"]
    assert (COMPOSE.parent / proxy["build"]["context"]).resolve() == ROOT
    assert (ROOT / proxy["build"]["dockerfile"]).is_file()
    assert proxy["image"] == services["sim"]["image"] == f"repro-proxy:{VERSION}"
    args = cli.build_parser().parse_args(proxy["command"])
    assert args.command == "serve"
    environ = {k: interpolate(v) for k, v in proxy["environment"].items()}
    assert {k for k in environ if k.startswith("REPRO_")} <= {o.env for o in config.OPTIONS}
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    settings = config.load(flags, environ)
    assert settings.host == "0.0.0.0"
    assert settings.store == "redis://redis:6379/0"
    assert settings.admin_token is None and settings.probe_interval == 0
    assert settings.verify_rate == 0  # drift sampling costs upstream requests: opt in
    assert settings.ttl > 0  # Redis runs volatile-lru: only entries with a TTL are evictable
    assert "volatile-lru" in services["redis"]["command"]
    assert proxy["depends_on"]["redis"]["condition"] == "service_healthy"
    assert proxy["ports"] == [f"127.0.0.1:{settings.port}:{settings.port}"]
    assert cli.build_parser().parse_args(services["sim"]["command"]).command == "sim"
    # Published on the developer's machine: a page rebinding its name is refused, while
    # Prometheus (its scrape target), the host's browser and the health check are answered.
    hosts = HostCheck(allowed_hosts(settings.host, settings.allowed_host))
    (target,) = load_yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"][0]["static_configs"][0][
        "targets"
    ]
    for served in (target, f"localhost:{settings.port}", f"127.0.0.1:{settings.port}"):
        assert hosts.verdict(served) is Verdict.ALLOWED, served
    assert hosts.verdict(f"evil.example:{settings.port}") is Verdict.REFUSED


def test_compose_runs_the_image_locked_down_and_bounded() -> None:
    for name, service in compose()["services"].items():
        if service.get("image") != f"repro-proxy:{VERSION}":
            continue
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["mem_limit"] and service["pids_limit"] > 0, name


def test_compose_runs_every_service_without_privileges() -> None:
    """Redis holds every stored prompt and answer, Grafana and Prometheus read what the proxy
    exports: none needs a capability or a way to gain one, and Redis runs as its own user
    (never root: its image's entry script only drops to that user when started as root) on a
    read-only root, as in Kubernetes, bounded in memory and processes."""
    services = compose()["services"]
    for name, service in services.items():
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
    redis = services["redis"]
    k8s_redis = resource("StatefulSet", "repro-redis")["spec"]["template"]["spec"]
    user = k8s_redis["securityContext"]["runAsUser"], k8s_redis["securityContext"]["runAsGroup"]
    assert redis["user"] == f"{user[0]}:{user[1]}"
    assert redis["read_only"] is True and redis["mem_limit"] and redis["pids_limit"] > 0
    maxmemory = redis["command"][redis["command"].index("--maxmemory") + 1]
    assert _bytes(maxmemory) < _bytes(redis["mem_limit"])  # Redis evicts before it is killed


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)\s*([kmg]?)b?", size.lower()).groups()  # type: ignore[union-attr]
    return int(number) * 1024 ** " kmg".index(unit or " ")


def test_compose_mounts_exist_and_services_point_at_each_other() -> None:
    file = compose()
    services = file["services"]
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in file["volumes"], f"{name}: undeclared volume {source}"
        assert set(service.get("depends_on", [])) <= set(services)
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"

    prometheus = services["prometheus"]
    mounts = bind_mounts(prometheus)
    config_file = next(
        a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file=")
    )
    assert mounts[config_file] == PROMETHEUS / "prometheus.yml"
    scrape = load_yaml(PROMETHEUS / "prometheus.yml")
    for pattern in scrape["rule_files"]:
        rules_dir = str(Path(config_file).parent / Path(pattern).parent)
        assert sorted(mounts[rules_dir].glob(Path(pattern).name)) == RULE_FILES
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["proxy:8080"]}]

    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    assert (
        mounts["/etc/grafana/provisioning/datasources"]
        == DEPLOY / "grafana/provisioning/datasources"
    )
    (datasource,) = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")[
        "datasources"
    ]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert datasource["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]
    dashboards = mounts["/etc/grafana/provisioning/dashboards"]
    (provider,) = load_yaml(dashboards / "repro-proxy.yml")["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


# --- Kubernetes -------------------------------------------------------------------------------


@cache
def rendered() -> tuple[dict[str, Any], ...]:
    output = run(tool("kubectl"), "kustomize", K8S)
    return tuple(doc for doc in yaml.safe_load_all(output) if doc)


def resource(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in rendered() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


@cache
def operator_models() -> dict[str, Any]:
    from cloudcoil.models.prometheus_operator import v1

    return {"ServiceMonitor": v1.ServiceMonitor, "PrometheusRule": v1.PrometheusRule}


def validate_operator_resource(doc: dict[str, Any]) -> None:
    """Validate against the CRD's model; a field the model does not know is an error too."""
    model = operator_models()[doc["kind"]].model_validate(doc)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc


def validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        validate_operator_resource(doc)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_every_kubernetes_resource_validates_against_its_schema() -> None:
    kinds = sorted(d["kind"] for d in rendered())
    expected = (
        "ConfigMap Secret Secret Service Service Deployment StatefulSet NetworkPolicy NetworkPolicy"
    )
    assert kinds == sorted([*expected.split(), "ServiceMonitor", "PrometheusRule"])
    for doc in rendered():
        validate(doc)


def test_the_validators_reject_unknown_fields() -> None:
    deployment = copy.deepcopy(resource("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    monitor = copy.deepcopy(resource("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeEvery"] = "15s"
    with pytest.raises(AssertionError):
        validate(monitor)


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod.get("initContainers", []) + pod["containers"]}


def expanded(value: str, environ: Mapping[str, str]) -> str:
    """`$(NAME)` as Kubernetes expands it in `value` and `args`: from the variables defined
    before; an unknown name stays as written."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: environ.get(m[1], m[0]), value)


def environment(
    container: dict[str, Any], filled: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment a container gets, secrets resolved from the bundle's Secrets (or from
    `filled`, a Secret's keys as an operator set them), `$(NAME)` references expanded."""
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        environ |= resource("ConfigMap", source["configMapRef"]["name"])["data"]
    for var in container.get("env", []):
        if "value" in var:
            environ[var["name"]] = expanded(var["value"], environ)
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        shipped = resource("Secret", ref["name"])["stringData"][ref["key"]]
        environ[var["name"]] = (filled or {}).get(ref["key"], shipped)
    return environ


def proxy_environment(container: dict[str, Any]) -> dict[str, str]:
    """The REPRO_* environment the sidecar gets, as shipped."""
    return environment(container)


def test_sidecar_serves_the_app_on_loopback_with_settings_the_proxy_accepts() -> None:
    pod = resource("Deployment", "my-app")["spec"]["template"]["spec"]
    box = containers(pod)
    proxy, app = box["repro-proxy"], box["app"]
    assert proxy["restartPolicy"] == "Always"  # a native sidecar: starts before the app
    assert proxy["image"] == f"registry.example.com/repro-proxy:{VERSION}"
    environ = proxy_environment(proxy)
    assert {k for k in environ if k.startswith("REPRO_")} <= {o.env for o in config.OPTIONS}
    args = cli.build_parser().parse_args(proxy["args"])
    settings = config.load({k: v for k, v in vars(args).items() if k != "command"}, environ)
    from_secret = {v["name"] for v in proxy["env"] if "secretKeyRef" in v.get("valueFrom", {})}
    assert {"REPRO_ADMIN_TOKEN", "REPRO_SECRET"} <= from_secret
    # Applied as shipped, no value from this repository is a credential: no admin routes, and a
    # random HMAC secret kept in the store, rather than a placeholder everyone can read here.
    assert settings.admin_token is None and settings.secret is None
    assert settings.verify_rate == 0  # drift sampling costs upstream requests: opt in
    # A literal value holds no secret: the store URL only a reference Kubernetes expands from
    # the Secret; every other secret setting comes from a Secret whole.
    for var in proxy["env"]:
        if "value" in var:
            assert var["name"] == "REPRO_STORE", var
            assert ":$(REDIS_PASSWORD)@" in var["value"], var
    (port,) = proxy["ports"]
    assert port["containerPort"] == settings.port
    app_env = {v["name"]: v.get("value") for v in app["env"]}
    assert app_env["OPENAI_BASE_URL"] == f"http://127.0.0.1:{settings.port}/v1"
    # The kubelet's probes and Prometheus ask by the pod's address, the app by 127.0.0.1.
    hosts = HostCheck(allowed_hosts(settings.host, settings.allowed_host))
    for asked in (f"10.244.3.17:{settings.port}", f"127.0.0.1:{settings.port}"):
        assert hosts.verdict(asked) is Verdict.ALLOWED

    store = re.fullmatch(r"redis://(?::@)?([\w-]+):(\d+)/0", settings.store)
    assert store, settings.store
    redis = resource("Service", store[1])
    assert int(store[2]) in [p["port"] for p in redis["spec"]["ports"]]
    (redis_server,) = resource("StatefulSet", store[1])["spec"]["template"]["spec"]["containers"]
    assert "volatile-lru" in redis_server["args"] and settings.ttl > 0  # entries evictable
    assert (
        redis["spec"]["selector"].items()
        <= resource("StatefulSet", store[1])["spec"]["template"]["metadata"]["labels"].items()
    )


def test_sidecar_probes_resources_and_security() -> None:
    proxy = containers(resource("Deployment")["spec"]["template"]["spec"])["repro-proxy"]
    port = proxy["ports"][0]["name"]
    probes = {
        kind: proxy[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert {p["port"] for p in probes.values()} == {port}
    assert probes["startupProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/healthz"
    for workload in (resource("Deployment"), resource("StatefulSet")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for name, container in containers(pod).items():
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], name
            assert resources["limits"]["memory"], name
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user, "the image runs as a numeric user and group, never root"
    security = proxy["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (int(user[1]), int(user[2]))
    mounts = {m["mountPath"] for m in proxy["volumeMounts"]}
    assert "/tmp" in mounts  # tempfile (the --workers metrics dir) on a read-only root


def test_redis_asks_the_password_the_proxies_send(tmp_path: Path) -> None:
    """With redis-password set in the Secret, the Redis the manifests start refuses a client
    without it, and the proxy's store URL and the readiness probe both carry it."""
    password = secrets.token_hex(16)
    filled = {"redis-password": password}
    redis_pod = resource("StatefulSet", "repro-redis")["spec"]["template"]["spec"]
    redis_container = containers(redis_pod)["redis"]
    redis_env = environment(redis_container, filled)
    args = [expanded(arg, redis_env) for arg in redis_container["args"]]
    assert args[args.index("--requirepass") + 1] == password
    proxy = containers(resource("Deployment")["spec"]["template"]["spec"])["repro-proxy"]
    store = environment(proxy, filled)["REPRO_STORE"]
    with running_redis(tmp_path, *args, password=password) as server:
        here = f"127.0.0.1:{server.port}"
        assert asyncio.run(store_answers(store.replace("repro-redis:6379", here)))
        assert not asyncio.run(store_answers(f"redis://{here}/0"))
        probe = redis_container["readinessProbe"]["exec"]["command"]
        done = subprocess.run(
            [probe[0], "-p", str(server.port), *probe[1:]],
            env={"PATH": "/usr/bin:/bin", **redis_env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.stdout.strip() == "PONG", done.stdout + done.stderr
    shipped_args = [expanded(arg, environment(redis_container)) for arg in redis_container["args"]]
    with running_redis(tmp_path / "shipped", *shipped_args) as server:  # applied as shipped
        shipped = environment(proxy)["REPRO_STORE"]
        local = shipped.replace("repro-redis:6379", f"127.0.0.1:{server.port}")
        assert asyncio.run(store_answers(local))


async def store_answers(url: str) -> bool:
    """Whether the proxy's own store client, opened from `url` as `serve` opens it, is
    served by the Redis there (rather than refused for want of the password)."""
    store = await open_store(url)
    try:
        await store.secret(b"s" * 32)
    except StoreError:
        return False
    finally:
        await store.close()
    return True


def test_redis_admits_only_the_proxy_pods() -> None:
    """Redis holds every stored prompt and answer and takes writes from whoever connects."""
    redis = resource("StatefulSet", "repro-redis")["spec"]["template"]
    app_labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    (port,) = containers(redis["spec"])["redis"]["ports"]
    policies = [
        p
        for p in rendered()
        if p["kind"] == "NetworkPolicy"
        and p["spec"]["podSelector"]["matchLabels"].items() <= redis["metadata"]["labels"].items()
    ]
    assert policies, "no NetworkPolicy selects the Redis pods: every pod in the cluster reaches it"
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            assert rule["from"], "a rule without `from` admits every source"
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, peer  # this namespace's pods, no more
                assert peer["podSelector"]["matchLabels"].items() <= app_labels.items()
            assert [p["port"] for p in rule["ports"]] in ([port["name"]], [port["containerPort"]])


def test_service_monitor_scrapes_the_sidecar_port() -> None:
    monitor = resource("ServiceMonitor")
    selected = [
        s
        for s in rendered()
        if s["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert len(selected) == 1
    service = selected[0]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    deployment = resource("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    proxy = containers(deployment["spec"]["template"]["spec"])["repro-proxy"]
    assert port["targetPort"] == proxy["ports"][0]["name"]
    policy = resource("NetworkPolicy", "my-app")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    named = {
        p["name"]
        for c in containers(deployment["spec"]["template"]["spec"]).values()
        for p in c["ports"]
    }
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == named


def test_prometheus_rule_holds_the_rule_files_groups() -> None:
    groups = {g["name"]: g for f in RULE_FILES for g in load_yaml(f)["groups"]}
    in_k8s = {g["name"]: g for g in resource("PrometheusRule")["spec"]["groups"]}
    assert in_k8s == groups, "copy the groups of deploy/prometheus/rules/ to prometheusrule.yaml"
