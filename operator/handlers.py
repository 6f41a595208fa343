"""Thin kopf handlers: index the resources, reconcile on every event, wake owners and dependents.

Level-triggered: every watch event of a freeatm resource runs one reconcile pass (operator/reconcile.py), whose
status patch kopf applies. Two wake-ups make it event-driven rather than timer-driven:
- a Job's status change touches its owner (an annotation patch → a watch event → a reconcile);
- a resource's stored phase change touches the dependents that wait on it (found in the kopf index).
The resync is the safety net: a resource still in progress that has seen no event for
`OperatorConfig.resync_seconds` is touched too (`resync`), so a lost Job event or a failed wake-up only delays it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from freeatm.api import GROUP, KINDS, VERSION, parse_resource
from freeatm.api.conditions import now as now_rfc3339

from . import metrics
from .dependencies import DEPENDENCY_REASONS, Summary
from .events import Event, event_object
from .kube import resource_path
from .reconcile import Context, delete_workload, job_owner, job_state, manifest, reconcile
from .status import OWNED
from .workload import LABEL_MANAGED_BY, MANAGED_BY

INDEX = "freeatm_resources"
ANNOTATION_WAKE = "freeatm.io/wake"
RETRY_SECONDS = 5.0
QUIET = ("Succeeded", "Failed", "Suspended")
"""Phases that only a spec change or a dependency's wake-up moves on: never resynced."""
log = logging.getLogger("freeatm.operator")


def raw_dependencies(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Dependencies of a stored resource, also when its spec does not validate (refs read directly)."""
    try:
        return parse_resource(manifest(body)).dependencies()
    except (ValidationError, ValueError):
        spec = body.get("spec") or {}
        deps: list[tuple[str, str]] = []
        if isinstance(spec.get("dataset"), dict) and spec["dataset"].get("ref"):
            deps.append(("SyntheticDataset", str(spec["dataset"]["ref"])))
        for c in spec.get("checkpoints") or []:
            if isinstance(c, dict) and c.get("ref"):
                deps.append(("MaskPretrainJob", str(c["ref"])))
        for d in spec.get("dependsOn") or []:
            if isinstance(d, dict) and d.get("kind") in KINDS and d.get("name"):
                deps.append((d["kind"], str(d["name"])))
        return list(dict.fromkeys(deps))


def summarize(body: Mapping[str, Any]) -> dict[str, Any]:
    """The index entry of a resource: what dependents and the dependency checks need."""
    status = body.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    return {
        "phase": status.get("phase"),
        "reason": ready.get("reason"),
        "outputs": status.get("outputs") or {},
        "deps": [list(d) for d in raw_dependencies(body)],
    }


def _lookup(index: Any, namespace: str):  # type: ignore[no-untyped-def]
    def lookup(kind: str, name: str) -> Summary | None:
        store = index.get((namespace, kind, name)) if index is not None else None
        for value in store or ():
            return value
        return None

    return lookup


def _cares(summary: Summary) -> bool:
    """Whether a dependent would act on a change of its dependencies (it waits, or failed because of them)."""
    phase = summary.get("phase")
    return phase in (None, "Waiting", "Pending") or (
        phase == "Failed" and summary.get("reason") in DEPENDENCY_REASONS
    )


def touch(ctx: Context, kind: str, namespace: str, name: str, why: str) -> None:
    """Make kopf see an event for the resource: patch a wake-up annotation."""
    ctx.kube.patch(
        resource_path(kind, namespace, name),
        {"metadata": {"annotations": {ANNOTATION_WAKE: f"{why}@{time.time_ns()}"}}},
    )


def wake_dependents(
    ctx: Context, index: Any, namespace: str, kind: str, name: str, phase: str | None
) -> None:
    for (ns, dkind, dname), store in list((index or {}).items()):
        if ns != namespace:
            continue
        for summary in store:
            if [kind, name] in summary.get("deps", []) and _cares(summary):
                touch(ctx, dkind, ns, dname, f"{kind}/{name}={phase or 'Deleted'}")


def signature(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a reconcile depends on in the resource itself: generation, wake-up annotation, operator-owned status."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    owned = json.dumps(
        {k: status.get(k) for k in OWNED if status.get(k) not in (None, [], 0)}, sort_keys=True
    )
    return (meta.get("generation"), (meta.get("annotations") or {}).get(ANNOTATION_WAKE), owned)


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    """Register the operator's handlers for `ctx` into `registry`."""

    def freeatm_resources(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Any, Any]:
        return {(namespace or "default", body["kind"], name): summarize(body)}

    def reconcile_resource(
        event: Mapping[str, Any],
        body: kopf.Body,
        patch: kopf.Patch,
        namespace: str,
        name: str,
        logger: logging.Logger,
        **kwargs: Any,
    ) -> None:
        index = kwargs.get(INDEX)
        kind, ns = body["kind"], namespace or "default"
        key = (ns, kind, name)
        with ctx.lock:
            ctx.seen[key] = time.monotonic()
        if event.get("type") == "DELETED":
            gone = delete_workload(ctx.kube, kind, ns, name)
            if gone:
                logger.info("deleted %s", ", ".join(gone))
            with ctx.lock:
                ctx.phases.pop(key, None)
                ctx.last_phase.pop(key, None)
                ctx.written.pop(key, None)
                ctx.seen.pop(key, None)
            wake_dependents(ctx, index, ns, kind, name, None)
            return
        # Wake the dependents when this resource's stored phase changed (the index already holds it).
        stored = (body.get("status") or {}).get("phase")
        with ctx.lock:
            changed = key not in ctx.last_phase or ctx.last_phase[key] != stored
            ctx.last_phase[key] = stored
            memo = ctx.written.get(key)
        if changed:
            wake_dependents(ctx, index, ns, kind, name, stored)
        if memo is not None and memo == signature(body):
            return  # the echo of our own status patch, or a progress update: nothing to reconcile
        started = time.perf_counter()
        try:
            current: Mapping[str, Any] | None = body
            if memo is not None and memo[2] != signature(body)[2]:
                # kopf delivers on.event bodies as streamed, possibly older than our last status patch.
                current = ctx.kube.get(resource_path(kind, ns, name))
                if current is None:
                    return
            outcome = reconcile(current, _lookup(index, ns), ctx)
        except Exception as e:
            metrics.RECONCILES.labels(kind, "error").inc()
            logger.warning("reconcile failed, retrying in %.0fs: %s", RETRY_SECONDS, e)
            retry = threading.Timer(RETRY_SECONDS, _safe_touch, (ctx, kind, ns, name, "retry"))
            retry.daemon = True
            retry.start()
            return
        finally:
            metrics.RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
        metrics.RECONCILES.labels(kind, "success").inc()
        expected = {**(current.get("status") or {}), **outcome.patch}
        with ctx.lock:
            ctx.written[key] = signature(
                {**current, "status": {k: v for k, v in expected.items() if v is not None}}
            )
            ctx.phases[key] = outcome.phase
        if outcome.patch:
            patch.setdefault("status", {}).update(outcome.patch)
        for jn in outcome.created:
            logger.info("created %s", jn)
        if outcome.event is not None:
            post_event(ctx, body, outcome.event)

    def follow_job(event: Mapping[str, Any], body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
        owner = job_owner(body)
        if owner is None or owner[0] not in KINDS:
            return
        ns = namespace or "default"
        state = None if event.get("type") == "DELETED" else job_state(body)
        with ctx.lock:
            before = ctx.last_job.get((ns, name))
            # A Job first seen without any status is one its owner just created (or found): nothing new to tell.
            changed = before != state and not (
                before is None and state is not None and not any(state[1:5]) and not state[5]
            )
            if state is None:
                ctx.last_job.pop((ns, name), None)
            else:
                ctx.last_job[(ns, name)] = state
        if changed:
            _safe_touch(ctx, owner[0], ns, owner[1], f"Job/{name}")

    for info in KINDS.values():
        kopf.index(GROUP, VERSION, info.plural, id=INDEX, registry=registry)(freeatm_resources)
        kopf.on.event(GROUP, VERSION, info.plural, id="reconcile", registry=registry)(reconcile_resource)
    kopf.on.event(
        "batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY}, id="follow-job", registry=registry
    )(follow_job)


def resync(ctx: Context, now: float) -> list[tuple[str, str, str]]:
    """Touch every resource in progress whose last event is `resync_seconds` old; return their keys."""
    with ctx.lock:
        stale = [
            key
            for key, phase in ctx.phases.items()
            if phase not in QUIET and now - ctx.seen.get(key, now) >= ctx.config.resync_seconds
        ]
        for key in stale:
            ctx.seen[key] = now  # one touch per period, even when the touch itself is lost
    for ns, kind, name in stale:
        metrics.RESYNCS.labels(kind).inc()
        _safe_touch(ctx, kind, ns, name, "resync")
    return stale


def post_event(ctx: Context, body: Mapping[str, Any], event: Event) -> None:
    """Post a Kubernetes Event; losing one must not fail the reconcile."""
    ns = (body.get("metadata") or {}).get("namespace") or "default"
    try:
        ctx.kube.create(resource_path("Event", ns), event_object(body, event, now_rfc3339()))
    except Exception as e:
        log.warning("could not post event %s: %s", event.reason, e)


def _safe_touch(ctx: Context, kind: str, namespace: str, name: str, why: str) -> None:
    try:
        touch(ctx, kind, namespace, name, why)
    except Exception as e:  # the next event or retry will catch up
        log.warning("could not wake %s/%s/%s: %s", kind, namespace, name, e)
