"""The Grafana dashboard: every PromQL query parses (promtool) and names only metrics the code exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helm_tools import CHART, promtool
from tests.prometheus_tools import (
    exported_names,
    metric_names,
    promtool_check_rules,
    substitute_grafana_variables,
)

DASHBOARD = json.loads((CHART / "dashboards" / "freeatm.json").read_text())


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target."""
    return [
        (p["title"], t["expr"])
        for p in panels(DASHBOARD["panels"])
        for t in p.get("targets", [])
        if "expr" in t
    ]


def variable_queries() -> list[str]:
    out = []
    for var in DASHBOARD["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append(query)
    return out


def test_dashboard_has_queries():
    assert len(queries()) >= 15


def test_every_query_parses():
    """promtool parses each query (Grafana's $variables substituted) as the expression of a recording rule."""
    rules = [
        {"record": f"freeatm:dashboard_query:{i}", "expr": substitute_grafana_variables(expr)}
        for i, (_, expr) in enumerate(queries())
    ]
    proc = promtool_check_rules(promtool(), [{"name": "dashboard", "rules": rules}])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_queries_name_only_exported_metrics():
    exported = set().union(*exported_names().values())
    for title, expr in queries():
        used = metric_names(substitute_grafana_variables(expr))
        assert used, f"{title}: no metric in {expr!r}"
        assert used <= exported, f"panel {title!r} uses metrics no code exports: {used - exported}"
    for query in variable_queries():
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert m, query
        assert m.group(1) in exported, query


def test_dashboard_covers_operator_and_runtime():
    """Resources by phase, reconcile rate and latency, images/s, loss, throughput, evaluation scores."""
    used = set().union(*(metric_names(substitute_grafana_variables(e)) for _, e in queries()))
    for needed in (
        "freeatm_operator_resources",
        "freeatm_operator_reconciles_total",
        "freeatm_operator_reconcile_duration_seconds_bucket",
        "freeatm_runtime_images_generated_total",
        "freeatm_runtime_train_loss",
        "freeatm_runtime_train_images_per_second",
        "freeatm_runtime_eval_score",
    ):
        assert needed in used, needed
    # Most of what the code exports is on the dashboard (the _created series never need a panel).
    exported = {n for n in set().union(*exported_names().values()) if not n.endswith("_created")}
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert len(shown & families) >= 0.8 * len(families), sorted(families - shown)


def test_dashboard_is_well_formed():
    assert DASHBOARD["uid"] == "freeatm-overview" and DASHBOARD["title"]
    ids = [p["id"] for p in panels(DASHBOARD["panels"])]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert {"datasource", "kind", "namespace"} <= names
    for p in panels(DASHBOARD["panels"]):
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (kind) (rate(a_total{x="y", kind=~"$kind"}[$__rate_interval]))', {"a_total"}),
        (
            "histogram_quantile(0.9, sum by (le) (rate(b_bucket[5m]))) / on(kind) group_left c",
            {"b_bucket", "c"},
        ),
        ("absent(d) or e offset 5m and f > bool 1", {"d", "e", "f"}),
        ('label_replace(g, "dst", "$1", "src", "(.*)")', {"g"}),
    ],
)
def test_metric_name_extraction(expr, names):
    assert metric_names(substitute_grafana_variables(expr)) == names
