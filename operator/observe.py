"""Observe: one read of everything a reconcile pass decides from — the resource, its Job, the Job's pods and
Events, its dependencies (from the operator's index). Reads only; `decide` (operator/decide.py) does the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import ValidationError

from freeatm.api import Resource, error_lines, parse_resource
from freeatm.api.conditions import now as now_rfc3339

from .dependencies import Lookup, Verdict, evaluate
from .kube import Kube, resource_path
from .status import job_finished
from .workload import job_name

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


class ResourceKey(NamedTuple):
    kind: str
    namespace: str
    name: str


@dataclass(frozen=True)
class Observed:
    """The world as one pass saw it."""

    key: ResourceKey
    body: Mapping[str, Any]  # the resource as stored
    now: str
    resource: Resource | None = None  # None when the spec does not validate
    invalid: list[tuple[str, str]] | None = None
    verdict: Verdict | None = None
    job: dict[str, Any] | None = None  # the Job of the resource's deterministic name, whoever made it
    # pods of every Job of that name (job-name label)
    pods: list[dict[str, Any]] = field(default_factory=list)
    # Events about the Job (read while it has no pods)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def generation(self) -> int | None:
        gen = (self.body.get("metadata") or {}).get("generation")
        return int(gen) if gen is not None else None

    @property
    def uid(self) -> str | None:
        return (self.body.get("metadata") or {}).get("uid")

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.body.get("status") or {})


def manifest(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a stored object the api models validate (status is the operator's and the runtime's)."""
    return {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}


def parse(body: Mapping[str, Any]) -> tuple[Resource | None, list[tuple[str, str]] | None]:
    try:
        return parse_resource(manifest(body)), None
    except ValidationError as e:
        return None, error_lines(e)


def _needs_pods(job: Mapping[str, Any] | None, status: Mapping[str, Any]) -> bool:
    """Whether the pass needs the pods: for a result, to explain a wait, or to release pods of a Job now gone."""
    if job is None:
        return bool(status.get("jobName"))
    if job_finished(dict(job)) or (job.get("metadata") or {}).get("deletionTimestamp"):
        return True
    st = job.get("status") or {}
    return not (job.get("spec") or {}).get("suspend") and not int(st.get("ready") or 0)


def observe(
    kube: Kube,
    key: ResourceKey,
    lookup: Lookup,
    now: str | None = None,
    known_job: Mapping[str, Any] | None = None,
    known_body: Mapping[str, Any] | None = None,
) -> Observed | None:
    """Everything about the resource `key`; None when it no longer exists. `known_job`, `known_body`: its Job and
    the resource itself as their watches delivered them (read from the API server when None)."""
    body = known_body or kube.get(resource_path(key.kind, key.namespace, key.name))
    if body is None:
        return None
    now = now or now_rfc3339()
    resource, invalid = parse(body)
    if resource is None:
        return Observed(key=key, body=body, now=now, invalid=invalid)
    verdict = evaluate(
        (key.kind, key.name),
        resource.dependencies(),
        lookup,
        resource.spec.on_dependency_failure,  # type: ignore[attr-defined]
    )
    jname = job_name(key.kind, key.name)
    job = dict(known_job) if known_job is not None else kube.get(resource_path("Job", key.namespace, jname))
    pods: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    if _needs_pods(job, body.get("status") or {}):
        pods = kube.list(resource_path("Pod", key.namespace), {JOB_NAME_LABEL: jname})
    if job is not None and not pods and not job_finished(job) and not (job.get("spec") or {}).get("suspend"):
        fields = {"involvedObject.kind": "Job", "involvedObject.name": jname}
        uid = job.get("metadata", {}).get("uid")
        events = [
            e
            for e in kube.list(resource_path("Event", key.namespace), fields=fields)
            if (e.get("involvedObject") or {}).get("name") == jname
            and (e.get("involvedObject") or {}).get("kind") == "Job"
            and (not uid or (e.get("involvedObject") or {}).get("uid") in (None, uid))
        ]
    return Observed(
        key=key, body=body, now=now, resource=resource, verdict=verdict, job=job, pods=pods, events=events
    )
