"""The reconciler: read the world, compute the desired objects and status with pure functions, apply the difference.

One pass for one resource: validate the spec; find its Job by name; when the spec changed since the Job was made,
replace it (or only patch `suspend`); without a Job, check the dependencies and create it once they Succeeded;
follow the Job (and, when it finishes, its pods' termination messages) into the status. Idempotent: a pass that
finds everything in place changes nothing, so the operator can be restarted at any point.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf
from pydantic import ValidationError

from freeatm.api import Resource, error_lines, parse_resource
from freeatm.api.conditions import get_condition
from freeatm.api.conditions import now as now_rfc3339

from . import metrics
from .config import OperatorConfig
from .dependencies import Lookup, evaluate
from .events import Event, transition_event
from .kube import Conflict, Kube, resource_path
from .status import Observation, desired_status, job_finished, parse_pod_result, status_patch
from .workload import (
    ANNOTATION_GENERATION,
    ANNOTATION_SPEC_HASH,
    CONTAINER,
    LABEL_KIND,
    LABEL_NAME,
    MissingDependencyOutput,
    job_name,
    render,
    service_name,
)

ANNOTATION_SUSPEND = "freeatm.io/suspend"  # the spec.suspend the operator last applied to the Job
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


@dataclass
class Context:
    """What the handlers share: the API client, the configuration and small in-memory memories."""

    kube: Kube
    config: OperatorConfig
    last_phase: dict[tuple[str, str, str], str | None] = field(default_factory=dict)
    last_job: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    phases: dict[tuple[str, str, str], str] = field(default_factory=dict)
    written: dict[tuple[str, str, str], tuple[Any, ...]] = field(default_factory=dict)
    seen: dict[tuple[str, str, str], float] = field(default_factory=dict)
    """time.monotonic() of each resource's last watch event, for the resync."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def phase_counts(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(key[1], phase) for key, phase in self.phases.items()]


@dataclass
class Outcome:
    patch: dict[str, Any]
    phase: str
    event: Event | None = None
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def manifest(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a stored object the api models validate (status is the operator's and the runtime's)."""
    return {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}


def _seconds_between(start: str | None, end: str | None) -> float | None:
    try:
        a = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        b = datetime.fromisoformat(str(end).replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((b - a).total_seconds(), 0.0)


def pod_results(kube: Kube, namespace: str, job: str, succeeded_only: bool) -> list[dict[str, Any]]:
    """Termination messages of the Job's finished runtime containers, index 0 last."""
    pods = kube.list(resource_path("Pod", namespace), {JOB_NAME_LABEL: job})
    found: list[tuple[int, str, dict[str, Any]]] = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") != CONTAINER or not term:
                continue
            if succeeded_only and term.get("exitCode") != 0:
                continue
            result = parse_pod_result(term.get("message"))
            if result is not None:
                ann = pod.get("metadata", {}).get("annotations") or {}
                index = int(ann.get(COMPLETION_INDEX, 0) or 0)
                found.append((index, term.get("finishedAt") or "", result))
    found.sort(key=lambda t: (-t[0], t[1]))
    return [r for _, _, r in found]


def reconcile(body: Mapping[str, Any], lookup: Lookup, ctx: Context, now: str | None = None) -> Outcome:
    """One reconcile pass; returns the status merge patch and what happened (the caller applies the patch)."""
    now = now or now_rfc3339()
    kind = body["kind"]
    meta = body.get("metadata") or {}
    ns, name = meta.get("namespace") or "default", meta["name"]
    generation = meta.get("generation")
    current: dict[str, Any] = dict(body.get("status") or {})
    obs = Observation(generation=generation, now=now)
    outcome_created: list[str] = []
    outcome_deleted: list[str] = []
    kube = ctx.kube

    try:
        resource: Resource | None = parse_resource(manifest(body))
    except ValidationError as e:
        resource, obs.invalid = None, error_lines(e)

    jname = job_name(kind, name)
    jpath = resource_path("Job", ns, jname)
    job = kube.get(jpath) if resource is not None else None
    if job is not None and (job.get("metadata", {}).get("labels") or {}).get(LABEL_NAME) != name:
        obs.blocked = f"a Job named {jname} exists that freeatm did not create; delete or rename it"
        obs.blocked_reason = "JobNameConflict"
        job = None
        resource_blocked = True
    else:
        resource_blocked = False

    if resource is not None and not resource_blocked:
        spec = resource.spec
        obs.suspend, obs.output_uri = spec.suspend, spec.output.uri  # type: ignore[attr-defined]
        key = (kind, name)
        job_gen = ((job or {}).get("metadata", {}).get("annotations") or {}).get(ANNOTATION_GENERATION)
        if job is not None and generation is not None and job_gen != str(generation):
            # The spec changed since this Job was made: keep it when it would run the same thing, else replace it.
            verdict = evaluate(key, resource.dependencies(), lookup, spec.on_dependency_failure)
            keep = False
            if verdict.ready:
                try:
                    wanted = render(resource, verdict.outputs, ctx.config)[0]
                    keep = wanted["metadata"]["annotations"][ANNOTATION_SPEC_HASH] == (
                        job["metadata"].get("annotations") or {}
                    ).get(ANNOTATION_SPEC_HASH)
                except MissingDependencyOutput:
                    keep = False
            if keep:
                job = (
                    kube.patch(jpath, {"metadata": {"annotations": {ANNOTATION_GENERATION: str(generation)}}})
                    or job
                )
            else:
                kube.delete(jpath)
                kube.delete(resource_path("Service", ns, service_name(kind, name)))
                outcome_deleted.append(jname)
                job = None
                for k in ("startTime", "completionTime", "restarts", "outputs", "jobName"):
                    current.pop(k, None)
                current["phase"] = None

        if job is not None:
            want = "true" if spec.suspend else "false"
            if (job["metadata"].get("annotations") or {}).get(
                ANNOTATION_SUSPEND, "false"
            ) != want and not job_finished(job):
                job = (
                    kube.patch(
                        jpath,
                        {
                            "metadata": {"annotations": {ANNOTATION_SUSPEND: want}},
                            "spec": {"suspend": spec.suspend},
                        },
                    )
                    or job
                )
            finished = job_finished(job)
            if finished and current.get("phase") not in ("Succeeded", "Failed"):
                obs.pod_results = pod_results(kube, ns, jname, succeeded_only=finished == "Complete")
            failed = int((job.get("status") or {}).get("failed") or 0)
            if failed > int(current.get("restarts") or 0):
                metrics.RESTARTS.labels(kind).inc(failed - int(current.get("restarts") or 0))
            obs.job = job
        else:
            ready_cond = get_condition(current.get("conditions"), "Ready") or {}
            finished_here = (
                current.get("phase") in ("Succeeded", "Failed")
                and current.get("observedGeneration") == generation
                and (
                    current.get("phase") == "Succeeded"
                    or ready_cond.get("reason") not in ("InvalidSpec", "DependencyFailed", "DependencyCycle")
                )
            )
            if not finished_here:
                verdict = evaluate(key, resource.dependencies(), lookup, spec.on_dependency_failure)
                obs.verdict = verdict
                if verdict.ready:
                    try:
                        objects = render(resource, verdict.outputs, ctx.config)
                    except MissingDependencyOutput as e:
                        obs.blocked = str(e)
                    else:
                        for obj in objects:
                            obj["metadata"]["annotations"] = {
                                **(obj["metadata"].get("annotations") or {}),
                                **(
                                    {ANNOTATION_SUSPEND: "true" if spec.suspend else "false"}
                                    if obj["kind"] == "Job"
                                    else {}
                                ),
                            }
                            obj["metadata"]["namespace"] = ns
                        kopf.adopt(objects, owner=body)  # type: ignore[arg-type]
                        job = _create_workload(kube, ns, objects, outcome_created)
                        if outcome_created and jname in outcome_created:
                            metrics.JOBS_CREATED.labels(kind).inc()
                            dep = get_condition(current.get("conditions"), "DependenciesReady")
                            if dep and dep.get("status") == "False":
                                waited = _seconds_between(dep.get("lastTransitionTime"), now)
                                if waited is not None:
                                    metrics.DEPENDENCY_WAIT_SECONDS.labels(kind).observe(waited)
                        obs.job = job
                        current.setdefault("startTime", now)

    desired = desired_status(current, obs)
    patch = status_patch(body.get("status") or {}, desired)
    ready = get_condition(desired["conditions"], "Ready") or {}
    event = transition_event(
        (body.get("status") or {}).get("phase"),
        desired["phase"],
        ready.get("reason", ""),
        ready.get("message", ""),
    )
    if event is not None:
        metrics.TRANSITIONS.labels(kind, desired["phase"]).inc()
        if desired["phase"] in ("Succeeded", "Failed") and obs.job is not None:
            took = _seconds_between(desired.get("startTime"), desired.get("completionTime"))
            if took is not None:
                metrics.WORKLOAD_SECONDS.labels(kind, desired["phase"]).observe(took)
    return Outcome(
        patch=patch, phase=desired["phase"], event=event, created=outcome_created, deleted=outcome_deleted
    )


def _create_workload(
    kube: Kube, ns: str, objects: list[dict[str, Any]], created: list[str]
) -> dict[str, Any]:
    """Create the Service (first, so that rendezvous names resolve) and the Job; return the Job as stored."""
    job: dict[str, Any] | None = None
    for obj in sorted(objects, key=lambda o: o["kind"] != "Service"):
        path = resource_path(obj["kind"], ns)
        try:
            stored = kube.create(path, obj)
            created.append(obj["metadata"]["name"])
        except Conflict:
            stored = kube.get(resource_path(obj["kind"], ns, obj["metadata"]["name"])) or obj
        if obj["kind"] == "Job":
            job = stored or obj
    assert job is not None
    return job


def delete_workload(kube: Kube, kind: str, namespace: str, name: str) -> list[str]:
    """Delete a resource's Job and Service (owner references do it on a real cluster; this is explicit)."""
    gone = []
    if kube.delete(resource_path("Job", namespace, job_name(kind, name))):
        gone.append(job_name(kind, name))
    if kind == "MaskPretrainJob" and kube.delete(
        resource_path("Service", namespace, service_name(kind, name))
    ):
        gone.append(service_name(kind, name))
    return gone


def job_owner(job: Mapping[str, Any]) -> tuple[str, str] | None:
    labels = job.get("metadata", {}).get("labels") or {}
    if labels.get(LABEL_KIND) and labels.get(LABEL_NAME):
        return labels[LABEL_KIND], labels[LABEL_NAME]
    return None


def job_state(job: Mapping[str, Any]) -> tuple[Any, ...]:
    """What about a Job matters to its owner's status (a change of it wakes the owner)."""
    st = job.get("status") or {}
    conds = tuple(sorted(c.get("type", "") for c in st.get("conditions") or [] if c.get("status") == "True"))
    return (
        bool((job.get("spec") or {}).get("suspend")),
        st.get("active"),
        st.get("succeeded"),
        st.get("failed"),
        st.get("ready"),
        conds,
    )
