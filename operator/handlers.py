"""Thin kopf handlers: index the resources, reconcile on every event, wake owners and dependents.

Level-triggered: every watch event of a freeatm resource runs one reconcile pass (operator/reconcile.py), which
writes the status itself. Wake-ups make it event-driven rather than timer-driven:
- a Job's status change touches its owner (an annotation patch → a watch event → a reconcile);
- a resource's stored phase change touches the dependents that wait on it (found in the kopf index);
- a pass that waits for something no event reports (pods not created or not scheduled, an old Job going away)
  asks to look again: PENDING_POLL seconds, doubling up to POLL_MAX;
- a pass that failed (the API server unreachable, a create forbidden by quota) is retried after RETRY_BASE
  seconds, doubling up to RETRY_MAX — kopf retries only its change handlers, not event handlers, so the backoff
  lives here, and it posts no Event per attempt.
The resync is the safety net: a resource still in progress that has seen no event for
`OperatorConfig.resync_seconds` is touched too (`resync`), so a lost Job event or a failed wake-up only delays it.
"""

from __future__ import annotations

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
from .observe import ResourceKey, manifest
from .reconcile import Context, delete_workload, job_owner, job_state, reconcile, signature
from .workload import LABEL_MANAGED_BY, MANAGED_BY

INDEX = "freeatm_resources"
ANNOTATION_WAKE = "freeatm.io/wake"
RETRY_BASE, RETRY_MAX = 5.0, 300.0
POLL_MAX = 30.0
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


def snapshot(index: Any) -> list[tuple[Any, list[Summary]]]:
    """The kopf index's entries. kopf updates it on its event loop while sync handlers run in threads, so a
    copy can meet a concurrent change: copy again (each change is a single small update)."""
    while True:
        try:
            return [(key, list(store)) for key, store in list((index or {}).items())]
        except RuntimeError:  # dictionary changed size during iteration
            continue


def wake_dependents(
    ctx: Context, index: Any, namespace: str, kind: str, name: str, phase: str | None
) -> None:
    for (ns, dkind, dname), store in snapshot(index):
        if ns != namespace:
            continue
        for summary in store:
            if [kind, name] in summary.get("deps", []) and _cares(summary):
                _safe_touch(ctx, dkind, ns, dname, f"{kind}/{name}={phase or 'Deleted'}")


def backoff(base: float, attempts: int, cap: float) -> float:
    """base · 2^attempts, at most cap."""
    return min(base * 2 ** min(attempts, 16), cap)


def schedule(ctx: Context, key: ResourceKey, delay: float, why: str) -> None:
    """Touch the resource after `delay` seconds (replacing an earlier scheduled touch)."""
    timer = threading.Timer(delay, _safe_touch, (ctx, key.kind, key.namespace, key.name, why))
    timer.daemon = True
    with ctx.lock:
        mem = ctx.memory(key)
        if mem.timer is not None:
            mem.timer.cancel()
        mem.timer = timer
    timer.start()


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    """Register the operator's handlers for `ctx` into `registry`."""

    def freeatm_resources(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Any, Any]:
        return {(namespace or "default", body["kind"], name): summarize(body)}

    def reconcile_resource(
        event: Mapping[str, Any], body: kopf.Body, namespace: str, name: str, **kwargs: Any
    ) -> None:
        index = kwargs.get(INDEX)
        key = ResourceKey(body["kind"], namespace or "default", name)
        stored = (body.get("status") or {}).get("phase")
        with ctx.lock:
            mem = ctx.memory(key)
            mem.seen_at = time.monotonic()
            changed = not mem.known or mem.stored_phase != stored
            mem.known, mem.stored_phase = True, stored
            echo = mem.written is not None and mem.written == signature(body, ANNOTATION_WAKE)
        if event.get("type") == "DELETED":
            ctx.forget(key)
            gone = delete_workload(ctx.kube, key)
            if gone:
                log.info("%s/%s/%s deleted: deleted %s", *key, ", ".join(gone))
            wake_dependents(ctx, index, key.namespace, key.kind, name, None)
            return
        if changed:  # wake the dependents (the index already holds the new phase)
            wake_dependents(ctx, index, key.namespace, key.kind, name, stored)
        if echo:
            return  # the echo of our own status write, or a progress update: nothing to reconcile
        started = time.perf_counter()
        try:
            outcome = reconcile(key, _lookup(index, key.namespace), ctx)
        except Exception as e:
            metrics.RECONCILES.labels(key.kind, "error").inc()
            with ctx.lock:
                delay = backoff(RETRY_BASE, mem.retries, RETRY_MAX)
                mem.retries += 1
            log.warning("reconcile of %s/%s/%s failed, retrying in %.0fs: %s", *key, delay, e)
            schedule(ctx, key, delay, "retry")
            return
        finally:
            metrics.RECONCILE_SECONDS.labels(key.kind).observe(time.perf_counter() - started)
        if outcome is None:
            return
        metrics.RECONCILES.labels(key.kind, "success").inc()
        with ctx.lock:
            mem.written = signature(outcome.stored, ANNOTATION_WAKE)
            mem.phase = outcome.phase
            retry = backoff(RETRY_BASE, mem.retries, RETRY_MAX) if outcome.retry else None
            mem.retries = mem.retries + 1 if outcome.retry else 0
            poll = None
            if outcome.requeue_after is not None:
                poll = backoff(outcome.requeue_after, mem.polls, POLL_MAX)
                mem.polls += 1
            else:
                mem.polls = 0
        if retry is not None or poll is not None:
            schedule(ctx, key, min(d for d in (retry, poll) if d is not None), "retry" if retry else "poll")
        for what in outcome.created:
            log.info("%s/%s/%s: created %s", *key, what)
        for what in outcome.deleted:
            log.info("%s/%s/%s: deleted %s", *key, what)
        if outcome.event is not None:
            post_event(ctx, outcome.stored, outcome.event)

    def follow_job(event: Mapping[str, Any], body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
        owner = job_owner(body)
        if owner is None or owner[0] not in KINDS:
            return
        ns = namespace or "default"
        state = None if event.get("type") == "DELETED" else job_state(body)
        with ctx.lock:
            before = ctx.jobs.get((ns, name))
            changed = before != state and not (before is None and state is not None and state.blank)
            if state is None:
                ctx.jobs.pop((ns, name), None)
            else:
                ctx.jobs[(ns, name)] = state
        if changed:
            _safe_touch(ctx, owner[0], ns, owner[1], f"Job/{name}")

    def served(**_: Any) -> dict[str, Any]:
        """/healthz: red while the API serves none of the three kinds (CRDs not installed yet, or deleted)."""
        group = ctx.kube.get(f"/apis/{GROUP}/{VERSION}") or {}
        kinds = sorted({r.get("kind") for r in group.get("resources") or []} & set(KINDS))
        if not kinds:
            raise kopf.PermanentError(
                f"the API server serves no {GROUP}/{VERSION} kind: are the CRDs installed?"
            )
        return {"served": kinds}

    for info in KINDS.values():
        kopf.index(GROUP, VERSION, info.plural, id=INDEX, registry=registry)(freeatm_resources)
        kopf.on.event(GROUP, VERSION, info.plural, id="reconcile", registry=registry)(reconcile_resource)
    kopf.on.event(
        "batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY}, id="follow-job", registry=registry
    )(follow_job)
    kopf.on.probe(id="crds", registry=registry)(served)


def resync(ctx: Context, now: float) -> list[ResourceKey]:
    """Touch every resource in progress whose last event is `resync_seconds` old; return their keys."""
    with ctx.lock:
        stale = [
            key
            for key, mem in ctx.resources.items()
            if mem.known  # seen, whether or not a reconcile of it ever finished
            and mem.phase not in QUIET
            and now - mem.seen_at >= ctx.config.resync_seconds
        ]
        for key in stale:
            ctx.resources[key].seen_at = now  # one touch per period, even when the touch itself is lost
    for kind, ns, name in stale:
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
