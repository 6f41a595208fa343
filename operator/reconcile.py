"""One reconcile pass: observe → decide → act → write the status once → release the pods' results.

observe (operator/observe.py) reads the resource, its Job, the Job's pods and Events and the dependencies;
decide (operator/decide.py) is a pure function from that to the actions and the status; act (operator/act.py)
applies the actions; the status is written through the /status subresource in one merge patch, and only then are
the pods' result finalizers removed, so a result is never lost between the pod and the status. Idempotent: a
pass that finds everything in place writes nothing, so the operator can be restarted at any point.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

from freeatm.api.conditions import get_condition
from freeatm.api.vocabulary import FINAL_PHASES

from . import metrics
from .act import act, release
from .config import OperatorConfig
from .decide import DeleteJob, PatchJob, decide, finalized
from .dependencies import Lookup
from .events import Event, transition_event
from .kube import Kube, resource_path
from .observe import JOB_NAME_LABEL, ResourceKey, observe
from .status import OWNED, desired_status, status_patch
from .workload import LABEL_KIND, LABEL_NAME, job_name, service_name
from .workqueue import WorkQueue


class Signature(NamedTuple):
    """What a reconcile depends on in the resource itself (progress updates by the workload are not in it)."""

    generation: int | None
    owned_status: str


class JobState(NamedTuple):
    """What about a Job matters to its owner (a change of it wakes the owner)."""

    suspended: bool
    active: int
    succeeded: int
    failed: int
    ready: int
    conditions: tuple[str, ...]  # types of the True conditions
    deleting: bool

    @property
    def blank(self) -> bool:
        """No status yet: a Job its owner just created (or found), nothing new to tell."""
        return not (self.active or self.succeeded or self.failed or self.ready or self.conditions)


@dataclass
class Memory:
    """What the operator remembers about one resource between passes."""

    stored_phase: str | None = None  # the phase last seen stored (a change wakes the dependents)
    known: bool = False  # stored_phase was seen at least once
    written: Signature | None = None  # the resource's signature after the last pass (its own echo is skipped)
    phase: str | None = None  # the phase the last pass computed (metrics, resync)
    seen_at: float = 0.0  # time.monotonic() of the last watch event (resync)
    first: Mapping[str, Any] | None = None  # the resource as its watch delivered it, until a first pass wrote
    retries: int = 0  # consecutive failed passes (backoff)
    polls: int = 0  # consecutive passes that asked to look again (backoff)


@dataclass
class Context:
    """What the handlers share: the API client, the configuration, the memory of resources and the Jobs as the
    Job watch last delivered them."""

    kube: Kube
    config: OperatorConfig
    resources: dict[ResourceKey, Memory] = field(default_factory=dict)
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (namespace, name) → Job
    served: frozenset[str] = frozenset()  # the freeatm kinds the API server serves (operator/main.py)
    queue: WorkQueue[ResourceKey] | None = None  # the passes to run (operator/main.py starts it)
    index: Any = None  # kopf's index of the resources, as its handlers last received it (dependencies)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def memory(self, key: ResourceKey) -> Memory:
        """The memory of `key` (created on first use); hold `lock` while using it."""
        return self.resources.setdefault(key, Memory())

    def forget(self, key: ResourceKey) -> None:
        with self.lock:
            self.resources.pop(key, None)

    def remember_job(self, job: Mapping[str, Any]) -> None:
        meta = job.get("metadata") or {}
        with self.lock:
            self.jobs[(meta.get("namespace") or "default", meta["name"])] = lean_job(job)

    def forget_job(self, namespace: str, name: str) -> None:
        with self.lock:
            self.jobs.pop((namespace, name), None)

    def phase_counts(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(key.kind, m.phase) for key, m in self.resources.items() if m.phase is not None]


@dataclass
class Outcome:
    stored: Mapping[str, Any]  # the resource after the pass
    phase: str
    event: Event | None = None
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    retry: bool = False  # something failed that a later pass should try again (with backoff)
    requeue_after: float | None = None  # look again after this long, even without an event


def signature(body: Mapping[str, Any]) -> Signature:
    status = body.get("status") or {}
    owned = json.dumps(
        {k: status.get(k) for k in OWNED if status.get(k) not in (None, [], 0)}, sort_keys=True
    )
    return Signature((body.get("metadata") or {}).get("generation"), owned)


def lean_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """A Job without what no pass reads (its pod template, managedFields): a thousand of them stay small."""
    meta = {k: v for k, v in (job.get("metadata") or {}).items() if k != "managedFields"}
    spec = {k: v for k, v in (job.get("spec") or {}).items() if k != "template"}
    return {**job, "metadata": meta, "spec": spec}


def job_state(job: Mapping[str, Any]) -> JobState:
    st = job.get("status") or {}
    return JobState(
        suspended=bool((job.get("spec") or {}).get("suspend")),
        active=int(st.get("active") or 0),
        succeeded=int(st.get("succeeded") or 0),
        failed=int(st.get("failed") or 0),
        ready=int(st.get("ready") or 0),
        conditions=tuple(
            sorted(c.get("type", "") for c in st.get("conditions") or [] if c.get("status") == "True")
        ),
        deleting=bool((job.get("metadata") or {}).get("deletionTimestamp")),
    )


def _seconds_between(start: str | None, end: str | None) -> float | None:
    try:
        a = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        b = datetime.fromisoformat(str(end).replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((b - a).total_seconds(), 0.0)


def reconcile(key: ResourceKey, lookup: Lookup, ctx: Context, now: str | None = None) -> Outcome | None:
    """One pass over the resource `key`; None when it no longer exists. Its Job comes from the Job watch when
    the watch has delivered it, else from the API server."""
    kube = ctx.kube
    jname = job_name(key.kind, key.name)
    with ctx.lock:
        known = ctx.jobs.get((key.namespace, jname))
        mem = ctx.memory(key)
        body, mem.first = mem.first, None
    obs = observe(kube, key, lookup, now, known, body)
    if obs is None:
        return None
    plan = decide(obs, ctx.config)
    acted = act(kube, obs.body, plan.actions)
    if acted.job is not None and (acted.job.get("metadata") or {}).get("uid"):
        ctx.remember_job(acted.job)
    elif any(isinstance(a, (PatchJob, DeleteJob)) for a in plan.actions):
        ctx.forget_job(key.namespace, jname)  # read it afresh until the watch delivers the change
    view = plan.view
    if acted.job is not None:
        view = replace(view, job=acted.job)
    if acted.rejected is not None:
        view = replace(view, job=None, rejected=acted.rejected)

    current = obs.status
    desired = desired_status(current, view)
    patch = status_patch(current, desired)
    if plan.new_run and current.get("progress") and acted.rejected is None:
        patch["progress"] = None
    stored: Mapping[str, Any] | None = obs.body
    if patch:
        written = {k: v for k, v in {**current, **patch}.items() if v is not None}
        with ctx.lock:  # the write's watch event can come before its response: know it as our echo already
            mem.written, mem.first = signature({**obs.body, "status": written}), None
        path = resource_path(key.kind, key.namespace, key.name, "status")
        stored = kube.patch(path, {"status": patch})
        if stored is None:
            return None
    # The result is in the status now: the pods (and through them a TTL-deleted Job) may go.
    released = release(kube, plan.release)

    _count(key.kind, obs.body, current, desired, view, acted.created, obs.now)
    ready = get_condition(desired["conditions"], "Ready") or {}
    event = transition_event(
        current.get("phase"), desired["phase"], ready.get("reason", ""), ready.get("message", "")
    )
    if event is not None:
        metrics.TRANSITIONS.labels(key.kind, desired["phase"]).inc()
    return Outcome(
        stored=stored,
        phase=desired["phase"],
        event=event,
        created=acted.created,
        deleted=acted.deleted,
        retry=acted.retry or not released,
        requeue_after=plan.requeue_after,
    )


def _count(
    kind: str,
    body: Mapping[str, Any],
    current: Mapping[str, Any],
    desired: Mapping[str, Any],
    view: Any,
    created: list[str],
    now: str,
) -> None:
    """The pass's metrics: Jobs created, dependency wait, restarts, workload durations."""
    name = (body.get("metadata") or {}).get("name", "")
    if job_name(kind, name) in created:
        metrics.JOBS_CREATED.labels(kind).inc()
        dep = get_condition(current.get("conditions"), "DependenciesReady")
        if dep and dep.get("status") == "False":
            waited = _seconds_between(dep.get("lastTransitionTime"), now)
            if waited is not None:
                metrics.DEPENDENCY_WAIT_SECONDS.labels(kind).observe(waited)
    before, after = int(current.get("restarts") or 0), int(desired.get("restarts") or 0)
    if view.job is not None and after > before:
        metrics.RESTARTS.labels(kind).inc(after - before)
    if current.get("phase") != desired["phase"] and desired["phase"] in FINAL_PHASES and view.job:
        took = _seconds_between(desired.get("startTime"), desired.get("completionTime"))
        if took is not None:
            metrics.WORKLOAD_SECONDS.labels(kind, desired["phase"]).observe(took)


def delete_workload(kube: Kube, key: ResourceKey) -> list[str]:
    """Delete a deleted resource's Job and Service (owner references do it on a real cluster; this is explicit)
    and release its pods' results, which nobody will read."""
    kind, ns, name = key
    gone = []
    jname = job_name(kind, name)
    if kube.delete(resource_path("Job", ns, jname)):
        gone.append(jname)
    if kind == "MaskPretrainJob" and kube.delete(resource_path("Service", ns, service_name(kind, name))):
        gone.append(service_name(kind, name))
    release(kube, finalized(kube.list(resource_path("Pod", ns), {JOB_NAME_LABEL: jname})))
    return gone


def job_owner(job: Mapping[str, Any]) -> ResourceKey | None:
    """The resource a Job of freeatm's runs, from the Job's labels (the Job lives in its namespace)."""
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(LABEL_KIND) and labels.get(LABEL_NAME):
        return ResourceKey(labels[LABEL_KIND], meta.get("namespace") or "default", labels[LABEL_NAME])
    return None
