"""The journey dashboard, as code: generated, typed and tested, never hand-edited.

Built with Grafana's own Python SDK (``grafana-foundation-sdk``): its
builders are generated from Grafana's dashboard schema and typed, so mypy
checks a panel's options the way Grafana reads them; grafanalib, the older
choice, has had no release since January 2024 and models panels by hand.
The SDK is marked experimental by Grafana, so the version is pinned and the
committed JSON is what Grafana loads (``deploy/grafana/dashboards/``).

    .venv/bin/python deploy/grafana/dashboards.py           # write the JSON
    .venv/bin/python deploy/grafana/dashboards.py --check   # fail if it differs

Every query is listed by :func:`queries`; a test runs each against the real
Prometheus with the journey rules loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, stat, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable, Row, ThresholdsConfig
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BarGaugeDisplayMode, VizOrientation
from grafana_foundation_sdk.models.dashboard import DataSourceRef, Threshold, ThresholdsMode, VariableRefresh

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards" / "journey.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="journey-prometheus")


def q(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> Dataquery:
    query = Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        query = query.legend_format(legend)
    return query.instant() if instant else query.range()


def series(title: str, unit: str, *targets: Dataquery, description: str = "") -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).height(8).span(12)
    if description:
        panel = panel.description(description)
    for t in targets:
        panel = panel.with_target(t)
    return panel


def bars(title: str, description: str, target: Dataquery) -> bargauge.Panel:
    """Horizontal bars of the latest values (the funnel, the flows)."""
    return (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .orientation(VizOrientation.HORIZONTAL)
        .display_mode(BarGaugeDisplayMode.GRADIENT)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(8)
        .span(12)
        .with_target(target)
    )


def build_dashboard() -> Dashboard:
    red_below = (
        ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps(
            [
                Threshold(value=None, color="red"),
                Threshold(value=0.5, color="orange"),
                Threshold(value=0.8, color="green"),
            ]
        )
    )
    last = ReduceDataOptions().calcs(["lastNotNull"]).values(False)
    return (
        Dashboard("Customer journeys")
        .uid("journey-tracker")
        .tags(["journey", "generated"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(
            QueryVariable("dimension")
            .label("Dimension")
            .datasource(DATASOURCE)
            .query("label_values(journey:segment_customers:sum, dimension)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
        .with_row(Row("Funnel"))
        .with_panel(
            bars(
                "Funnel: customers per stage now",
                "Live customers per stage, summed over all workers (journey_customers)",
                q("journey:customers:sum", "{{stage}}", instant=True),
            )
        )
        .with_panel(
            stat.Panel()
            .title("Bottleneck: the worst stage-to-stage conversion (1h)")
            .description("journey:bottleneck:1h; red under 50%")
            .datasource(DATASOURCE)
            .unit("percentunit")
            .thresholds(red_below)
            .reduce_options(last)
            .height(8)
            .span(12)
            .with_target(q("journey:bottleneck:1h", "{{from_stage}} → {{to_stage}}", instant=True))
        )
        .with_panel(
            series(
                "Customers per stage",
                "short",
                q("sum by (stage) (journey_customers)", "{{stage}}"),
            )
        )
        .with_panel(
            series(
                "Conversion between stages",
                "percentunit",
                q("journey:conversion_ratio:1h", "{{from_stage}} → {{to_stage}} (1h)"),
                q("journey:conversion_ratio:1d", "{{from_stage}} → {{to_stage}} (1d)", ref="B"),
                description="Forward moves from a stage over the customers who entered it, in the window",
            )
        )
        .with_panel(
            series(
                "Drop-off per stage (1h)",
                "percentunit",
                q("journey:stage_dropoff_ratio:1h", "{{stage}}"),
            )
        )
        .with_panel(
            series(
                "Median time in stage",
                "s",
                q(
                    "histogram_quantile(0.5, sum by (stage, le) "
                    "(rate(journey_stage_duration_seconds_bucket[1h])))",
                    "{{stage}}",
                ),
                description="Event time spent in a stage before leaving it",
            )
        )
        .with_row(Row("Traffic and health"))
        .with_panel(
            series(
                "Events by channel",
                "ops",
                q("sum by (channel) (rate(journey_events_by_type_total[$__rate_interval]))", "{{channel}}"),
            )
        )
        .with_panel(
            series(
                "Dead letters, duplicates, replays",
                "ops",
                q(
                    "sum by (reason) (rate(journey_rejected_events_total[$__rate_interval]))",
                    "DLQ {{reason}}",
                ),
                q(
                    'sum(rate(journey_events_total{outcome="duplicate"}[$__rate_interval]))',
                    "duplicates",
                    ref="B",
                ),
                q(
                    'sum(rate(journey_events_total{outcome="replayed"}[$__rate_interval]))',
                    "replayed",
                    ref="C",
                ),
            )
        )
        .with_panel(
            series(
                "Consumer lag and event lag",
                "short",
                q("sum(journey_consumer_lag)", "records behind"),
                q(
                    "histogram_quantile(0.99, sum by (le) "
                    "(rate(journey_event_lag_seconds_bucket[$__rate_interval])))",
                    "p99 event lag (s)",
                    ref="B",
                ),
            )
        )
        .with_panel(
            series(
                "Workers ready, Redis reachable",
                "short",
                q("sum(journey_worker_ready)", "workers ready"),
                q("sum(journey_nudge_gate_up)", "workers reaching Redis", ref="B"),
            )
        )
        .with_row(Row("Stalls and nudges"))
        .with_panel(
            series(
                "Stalls per stage",
                "ops",
                q("sum by (stage) (rate(journey_stalls_total[$__rate_interval]))", "{{stage}}"),
            )
        )
        .with_panel(
            series(
                "Nudges by kind and outcome",
                "ops",
                q(
                    "sum by (kind, outcome) (rate(journey_nudges_total[$__rate_interval]))",
                    "{{kind}} {{outcome}}",
                ),
                q("sum(rate(journey_churn_risk_total[$__rate_interval]))", "churn risks", ref="B"),
                q("sum(rate(journey_win_backs_total[$__rate_interval]))", "win-backs", ref="C"),
            )
        )
        .with_row(Row("Flows, time to convert, segments, lift"))
        .with_panel(
            bars(
                "Flows: moves between stages, customers tracked now",
                "journey:flows:sum: every from → to move, skips, backward moves and defection included",
                q("journey:flows:sum", "{{from_stage}} → {{to_stage}}", instant=True),
            )
        )
        .with_panel(
            series(
                "Time to convert (p50, p90)",
                "s",
                q("journey:time_to_convert_seconds:p50", "{{from_stage}} → {{to_stage}} p50"),
                q("journey:time_to_convert_seconds:p90", "{{from_stage}} → {{to_stage}} p90", ref="B"),
                description="First reaching one stage to first reaching a later one, of those who did",
            )
        )
        .with_panel(
            series(
                "Nudge lift (nudged minus held out) with its 95% interval",
                "percentunit",
                q("journey:nudge_lift:diff", "{{kind}} ({{trigger}}) lift"),
                q(
                    "journey:nudge_lift:diff - journey:nudge_lift:ci95_halfwidth",
                    "{{kind}} low",
                    ref="B",
                ),
                q(
                    "journey:nudge_lift:diff + journey:nudge_lift:ci95_halfwidth",
                    "{{kind}} high",
                    ref="C",
                ),
                description="Not significant while the interval spans 0",
            )
        )
        .with_panel(
            series(
                "Customers per stage by $dimension",
                "short",
                q(
                    'sum by (value, stage) (journey:segment_customers:sum{dimension="$dimension"})',
                    "{{value}} {{stage}}",
                ),
                description="The map's dimensions: values listed in the map, other and unknown",
            )
        )
    )


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build_dashboard().build()) + "\n"


def queries() -> list[str]:
    """Every PromQL expression the dashboard runs."""
    import json

    board = json.loads(render())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is not what deploy/grafana/dashboards.py generates; run it", file=sys.stderr)
            sys.exit(1)
        return
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
