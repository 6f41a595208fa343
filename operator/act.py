"""Act: carry out a Plan's actions against the API, and release the pods' result finalizers after the status is
written. What the API server answers that the status must tell (a refused create) comes back in `Acted`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from freeatm.api.vocabulary import CREATE_FORBIDDEN, JOB_REJECTED, PhaseReason

from .decide import Action, CreateWorkload, DeleteJob, DeleteService, PatchJob
from .kube import Conflict, Kube, Rejected, resource_path
from .workload import RESULT_FINALIZER, bind_service

log = logging.getLogger("freeatm.operator")


@dataclass
class Acted:
    job: dict[str, Any] | None = None  # the Job created (or found created by an earlier pass)
    rejected: PhaseReason | None = None  # a refused create
    retry: bool = False  # something should be tried again later
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def rejection(e: Rejected, name: str) -> PhaseReason:
    """The status of a refused Job: an invalid Job stays invalid until the spec changes (JobRejected); a
    forbidden one (quota, admission, RBAC) may pass later (CreateForbidden), so it is retried with backoff."""
    if e.status == 403:
        return PhaseReason(
            "Failed", CREATE_FORBIDDEN, f"the API server refused to create Job {name}: {e.message}"
        )
    return PhaseReason("Failed", JOB_REJECTED, f"the API server rejected Job {name} as invalid: {e.message}")


def act(kube: Kube, owner: Mapping[str, Any], actions: list[Action]) -> Acted:
    """Run `actions` for the resource `owner`, in order."""
    ns = (owner.get("metadata") or {}).get("namespace") or "default"
    acted = Acted()
    for action in actions:
        if isinstance(action, CreateWorkload):
            _create(kube, ns, owner, action.objects, acted)
            if acted.rejected is not None:
                break
        elif isinstance(action, PatchJob):
            kube.patch(resource_path("Job", ns, action.name), action.patch)
        elif isinstance(action, DeleteJob):
            if kube.delete(resource_path("Job", ns, action.name), "Foreground", action.uid):
                acted.deleted.append(action.name)
        elif isinstance(action, DeleteService) and kube.delete(resource_path("Service", ns, action.name)):
            acted.deleted.append(action.name)
    return acted


def _create(
    kube: Kube, ns: str, owner: Mapping[str, Any], objects: list[dict[str, Any]], acted: Acted
) -> None:
    """The Job, then the Service that selects its pods by the Job's uid (rendezvous names resolve once it
    exists; torchrun retries until then)."""
    kopf.adopt(objects, owner=dict(owner))  # type: ignore[arg-type]
    job, *services = objects
    name = job["metadata"]["name"]
    try:
        acted.job = kube.create(resource_path("Job", ns), job)
        acted.created.append(name)
    except Conflict:
        acted.job = kube.get(resource_path("Job", ns, name)) or job
    except Rejected as e:
        acted.rejected = rejection(e, name)
        acted.retry = acted.rejected.reason == CREATE_FORBIDDEN
        return
    for service in services:
        bound = bind_service(service, acted.job)
        sname = bound["metadata"]["name"]
        try:
            kube.create(resource_path("Service", ns), bound)
            acted.created.append(sname)
        except Conflict:
            stored = kube.get(resource_path("Service", ns, sname)) or {}
            old = (stored.get("spec") or {}).get("selector") or {}
            selector = {**{k: None for k in old}, **bound["spec"]["selector"]}
            kube.patch(resource_path("Service", ns, sname), {"spec": {"selector": selector}})


def release(kube: Kube, pods: list[dict[str, Any]]) -> bool:
    """Remove the result finalizer from `pods` (only from the version read: a pod changed since is released on a
    later pass); True when every one was released."""
    done = True
    for pod in pods:
        meta = pod.get("metadata") or {}
        keep = [f for f in meta.get("finalizers") or [] if f != RESULT_FINALIZER]
        body = {"metadata": {"finalizers": keep, "resourceVersion": meta.get("resourceVersion")}}
        try:
            kube.patch(resource_path("Pod", meta.get("namespace") or "default", meta["name"]), body)
        except (Conflict, Rejected) as e:
            log.info("could not release pod %s yet: %s", meta.get("name"), e)
            done = False
    return done
