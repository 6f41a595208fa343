"""operator/metrics.py: the metric names the dashboard and alerts use, and the scrape-time collector."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from freeatm.operator import metrics


def families() -> dict[str, list]:
    text = generate_latest(metrics.REGISTRY).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_names_are_exposed():
    metrics.RECONCILES.labels("SyntheticDataset", "success").inc()
    metrics.RECONCILE_SECONDS.labels("SyntheticDataset").observe(0.01)
    metrics.TRANSITIONS.labels("SyntheticDataset", "Running").inc()
    metrics.JOBS_CREATED.labels("SyntheticDataset").inc()
    metrics.WORKLOAD_SECONDS.labels("SyntheticDataset", "Succeeded").observe(60)
    metrics.DEPENDENCY_WAIT_SECONDS.labels("MaskPretrainJob").observe(5)
    metrics.RESTARTS.labels("EvalJob").inc()
    metrics.RESYNCS.labels("EvalJob").inc()
    text = generate_latest(metrics.REGISTRY).decode()
    for name in metrics.NAMES:
        assert name in text, name
    assert all(n.startswith("freeatm_operator_") for n in families())


def test_resources_by_kind_and_phase_are_computed_at_scrape_time():
    view = [("SyntheticDataset", "Running"), ("SyntheticDataset", "Running"), ("EvalJob", "Waiting")]
    metrics.RESOURCES.source = lambda: list(view)
    samples = {
        (s.labels["kind"], s.labels["phase"]): s.value for s in families()["freeatm_operator_resources"]
    }
    assert samples[("SyntheticDataset", "Running")] == 2 and samples[("EvalJob", "Waiting")] == 1
    assert samples[("MaskPretrainJob", "Succeeded")] == 0
    view.append(("EvalJob", "Waiting"))
    samples = {
        (s.labels["kind"], s.labels["phase"]): s.value for s in families()["freeatm_operator_resources"]
    }
    assert samples[("EvalJob", "Waiting")] == 2
    metrics.RESOURCES.source = lambda: ()


def test_labels_never_carry_resource_names():
    for name, samples in families().items():
        for s in samples:
            assert set(s.labels) <= {"kind", "result", "phase", "le"}, (name, s.labels)
