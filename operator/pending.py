"""Why a Job's pods do not run yet, in the words of the component that knows (pure functions).

The Job controller could not create them (a FailedCreate Event: missing ServiceAccount, PodSecurity, quota,
missing PriorityClass), the scheduler cannot place them (PodScheduled=False with its message, e.g.
`0/1 nodes are available: 1 Insufficient nvidia.com/gpu`), or the kubelet cannot start them (a container waiting
on its image or its configuration). The resource's Pending phase carries that reason and message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from freeatm.api.vocabulary import PhaseReason

# Container waiting reasons that keep a pod from running until someone fixes something.
STUCK_WAITING = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
)


def pod_condition(pod: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def _pod_problem(pod: Mapping[str, Any]) -> PhaseReason | None:
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING:
            image = f" ({cs['image']})" if cs.get("image") else ""
            detail = waiting.get("message") or waiting["reason"]
            return PhaseReason(
                "Pending", waiting["reason"], f"pod {name}, container {cs.get('name')}{image}: {detail}"
            )
    scheduled = pod_condition(pod, "PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        reason = scheduled.get("reason") or "Unschedulable"
        return PhaseReason("Pending", reason, f"pod {name}: {scheduled.get('message') or reason}")
    return None


def _newest(events: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    def when(e: Mapping[str, Any]) -> str:
        return str(e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or "")

    return max(events, key=when, default=None)


def explain_pending(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]
) -> PhaseReason | None:
    """Why `job` (not suspended, not finished) has no running pod, in the words of the component that knows;
    None when nothing is known to be wrong (the pods are on their way). `events` are the Job's Events, `pods`
    its pods."""
    live = [p for p in pods if (p.get("status") or {}).get("phase") in (None, "Pending")]
    for pod in live:
        problem = _pod_problem(pod)
        if problem is not None:
            return problem
    wanted = int((job.get("spec") or {}).get("parallelism") or 1)
    failed_create = [e for e in events if e.get("reason") == "FailedCreate"]
    if len(live) < wanted and failed_create:
        newest = _newest(failed_create) or {}
        message = str(newest.get("message") or "the Job controller could not create pods")
        return PhaseReason("Pending", "FailedCreate", message)
    return None
