"""Generate deploy/grafana/dashboards/repro-proxy.json with the Grafana Foundation SDK.

    pip install 'grafana-foundation-sdk==1769699379!11.6.0'
    python deploy/grafana/build_dashboard.py          # rewrite the JSON
    python deploy/grafana/build_dashboard.py --check  # exit 1 if the JSON is out of date

The dashboard reads only metrics the proxy exports and the recording rules of
deploy/prometheus/rules/repro-recording.yml (hit ratio, rotations, determinism ratio, mean verify
distance, upstream error ratio); tests/ops/test_deploy.py checks both, and that the committed
JSON is this script's output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import (
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    VariableHide,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUTPUT = Path(__file__).parent / "dashboards" / "repro-proxy.json"
UID = "repro-proxy"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
MODEL = 'model=~"$model"'
RATE = "$__rate_interval"

# Grafana's Prometheus annotation fields that the SDK's AnnotationQuery does not model: one
# annotation per kind of change, so that each says "rotated" or "rotated back".
ROTATION_ANNOTATIONS = (
    {
        "step": "1m",
        "titleFormat": "Fingerprint rotated: {{model}}",
        "textFormat": "The upstream answered {{model}} with a new system_fingerprint",
        "tagKeys": "model",
        "useValueForTime": False,
    },
    {
        "step": "1m",
        "titleFormat": "Fingerprint rotated back: {{model}}",
        "textFormat": "The upstream answered {{model}} with an earlier system_fingerprint again",
        "tagKeys": "model",
        "useValueForTime": False,
    },
)
PAGE_URL = "${proxy_url}/admin/ui"


def changed(counter: str) -> str:
    """Per model, what a counter gained in the last 2 minutes, counting a series born at its
    first change with its whole value."""
    return f"sum by (model) (({counter} unless {counter} offset 2m) or increase({counter}[2m]))"


def query(expr: str, legend: str = "__auto", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range()


def instant(expr: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).ref_id(ref).instant()


def right_axis(unit: str) -> list[DynamicConfigValue]:
    """A second series in its own unit, read off an axis on the right."""
    return [
        DynamicConfigValue(id_val="unit", value=unit),
        DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
    ]


def graph(title: str, description: str, unit: str, width: int = 12) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(width)
        .fill_opacity(10)
        .legend(
            VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max"])
        )
        .tooltip(VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI))
    )


def single(title: str, description: str, unit: str, expr: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(4)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(instant(expr))
    )


def cache_row(board: db.Dashboard) -> None:
    board.with_row(db.Row("Cache"))
    board.with_panel(
        graph(
            "Requests by cache status",
            "Answers per second by X-Repro-Cache (error: any answer with status >= 400).",
            "reqps",
        )
        .stacking(StackingConfig().mode(common.StackingMode.NORMAL))
        .with_target(query(f"sum by (cache) (rate(repro_requests_total[{RATE}]))", "{{cache}}"))
    )
    board.with_panel(
        graph(
            "Hit ratio",
            "Hits / (hits + misses) over 5 minutes (recording rules). REFRESH and BYPASS answers "
            "never looked the cache up and do not count.",
            "percentunit",
            width=8,
        )
        .min(0)
        .max(1)
        .with_target(query("repro:cache_hit_ratio:rate5m", "all models"))
        .with_target(query(f"model:repro_cache_hit_ratio:rate5m{{{MODEL}}}", "{{model}}", "B"))
    )
    board.with_panel(
        single(
            "Hit ratio (time range)",
            "Hits / (hits + misses) over the dashboard's time range, all models.",
            "percentunit",
            "(sum(increase(repro_cache_hits_total[$__range])) or vector(0))"
            " / ((sum(increase(repro_cache_hits_total[$__range])) or vector(0))"
            " + (sum(increase(repro_cache_misses_total[$__range])) or vector(0)) > 0)",
        )
    )
    board.with_panel(
        graph(
            "Tokens saved",
            "Tokens per second answered from the cache instead of the upstream.",
            "short",
        )
        .stacking(StackingConfig().mode(common.StackingMode.NORMAL))
        .with_target(
            query(
                f"sum by (model, type) (rate(repro_tokens_saved_total{{{MODEL}}}[{RATE}]))",
                "{{model}} {{type}}",
            )
        )
    )
    board.with_panel(
        graph(
            "Default seed injected",
            "Requests per second that carried no seed and got the default one.",
            "reqps",
            width=8,
        ).with_target(
            query(
                f"sum by (model) (rate(repro_seed_injected_total{{{MODEL}}}[{RATE}]))", "{{model}}"
            )
        )
    )
    board.with_panel(
        single(
            "Tokens saved (time range)",
            "Tokens answered from the cache over the dashboard's time range.",
            "short",
            f"sum(increase(repro_tokens_saved_total{{{MODEL}}}[$__range]))",
        )
    )


def fingerprint_row(board: db.Dashboard) -> None:
    board.with_row(db.Row("Fingerprints"))
    board.with_panel(
        table.Panel()
        .title("Current fingerprint per model")
        .description(
            "The system_fingerprint each proxy reports as current (repro_fingerprint_info == 1). "
            "Two rows for one model: the proxies disagree, usually during a rollout."
        )
        .datasource(DATASOURCE)
        .height(8)
        .span(12)
        .with_target(
            instant(
                f"count by (model, fingerprint) (repro_fingerprint_info{{{MODEL}}} == 1)"
            ).format(PromQueryFormat.TABLE)
        )
        .with_transformation(
            DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "indexByName": {"model": 0, "fingerprint": 1, "Value": 2},
                    "renameByName": {"Value": "proxies reporting it"},
                },
            )
        )
    )
    board.with_panel(
        graph(
            "Fingerprint rotations (last 15 minutes)",
            "New system_fingerprints seen per model (recording rule). Each rotation is also an "
            "annotation on the time panels.",
            "short",
        )
        .decimals(0)
        .with_target(query(f"model:repro_fingerprint_changes:increase15m{{{MODEL}}}", "{{model}}"))
    )


def determinism_row(board: db.Dashboard) -> None:
    board.with_row(db.Row("Determinism"))
    board.with_panel(
        graph(
            "Determinism ratio",
            "Share of the HITs re-asked upstream (--verify-rate) whose fresh answer was the same "
            "as the stored one, under the same fingerprint, over the last hour (recording rule; "
            "rotated and error checks do not count). ReproDeterminismDropped fires below 90%.",
            "percentunit",
            width=8,
        )
        .min(0)
        .max(1)
        .with_target(query(f"model:repro_verify_determinism:ratio_rate1h{{{MODEL}}}", "{{model}}"))
    )
    board.with_panel(
        graph(
            "Verify results",
            "Background checks per second by result: same, differs (same fingerprint, another "
            "answer), rotated (the upstream answered under another fingerprint) and error.",
            "reqps",
            width=8,
        )
        .stacking(StackingConfig().mode(common.StackingMode.NORMAL))
        .with_target(
            query(
                f"sum by (result) (rate(repro_verify_total{{{MODEL}}}[{RATE}]))",
                "{{result}}",
            )
        )
    )
    board.with_panel(
        graph(
            "Distance between stored and fresh answers",
            "Normalized edit distance (0%: identical, 100%: nothing in common): the mean over the "
            "last hour per model and fingerprint (recording rule), and the p90 per model.",
            "percentunit",
            width=8,
        )
        .min(0)
        .max(1)
        .with_target(
            query(
                f"model_fingerprint:repro_verify_distance:mean1h{{{MODEL}}}",
                "mean {{model}} {{fingerprint}}",
            )
        )
        .with_target(
            query(
                f"histogram_quantile(0.9, sum by (le, model) "
                f"(rate(repro_verify_distance_bucket{{{MODEL}}}[{RATE}])))",
                "p90 {{model}}",
                "B",
            )
        )
    )


def latency_row(board: db.Dashboard) -> None:
    board.with_row(db.Row("Latency"))
    proxy_latency = graph(
        "Proxy latency by cache status",
        "p50 and p99 of the time to answer a client (repro_request_duration_seconds).",
        "s",
    )
    upstream_latency = graph(
        "Upstream latency by route",
        "p50 and p99 of the time until the upstream's response headers.",
        "s",
    )
    for quantile, ref in (("0.5", "A"), ("0.99", "B")):
        name = f"p{round(float(quantile) * 100)}"
        proxy_latency.with_target(
            query(
                f"histogram_quantile({quantile}, sum by (le, cache) "
                f"(rate(repro_request_duration_seconds_bucket[{RATE}])))",
                f"{name} {{{{cache}}}}",
                ref,
            )
        )
        upstream_latency.with_target(
            query(
                f"histogram_quantile({quantile}, sum by (le, route) "
                f"(rate(repro_upstream_duration_seconds_bucket[{RATE}])))",
                f"{name} {{{{route}}}}",
                ref,
            )
        )
    board.with_panel(proxy_latency)
    board.with_panel(upstream_latency)
    sessions = graph(
        "WebSocket sessions",
        "Realtime sessions relayed now, and how long the sessions that ended lasted (p50, "
        "p99). A session's request counts its handshake in the latency above; its length "
        "is counted here.",
        "short",
    ).with_target(query("sum(repro_websockets_open)", "open"))
    for quantile, ref in (("0.5", "B"), ("0.99", "C")):
        sessions.with_target(
            query(
                f"histogram_quantile({quantile}, sum by (le) "
                f"(rate(repro_websocket_session_seconds_bucket[{RATE}])))",
                f"p{round(float(quantile) * 100)} length",
                ref,
            )
        ).override_by_query(ref, right_axis("s"))
    board.with_panel(sessions)


def error_row(board: db.Dashboard) -> None:
    board.with_row(db.Row("Errors"))
    board.with_panel(
        graph(
            "Upstream answers by status",
            "Upstream answers per second by HTTP status.",
            "reqps",
            width=8,
        ).with_target(
            query(
                f"sum by (status) (rate(repro_upstream_duration_seconds_count[{RATE}]))",
                "{{status}}",
            )
        )
    )
    board.with_panel(
        graph(
            "Upstream errors",
            "Share of upstream answers that were 429 or 5xx (recording rule), and error answers "
            "per second sent to clients (including unreachable upstreams and timeouts).",
            "percentunit",
            width=8,
        )
        .with_target(query("route:repro_upstream_errors:ratio_rate5m", "error share {{route}}"))
        .with_target(
            query(
                f'sum by (route) (rate(repro_requests_total{{cache="error"}}[{RATE}]))',
                "errors to clients/s {{route}}",
                "B",
            )
        )
        .override_by_query("B", right_axis("reqps"))
    )
    board.with_panel(
        graph(
            "Store errors",
            "Failed store operations per second; the proxy failed open on each (a lookup became "
            "a MISS, a write was skipped).",
            "ops",
            width=8,
        ).with_target(query(f"sum by (op) (rate(repro_store_errors_total[{RATE}]))", "{{op}}"))
    )


def storage_row(board: db.Dashboard) -> None:
    board.with_row(db.Row("Storage"))
    board.with_panel(
        graph(
            "Compression of stored answers",
            "Bytes of the answers each process stored over the bytes they stand for uncompressed "
            "(request and answer); 1 or more with --compression 0. What the store holds in all: "
            "repro-proxy stats.",
            "percentunit",
        )
        .min(0)
        .with_target(query("repro_store_compression_ratio", "{{instance}}"))
    )


def variables(board: db.Dashboard) -> None:
    board.with_variable(db.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    board.with_variable(
        db.TextBoxVariable("proxy_url")
        .label("Proxy URL (for the page link)")
        .default_value("http://127.0.0.1:8080")
        .description("Where operators reach the proxy: the dashboard links to its /admin/ui")
    )
    board.with_variable(
        db.QueryVariable("model")
        .label("Model")
        .datasource(DATASOURCE)
        .query("label_values(repro_fingerprint_info, model)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .hide(VariableHide.DONT_HIDE)
    )


def build() -> dict[str, Any]:
    board = (
        db.Dashboard("repro-proxy")
        .uid(UID)
        .description("Cache, fingerprints, determinism, latency and errors of repro-proxy.")
        .tags(["repro-proxy", "llm", "cache"])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .annotation(
            db.AnnotationQuery()
            .name("Fingerprint rotations")
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color("orange")
            .expr(
                f"{changed('repro_fingerprint_changes_total')}"
                f" - {changed('repro_fingerprint_flaps_total')} > 0"
            )
        )
        .annotation(
            db.AnnotationQuery()
            .name("Fingerprint rotations back")
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color("purple")
            .expr(f"{changed('repro_fingerprint_flaps_total')} > 0")
        )
        .link(
            db.DashboardLink("repro-proxy operators' page")
            .type(DashboardLinkType.LINK)
            .url(PAGE_URL)
            .tooltip("Fingerprint timelines and what changed at each rotation (admin token)")
            .icon("external link")
            .target_blank(True)
        )
    )
    variables(board)
    for row in (
        cache_row,
        fingerprint_row,
        determinism_row,
        latency_row,
        error_row,
        storage_row,
    ):
        row(board)
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    for annotation, fields in zip(data["annotations"]["list"], ROTATION_ANNOTATIONS, strict=True):
        annotation.update(fields)
    return data


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--check"]:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
