"""The Argo CD health check (helm/freeatm/health/freeatm.lua), executed with lupa on status fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

lupa = pytest.importorskip("lupa")

HEALTH = Path(__file__).resolve().parents[1] / "helm" / "freeatm" / "health"
SCRIPT = (HEALTH / "freeatm.lua").read_text()
KINDS = ("SyntheticDataset", "MaskPretrainJob", "EvalJob")
T0 = "2025-01-01T00:00:00Z"


def health(obj: dict[str, Any]) -> dict[str, str]:
    """Run the script as Argo CD does: `obj` is the live object, the script returns {status, message}."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return dict(result.items())


def cond(ctype: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": T0}


def resource(
    status: dict[str, Any] | None, generation: int = 1, kind: str = "SyntheticDataset"
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "shapes", "namespace": "ml", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


def test_new_resource_without_status_is_progressing():
    assert health(resource(None))["status"] == "Progressing"
    assert health(resource({}))["status"] == "Progressing"


@pytest.mark.parametrize("kind", KINDS)
def test_succeeded_is_healthy_with_the_output(kind):
    h = health(
        resource(
            {
                "phase": "Succeeded",
                "observedGeneration": 1,
                "conditions": [
                    cond("Ready", "True", "Succeeded", "done"),
                    cond("Complete", "True", "JobComplete"),
                ],
                "outputs": {"uri": "s3://bucket/shapes"},
            },
            kind=kind,
        )
    )
    assert h == {"status": "Healthy", "message": "Succeeded: s3://bucket/shapes"}


def test_failed_is_degraded_with_the_failure_message():
    h = health(
        resource(
            {
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [
                    cond("Ready", "False", "Failed", "see Failed"),
                    cond("Stalled", "True", "BackoffLimitExceeded", "stalled"),
                    cond(
                        "Failed",
                        "True",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ),
                ],
            }
        )
    )
    assert h == {"status": "Degraded", "message": "Job has reached the specified backoff limit"}


def test_invalid_spec_is_degraded_with_the_field_path():
    h = health(
        resource(
            {
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [cond("Stalled", "True", "InvalidSpec", "spec.generation.images: must be > 0")],
            }
        )
    )
    assert h == {"status": "Degraded", "message": "spec.generation.images: must be > 0"}


def test_stalled_without_phase_is_degraded():
    h = health(resource({"conditions": [cond("Stalled", "True", "InvalidSpec", "bad")]}))
    assert h["status"] == "Degraded"


def test_suspended():
    h = health(
        resource(
            {
                "phase": "Suspended",
                "observedGeneration": 1,
                "conditions": [cond("Suspended", "True", "Suspended", "spec.suspend is true")],
            }
        )
    )
    assert h == {"status": "Suspended", "message": "spec.suspend is true"}


def test_waiting_names_the_dependencies():
    h = health(
        resource(
            {
                "phase": "Waiting",
                "observedGeneration": 1,
                "waitingFor": ["SyntheticDataset/shapes", "MaskPretrainJob/a"],
                "conditions": [cond("DependenciesReady", "False", "WaitingForDependencies", "waiting")],
            },
            kind="EvalJob",
        )
    )
    assert h == {"status": "Progressing", "message": "Waiting for SyntheticDataset/shapes, MaskPretrainJob/a"}


def test_waiting_without_list_uses_the_condition():
    h = health(
        resource(
            {
                "phase": "Waiting",
                "conditions": [
                    cond(
                        "DependenciesReady",
                        "False",
                        "DependencyMissing",
                        "SyntheticDataset/shapes does not exist yet",
                    )
                ],
            }
        )
    )
    assert h == {"status": "Progressing", "message": "SyntheticDataset/shapes does not exist yet"}


def test_running_shows_progress():
    h = health(
        resource(
            {
                "phase": "Running",
                "observedGeneration": 1,
                "conditions": [cond("Reconciling", "True", "Running", "Job shapes-gen running")],
                "progress": {"done": 64, "total": 256, "percent": 25, "message": "epoch 1"},
            },
            kind="MaskPretrainJob",
        )
    )
    assert h == {"status": "Progressing", "message": "Running: 25% done (epoch 1)"}


def test_pending_without_progress_uses_reconciling():
    h = health(
        resource(
            {"phase": "Pending", "conditions": [cond("Reconciling", "True", "JobCreated", "Job created")]}
        )
    )
    assert h == {"status": "Progressing", "message": "Job created"}


def test_stale_status_is_progressing_until_the_operator_observes_the_new_generation():
    h = health(resource({"phase": "Succeeded", "observedGeneration": 1}, generation=2))
    assert h["status"] == "Progressing"
    assert "generation 2" in h["message"]


def test_conditions_only_ready_true_is_healthy():
    assert health(resource({"conditions": [cond("Ready", "True", "Succeeded", "ok")]}))["status"] == "Healthy"


def test_argocd_cm_snippet_embeds_the_script_for_each_kind():
    snippet = yaml.safe_load((HEALTH / "argocd-cm.yaml").read_text())
    data = snippet["data"]
    for kind in KINDS:
        assert data[f"resource.customizations.health.freeatm.io_{kind}"] == SCRIPT, (
            f"health/argocd-cm.yaml is out of date for {kind}: run `python tests/test_argocd_health.py`"
        )


EXPECTED = {
    "Pending": "Progressing",
    "Waiting": "Progressing",
    "Running": "Progressing",
    "Succeeded": "Healthy",
    "Failed": "Degraded",
    "Suspended": "Suspended",
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_phase_as_the_operator_writes_it(kind):
    """Statuses built by freeatm.api.conditions.with_phase (what the operator and local mode write), checked
    against the CRD's status schema, read as the expected Argo CD health."""
    from openapi_schema_validator import OAS30Validator

    from freeatm.api.conditions import with_phase
    from freeatm.api.crd import crd_for
    from freeatm.api.status import Status
    from freeatm.api.vocabulary import PHASES, PhaseReason

    schema = crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert set(EXPECTED) == set(PHASES)
    status = Status()
    for phase in PHASES:
        status = with_phase(status, PhaseReason(phase, "Because", f"now {phase}"), generation=3)
        wire = status.to_wire()
        OAS30Validator(schema).validate(wire)
        h = health(resource(wire, generation=3, kind=kind))
        assert h["status"] == EXPECTED[phase], (phase, h)
        if phase != "Succeeded":
            assert h["message"] == f"now {phase}", (phase, h)


def write_snippet() -> None:
    """Regenerate health/argocd-cm.yaml from freeatm.lua."""
    lines = [
        "# Argo CD health checks for freeatm's kinds: merge `data` into the argocd-cm ConfigMap",
        "# (argo-cd Helm chart: configs.cm). Generated from freeatm.lua by `python tests/test_argocd_health.py`.",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: argocd-cm",
        "  namespace: argocd",
        "  labels:",
        "    app.kubernetes.io/name: argocd-cm",
        "    app.kubernetes.io/part-of: argocd",
        "data:",
    ]
    body = "".join(f"    {line}\n" if line else "\n" for line in SCRIPT.splitlines())
    for kind in KINDS:
        lines.append(f"  resource.customizations.health.freeatm.io_{kind}: |")
        lines.append(body.rstrip("\n"))
    (HEALTH / "argocd-cm.yaml").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write_snippet()
