"""Test support for the Prometheus checks: the metric names the code exports, samples of every metric, PromQL.

The exported names come from the two metrics modules' registries (operator/metrics.py: its own REGISTRY;
runtime/metrics.py: prometheus_client's default registry, filtered to freeatm_runtime_*), with the suffixes the
text format adds: _total and _created for counters; _bucket, _sum, _count and _created for histograms.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def registries() -> dict[str, tuple[CollectorRegistry, str]]:
    """component → (registry, metric-name prefix)."""
    import prometheus_client

    import freeatm.runtime.metrics  # noqa: F401  (registers the runtime's metrics in the default registry)
    from freeatm.operator import metrics as operator_metrics

    return {
        "operator": (operator_metrics.REGISTRY, "freeatm_operator_"),
        "runtime": (prometheus_client.REGISTRY, "freeatm_runtime_"),
    }


def exported_names() -> dict[str, set[str]]:
    """component → every sample name its /metrics can contain."""
    out: dict[str, set[str]] = {}
    for component, (registry, prefix) in registries().items():
        names: set[str] = set()
        for family in registry.collect():
            if family.name.startswith(prefix):
                names |= {family.name + s for s in SUFFIXES[family.type]}
        out[component] = names
    return out


def touch_all() -> None:
    """Give every freeatm metric a sample (labelled metrics get one child), as a running process would."""
    import freeatm.runtime.metrics as runtime_metrics
    from freeatm.operator import metrics as operator_metrics

    for module in (operator_metrics, runtime_metrics):
        for value in vars(module).values():
            if not isinstance(value, MetricWrapperBase):
                continue
            metric = value.labels(*["x"] * len(value._labelnames)) if value._labelnames else value
            kind = value._type
            if kind == "counter":
                metric.inc()
            elif kind == "gauge":
                metric.set(0.5)
            elif kind in ("histogram", "summary"):
                metric.observe(0.5)
    # freeatm_operator_resources is computed at scrape time from the operator's view of the cluster.
    operator_metrics.RESOURCES.source = lambda: [("SyntheticDataset", "Running"), ("EvalJob", "Waiting")]


def exposition(component: str) -> bytes:
    """The /metrics text of one component, only its freeatm_* families."""
    registry, prefix = registries()[component]

    class Only:
        def collect(self) -> Any:
            return [f for f in registry.collect() if f.name.startswith(prefix)]

    return generate_latest(Only())  # type: ignore[arg-type]


# --- PromQL -------------------------------------------------------------------------------------------------

GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
    "le",
    "start",
    "end",
}


def substitute_grafana_variables(expr: str) -> str:
    """Replace Grafana's $variables: interval ones by a duration, the dashboard's own (in regex matchers) by .*"""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return GRAFANA_VARIABLES.get(name, ".*")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (a tokenizer's view: strings, label matchers, grouping clauses,
    durations, numbers and functions removed). The expression must parse (check it with promtool first)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)  # label lists
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # range / subquery durations
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def promtool_check_rules(promtool: str, groups: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on a rule file holding `groups`."""
    with tempfile.TemporaryDirectory(prefix="freeatm-rules-") as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        return subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
        )
