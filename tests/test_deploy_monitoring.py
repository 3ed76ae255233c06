"""The Grafana dashboard and the Prometheus alerts: every expression parses and uses only syncer's metrics."""

from __future__ import annotations

import json

import pytest
import yaml
from deploy_helpers import (
    DOCKER,
    metric_names,
)

# ------------------------------------------------------------------------------------------------ dashboard, alerts

# The metrics' names, as issue 8 fixes them (dashboards and alerts depend on them), and their kinds.
METRICS = {
    "syncer_queue_rows": "gauge",
    "syncer_oldest_pending_seconds": "gauge",
    "syncer_rows_total": "counter",
    "syncer_freshness_seconds": "histogram",
    "syncer_embed_seconds": "histogram",
    "syncer_provider_requests_total": "counter",
    "syncer_tokens_total": "counter",
    "syncer_last_progress_timestamp_seconds": "gauge",
}
SERIES = {
    name + suffix
    for name, kind in METRICS.items()
    for suffix in (("_bucket", "_sum", "_count") if kind == "histogram" else ("",))
}
DATABASE_WIDE = {"syncer_queue_rows", "syncer_oldest_pending_seconds"}  # every worker reports the same values


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DOCKER / "grafana" / "syncer-dashboard.json").read_text())


def dashboard_exprs(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_has_a_datasource_variable_used_by_every_panel(dashboard: dict) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["source"]["datasource"] == wanted
    assert metric_names(variables["source"]["definition"].removeprefix("label_values(").split(",")[0]) == {
        "syncer_queue_rows"
    }
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 6
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"] == wanted and all(t["datasource"] == wanted for t in panel["targets"])


def test_dashboard_queries_parse_and_use_only_syncer_metrics(dashboard: dict) -> None:
    used = set()
    for expr in dashboard_exprs(dashboard):
        names = metric_names(expr)  # raises on PromQL that does not parse
        assert names and names <= SERIES, f"{expr}: {names - SERIES}"
        used |= names
        if names & DATABASE_WIDE:
            assert "max" in expr, f"{expr}: sum over workers counts each row once per worker"
    assert {name.removesuffix("_bucket") for name in used} >= set(METRICS)  # every metric is on the dashboard


def test_dashboard_covers_throughput_lag_queue_latency_and_errors(dashboard: dict) -> None:
    exprs = dashboard_exprs(dashboard)

    def has(*parts: str) -> bool:
        return any(all(part in expr for part in parts) for expr in exprs)

    assert has("rate(syncer_rows_total", "by (outcome)")  # throughput
    assert has("syncer_oldest_pending_seconds")  # lag
    for quantile in ("0.5", "0.99"):
        assert has(f"histogram_quantile({quantile}", "syncer_freshness_seconds_bucket", "le")
        assert has(f"histogram_quantile({quantile}", "syncer_embed_seconds_bucket", "le", "provider")
    assert has("syncer_queue_rows", "by (state)")  # queue by state
    assert has("rate(syncer_provider_requests_total", "outcome")  # provider errors
    assert has("time() -", "syncer_last_progress_timestamp_seconds")  # time since last progress


def test_alert_rules_parse_and_watch_lag_and_dead_rows() -> None:
    rules = {
        rule["alert"]: rule
        for group in yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert set(rules) == {"SyncerLagging", "SyncerDeadRows"}
    for rule in rules.values():
        assert metric_names(rule["expr"]) <= SERIES
        assert rule["labels"]["severity"] and rule["annotations"]["summary"] and rule["annotations"]["description"]
    lag, dead = rules["SyncerLagging"], rules["SyncerDeadRows"]
    assert metric_names(lag["expr"]) == {"syncer_oldest_pending_seconds"} and ">" in lag["expr"]
    assert lag["for"] == "10m"
    assert metric_names(dead["expr"]) == {"syncer_queue_rows"}
    assert 'state="dead"' in dead["expr"] and dead["expr"].endswith("> 0")


def test_promql_check_rejects_what_it_should() -> None:
    """The metric-name check above is only as good as the parser: a typo, a foreign metric and broken PromQL."""
    assert metric_names('sum by (state) (syncer_queue_row{state="dead"})') - SERIES == {"syncer_queue_row"}
    assert metric_names("rate(node_cpu_seconds_total[$__rate_interval])") - SERIES == {"node_cpu_seconds_total"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(syncer_rows_total[5m])")
    with pytest.raises(ValueError):
        metric_names('{__name__=~"syncer_.*"}')
