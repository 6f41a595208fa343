"""The operator's Prometheus metrics (docs/architecture.md#observability). The names are the contract of the
Grafana dashboard and alerts.

Labels are low-cardinality: kind, result, phase — never a resource name. Resources by kind and phase are computed
at scrape time from the operator's view of the cluster (a custom collector).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from freeatm.api import KINDS
from freeatm.api.vocabulary import PHASES

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "freeatm_operator_reconciles",
    "Reconcile passes, by kind and result (success, error)",
    ["kind", "result"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "freeatm_operator_reconcile_duration_seconds",
    "Duration of one reconcile pass",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "freeatm_operator_phase_transitions",
    "Phase transitions written, by kind and new phase",
    ["kind", "phase"],
    registry=REGISTRY,
)
JOBS_CREATED = Counter("freeatm_operator_jobs_created", "Jobs created, by kind", ["kind"], registry=REGISTRY)
WORKLOAD_SECONDS = Histogram(
    "freeatm_operator_workload_duration_seconds",
    "Wall-clock time from a workload's start to its end, by kind and result (Succeeded, Failed)",
    ["kind", "result"],
    buckets=(10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 259200),
    registry=REGISTRY,
)
DEPENDENCY_WAIT_SECONDS = Histogram(
    "freeatm_operator_dependency_wait_seconds",
    "Time a resource spent Waiting for its dependencies before its workload was created",
    ["kind"],
    buckets=(0.1, 1, 5, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
    registry=REGISTRY,
)
RESYNCS = Counter(
    "freeatm_operator_resyncs",
    "Resources in progress woken by the resync after resync_seconds without an event (a lost event), by kind",
    ["kind"],
    registry=REGISTRY,
)
RESTARTS = Counter(
    "freeatm_operator_workload_restarts",
    "Workload pod failures that were retried (increase of the Job's status.failed), by kind",
    ["kind"],
    registry=REGISTRY,
)


class ResourcesCollector(Collector):
    """freeatm_operator_resources{kind,phase}: computed at scrape time from `source()` → (kind, phase) pairs."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[tuple[str, str]]] = lambda: ()

    def collect(self):  # type: ignore[no-untyped-def]
        family = GaugeMetricFamily(
            "freeatm_operator_resources", "Resources by kind and phase", labels=["kind", "phase"]
        )
        counts = Tally(self.source())
        for kind in KINDS:
            for phase in (*PHASES, "Unknown"):
                if phase == "Unknown" and not counts.get((kind, phase)):
                    continue
                family.add_metric([kind, phase], counts.get((kind, phase), 0))
        yield family

    def describe(self):  # type: ignore[no-untyped-def]
        return []


RESOURCES = ResourcesCollector()
REGISTRY.register(RESOURCES)

NAMES = (
    "freeatm_operator_reconciles_total",
    "freeatm_operator_reconcile_duration_seconds",
    "freeatm_operator_phase_transitions_total",
    "freeatm_operator_jobs_created_total",
    "freeatm_operator_workload_duration_seconds",
    "freeatm_operator_dependency_wait_seconds",
    "freeatm_operator_workload_restarts_total",
    "freeatm_operator_resyncs_total",
    "freeatm_operator_resources",
)


def serve(port: int) -> None:
    """Serve /metrics of the operator on `port` (0: don't)."""
    if port:
        start_http_server(port, registry=REGISTRY)
