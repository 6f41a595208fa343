"""The chart's PrometheusRule: `promtool check rules` and `promtool test rules` on the rendered alerts."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm_tools import promtool, render
from tests.prometheus_tools import exported_names, metric_names, promtool_check_rules

ALERT_LABELS = {"team": "ml-platform"}


@pytest.fixture(scope="module")
def groups() -> list[dict[str, Any]]:
    result = render({"rules": {"prometheusRule": {"enabled": True, "alertLabels": ALERT_LABELS}}})["rules"]
    assert result["ok"], result.get("error")
    (rule,) = [d for d in result["docs"] if d["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_promtool_check_rules(groups):
    proc = promtool_check_rules(promtool(), groups)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in groups)} rules found" in proc.stdout


def test_the_alerts_the_issue_asks_for(groups):
    assert set(alerts(groups)) == {
        "FreeatmWorkloadFailed",  # failed workloads
        "FreeatmResourcesStuckWaiting",  # stuck Waiting
        "FreeatmResourcesStuckPending",  # stuck Pending
        "FreeatmReconcileErrors",  # reconcile errors
        "FreeatmWorkloadNoProgress",  # no progress
        "FreeatmWorkloadRestarting",
        "FreeatmOperatorMetricsAbsent",
    }
    for rule in alerts(groups).values():
        assert rule["labels"]["severity"] in ("warning", "info")
        assert rule["labels"]["team"] == "ml-platform"
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_alerts_name_only_exported_metrics(groups):
    exported = set().union(*exported_names().values())
    for name, rule in alerts(groups).items():
        used = metric_names(rule["expr"])
        assert used, name
        assert used <= exported, f"{name} uses metrics no code exports: {used - exported}"


# --- promtool test rules ----------------------------------------------------------------------------------

OP = {"namespace": "freeatm", "job": "freeatm", "pod": "freeatm-operator-0"}


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in {**OP, **labels}.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def expect(alertname: str, at: str, *fired: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": alertname,
        "exp_alerts": [{"exp_labels": {**ALERT_LABELS, **labels}} for labels in fired],
    }


UNIT_TESTS: list[dict[str, Any]] = [
    {  # a workload fails at minute 2: the alert fires, then resolves once the transition leaves the window
        "interval": "1m",
        "input_series": [
            series(
                "freeatm_operator_phase_transitions_total",
                {"kind": "MaskPretrainJob", "phase": "Failed"},
                "0 0 1x40",
            ),
            series(
                "freeatm_operator_phase_transitions_total",
                {"kind": "MaskPretrainJob", "phase": "Running"},
                "0 1x40",
            ),
            series("freeatm_operator_resources", {"kind": "MaskPretrainJob", "phase": "Failed"}, "0 0 1x40"),
        ],
        "alert_rule_test": [
            expect("FreeatmWorkloadFailed", "1m"),
            expect(
                "FreeatmWorkloadFailed",
                "5m",
                {"severity": "warning", "namespace": "freeatm", "kind": "MaskPretrainJob"},
            ),
            expect("FreeatmWorkloadFailed", "30m"),
            expect("FreeatmOperatorMetricsAbsent", "30m"),
        ],
    },
    {  # half the reconciles fail for 40 minutes; a healthy kind does not alert
        "interval": "1m",
        "input_series": [
            series("freeatm_operator_reconciles_total", {"kind": "EvalJob", "result": "error"}, "0+6x40"),
            series("freeatm_operator_reconciles_total", {"kind": "EvalJob", "result": "success"}, "0+6x40"),
            series(
                "freeatm_operator_reconciles_total",
                {"kind": "SyntheticDataset", "result": "success"},
                "0+6x40",
            ),
            series(
                "freeatm_operator_reconciles_total", {"kind": "SyntheticDataset", "result": "error"}, "0x40"
            ),
        ],
        "alert_rule_test": [
            expect("FreeatmReconcileErrors", "10m"),  # pending: `for: 15m`
            expect(
                "FreeatmReconcileErrors",
                "35m",
                {"severity": "warning", "namespace": "freeatm", "kind": "EvalJob"},
            ),
        ],
    },
    {  # one resource waits for 3 hours, one is pending for 40 minutes, then starts
        "interval": "5m",
        "input_series": [
            series("freeatm_operator_resources", {"kind": "EvalJob", "phase": "Waiting"}, "1x36"),
            series(
                "freeatm_operator_resources", {"kind": "SyntheticDataset", "phase": "Pending"}, "1x8 0x28"
            ),
            series(
                "freeatm_operator_resources", {"kind": "SyntheticDataset", "phase": "Running"}, "0x8 1x28"
            ),
        ],
        "alert_rule_test": [
            expect("FreeatmResourcesStuckWaiting", "1h"),
            expect(
                "FreeatmResourcesStuckWaiting",
                "2h30m",
                {"severity": "info", "namespace": "freeatm", "kind": "EvalJob"},
            ),
            expect("FreeatmResourcesStuckPending", "20m"),
            expect(
                "FreeatmResourcesStuckPending",
                "35m",
                {"severity": "info", "namespace": "freeatm", "kind": "SyntheticDataset"},
            ),
            expect("FreeatmResourcesStuckPending", "1h"),
            expect("FreeatmOperatorMetricsAbsent", "1h"),
        ],
    },
    {  # a training pod stuck at 40% for an hour; another progresses; a worker (rank > 0) reports nothing
        "interval": "1m",
        "input_series": [
            {
                "series": 'freeatm_runtime_progress_ratio{namespace="ml",pod="stuck-train-0"}',
                "values": "0.4x60",
            },
            {
                "series": 'freeatm_runtime_progress_ratio{namespace="ml",pod="good-train-0"}',
                "values": "0.1+0.01x60",
            },
            {"series": 'freeatm_runtime_progress_ratio{namespace="ml",pod="good-train-1"}', "values": "0x60"},
            {"series": 'freeatm_runtime_progress_ratio{namespace="ml",pod="done-gen-0"}', "values": "1x60"},
        ],
        "alert_rule_test": [
            expect("FreeatmWorkloadNoProgress", "20m"),
            expect(
                "FreeatmWorkloadNoProgress",
                "45m",
                {"severity": "info", "namespace": "ml", "pod": "stuck-train-0"},
            ),
        ],
    },
    {  # five retried pod failures within the hour
        "interval": "5m",
        "input_series": [
            series(
                "freeatm_operator_workload_restarts_total",
                {"kind": "SyntheticDataset"},
                "0 1 2 3 4 5 5 5 5 5 5 5 5",
            ),
        ],
        "alert_rule_test": [
            expect("FreeatmWorkloadRestarting", "10m"),
            expect(
                "FreeatmWorkloadRestarting",
                "30m",
                {"severity": "info", "namespace": "freeatm", "kind": "SyntheticDataset"},
            ),
        ],
    },
    {  # nothing scraped from the operator
        "interval": "1m",
        "input_series": [{"series": 'up{job="something-else"}', "values": "1x30"}],
        "alert_rule_test": [
            expect("FreeatmOperatorMetricsAbsent", "10m"),
            expect("FreeatmOperatorMetricsAbsent", "20m", {"severity": "warning"}),
        ],
    },
]


def test_promtool_test_rules(groups, tmp_path: Path):
    """Unit tests of every alert with synthetic series (annotations are checked by `check rules` above)."""
    plain = copy.deepcopy(groups)
    for group in plain:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": plain}, sort_keys=False))
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump(
            {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": UNIT_TESTS}, sort_keys=False
        )
    )
    tested = {t["alertname"] for u in UNIT_TESTS for t in u["alert_rule_test"]}
    assert tested == set(alerts(groups))
    proc = subprocess.run(
        [promtool(), "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
