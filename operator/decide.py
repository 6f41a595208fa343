"""Decide: from what one pass observed to what should change and what the status will say (pure functions).

`decide(observed, config)` returns a `Plan`: the actions on the workload (create the Job and its Service, patch
the Job, delete it to replace it), what the status is computed from, the pods whose result finalizer can go once
the status is written, and when to look again. No API calls: every case is a unit test away.

The rules, in order:
- a Job of the resource's name that freeatm did not make for this very resource (labels, owner uid) is never
  adopted; one left by an earlier resource of the same name is deleted first;
- a Job made for an earlier generation is kept when the user declared the same work (`declared_digest`: the spec
  without `suspend`; and the same dependency outputs when they are known), else deleted in the foreground: the
  new Job is created only once the old one and its pods are gone;
- a finished Job's result (its pods' termination messages) is read once into the status;
- without a Job, a resource whose Job of this generation existed and is gone before its result was read fails
  (JobLost) instead of running the same work twice; otherwise its Job is created once its dependencies Succeeded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from freeatm.api.vocabulary import FINAL_PHASES, JOB_NAME_CONFLICT

from .config import OperatorConfig
from .observe import Observed
from .overrides import merge
from .pending import explain_pending
from .status import Observation, finished_at, job_finished, parse_pod_result
from .workload import (
    ANNOTATION_GENERATION,
    ANNOTATION_INPUTS_DIGEST,
    ANNOTATION_SPEC_DIGEST,
    CONTAINER,
    CONTROLLER_UID,
    LABEL_KIND,
    LABEL_NAME,
    RESULT_FINALIZER,
    MissingDependencyOutput,
    declared_digest,
    inputs_digest,
    job_name,
    render,
    service_name,
)

ANNOTATION_SUSPEND = "freeatm.io/suspend"  # the spec.suspend the operator last applied to the Job
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
PENDING_POLL = 2.0
"""Seconds until a Job without running pods is looked at again (doubling, see handlers): FailedCreate Events and
unschedulable pods wake nobody."""
DELETION_POLL = 1.0
"""Seconds until an old Job that is being deleted is looked at again (its DELETED event usually comes first)."""


@dataclass(frozen=True)
class CreateWorkload:
    objects: list[dict[str, Any]]  # the Job first, then its headless Service (bound to the Job's uid)


@dataclass(frozen=True)
class PatchJob:
    name: str
    patch: dict[str, Any]


@dataclass(frozen=True)
class DeleteJob:
    """Foreground deletion: the Job stays (with a deletionTimestamp) until its pods are gone."""

    name: str
    uid: str | None


@dataclass(frozen=True)
class DeleteService:
    name: str


Action = CreateWorkload | PatchJob | DeleteJob | DeleteService


@dataclass
class Plan:
    view: Observation  # what the status is computed from (act adds the Job it created, or the refusal)
    actions: list[Action] = field(default_factory=list)
    release: list[dict[str, Any]] = field(default_factory=list)  # pods to unblock after the status write
    requeue_after: float | None = None
    new_run: bool = False  # a new Job replaces the previous run: its progress is reset


def _annotations(obj: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def _deleting(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def split_pods(
    pods: list[dict[str, Any]], job: Mapping[str, Any] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pods of this Job, pods of earlier Jobs of the same name), told apart by the Job controller's uid label;
    pods without one (made by no Job controller: an emulator) belong to the Job at hand."""
    if job is None:
        return [], list(pods)
    uid = (job.get("metadata") or {}).get("uid")
    mine, stale = [], []
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        pod_uid = labels.get(CONTROLLER_UID) or labels.get("controller-uid")
        (mine if not uid or not pod_uid or pod_uid == uid else stale).append(pod)
    return mine, stale


def finalized(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods that still carry the operator's result finalizer."""
    return [p for p in pods if RESULT_FINALIZER in ((p.get("metadata") or {}).get("finalizers") or [])]


def pod_results(pods: list[dict[str, Any]], succeeded_only: bool) -> list[dict[str, Any]]:
    """Termination messages of the pods' finished runtime containers, index 0 last (it wins)."""
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
                index = _annotations(pod).get(COMPLETION_INDEX) or "0"
                found.append((int(index) if index.isdigit() else 0, term.get("finishedAt") or "", result))
    found.sort(key=lambda t: (-t[0], t[1]))
    return [r for _, _, r in found]


def _same_work(job: Mapping[str, Any], obs: Observed) -> bool:
    """Whether the Job runs what the resource declares now (`suspend` aside), whatever the operator would render
    today. Dependency outputs count only while known: a dependency deleted after it succeeded changes nothing."""
    assert obs.resource is not None
    ann = _annotations(job)
    if ann.get(ANNOTATION_SPEC_DIGEST) != declared_digest(obs.resource):
        return False
    recorded = ann.get(ANNOTATION_INPUTS_DIGEST)
    now = inputs_digest(obs.resource, obs.verdict.outputs) if obs.verdict is not None else None
    return recorded is None or now is None or recorded == now


def decide(obs: Observed, config: OperatorConfig) -> Plan:
    """The plan for one pass over `obs`."""
    view = Observation(generation=obs.generation, now=obs.now)
    if obs.resource is None:
        view.invalid = obs.invalid
        return Plan(view)
    spec = obs.resource.spec
    view.suspend, view.output_uri = spec.suspend, spec.output.uri  # type: ignore[attr-defined]
    view.verdict = obs.verdict
    kind, name = obs.key.kind, obs.key.name
    jname = job_name(kind, name)
    job = obs.job

    if job is not None:
        labels = (job.get("metadata") or {}).get("labels") or {}
        if labels.get(LABEL_KIND) != kind or labels.get(LABEL_NAME) != name or _controller_uid(job) is None:
            view.blocked_reason = JOB_NAME_CONFLICT
            view.blocked = f"a Job named {jname} exists that freeatm did not create; delete or rename it"
            return Plan(view, release=finalized(split_pods(obs.pods, job)[1]))
        if obs.uid and _controller_uid(job) != obs.uid:
            if _deleting(job):
                view.replacing = f"waiting for Job {jname}, left by an earlier {kind}/{name}, to be deleted"
                return Plan(view, release=finalized(obs.pods), requeue_after=DELETION_POLL)
            view.replacing = f"deleting Job {jname}, left by an earlier {kind}/{name}"
            return Plan(
                view,
                actions=[DeleteJob(jname, job["metadata"].get("uid"))],
                release=finalized(obs.pods),
                requeue_after=DELETION_POLL,
            )
        return _with_job(obs, job, view)
    return _without_job(obs, view, config)


def _with_job(obs: Observed, job: dict[str, Any], view: Observation) -> Plan:
    jname = job["metadata"]["name"]
    status, generation = obs.status, obs.generation
    this_generation = generation is None or _annotations(job).get(ANNOTATION_GENERATION) == str(generation)
    finished = job_finished(job)

    if _deleting(job) and not (this_generation and finished and not finished_at(status, generation)):
        # Going away (replaced, TTL, garbage collection, by hand): only its pods are left to release.
        plan = Plan(view, release=finalized(obs.pods), requeue_after=DELETION_POLL)
        if not this_generation:
            view.replacing = f"waiting for the previous Job {jname} and its pods to be deleted"
        elif not finished_at(status, generation):
            view.lost = f"Job {jname} was deleted before it finished; change the spec to run it again"
            plan.requeue_after = None
        return plan

    actions: list[Action] = []
    if not this_generation:
        if not _same_work(job, obs):
            view.replacing = f"replacing Job {jname}: the spec changed; waiting for its pods to be deleted"
            deletions: list[Action] = [DeleteJob(jname, job["metadata"].get("uid"))]
            if obs.key.kind == "MaskPretrainJob":
                deletions.append(DeleteService(service_name(obs.key.kind, obs.key.name)))
            return Plan(
                view,
                actions=deletions,
                release=finalized(obs.pods),
                requeue_after=DELETION_POLL,
                new_run=True,
            )
        keep = {"metadata": {"annotations": {ANNOTATION_GENERATION: str(generation)}}}
        actions.append(PatchJob(jname, keep))
        job = merge(job, keep)

    want = "true" if view.suspend else "false"
    if _annotations(job).get(ANNOTATION_SUSPEND, "false") != want and not finished:
        toggle = {"metadata": {"annotations": {ANNOTATION_SUSPEND: want}}, "spec": {"suspend": view.suspend}}
        actions.append(PatchJob(jname, toggle))
        job = merge(job, toggle)
    view.job = job
    mine, stale = split_pods(obs.pods, job)
    plan = Plan(view, actions=actions, release=finalized(stale))
    if finished:
        if not finished_at(status, generation):
            view.pod_results = pod_results(mine, succeeded_only=finished == "Complete")
        plan.release = finalized(obs.pods)
    elif not (job.get("spec") or {}).get("suspend") and not int((job.get("status") or {}).get("ready") or 0):
        # A pod that Succeeded counts: the Job is between it and its Complete condition (or its next index).
        ran = ("Running", "Succeeded")
        view.running = any((p.get("status") or {}).get("phase") in ran for p in mine) if mine else None
        if not view.running:
            view.pending = explain_pending(job, mine, obs.events)
            plan.requeue_after = PENDING_POLL
    return plan


def _without_job(obs: Observed, view: Observation, config: OperatorConfig) -> Plan:
    assert obs.resource is not None and obs.verdict is not None
    status, generation = obs.status, obs.generation
    kind, namespace, name = obs.key
    jname = job_name(kind, name)
    plan = Plan(view, release=finalized(obs.pods))
    if (
        status.get("jobName")
        and status.get("observedGeneration") == generation
        and status.get("phase") not in FINAL_PHASES
    ):
        view.lost = (
            f"Job {jname} was deleted before its result was read (ttlSecondsAfterFinished, or by hand); "
            "it is not run again for the same spec: change the spec to run it again"
        )
        return plan
    if finished_at(status, generation) or not obs.verdict.ready:
        return plan
    try:
        objects = render(obs.resource, obs.verdict.outputs, config)
    except MissingDependencyOutput as e:
        view.blocked = str(e)
        return plan
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
        if obj["kind"] == "Job":
            obj["metadata"]["annotations"][ANNOTATION_SUSPEND] = "true" if view.suspend else "false"
    plan.actions.append(CreateWorkload(objects))
    plan.requeue_after = PENDING_POLL
    plan.new_run = bool(status.get("progress"))
    return plan
