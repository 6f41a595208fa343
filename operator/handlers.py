"""Thin kopf handlers: index the resources, feed the work queue, keep the Jobs the Job watch delivers.

Level-triggered: a watch event of a freeatm resource (other than the echo of the operator's own status write)
queues one reconcile pass (operator/reconcile.py, run by operator/workqueue.py), which writes the status itself.
Wake-ups are in-process, so no API write is spent on them and bursts of them collapse into one pass:
- a Job's status change queues its owner (its body, kept from the watch, is what the pass reads);
- a resource's stored phase change queues the dependents that wait on it (found in the kopf index);
- a pass that waits for something no event reports (pods not created or not scheduled, an old Job going away)
  asks to look again: PENDING_POLL seconds, doubling up to POLL_MAX;
- a pass that failed (the API server unreachable, a create forbidden by quota) is retried after RETRY_BASE
  seconds, doubling up to RETRY_MAX, without an Event per attempt.
The resync is the safety net: a resource still in progress that has seen no event for
`OperatorConfig.resync_seconds` is queued too (`resync`), its Job read afresh from the API server, so a lost Job
event only delays it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from freeatm.api import GROUP, KINDS, VERSION
from freeatm.api.conditions import now as now_rfc3339
from freeatm.api.references import dependencies
from freeatm.api.vocabulary import DEPENDENCY_REASONS

from . import metrics
from .dependencies import Summary
from .events import Event, event_object
from .kube import resource_path
from .observe import ResourceKey
from .reconcile import Context, delete_workload, job_owner, job_state, reconcile, signature
from .workload import LABEL_MANAGED_BY, MANAGED_BY, job_name

INDEX = "freeatm_resources"
RETRY_BASE, RETRY_MAX = 5.0, 300.0
POLL_MAX = 30.0
QUIET = ("Succeeded", "Failed", "Suspended")
"""Phases that only a spec change or a dependency's wake-up moves on: never resynced."""
log = logging.getLogger("freeatm.operator")


def raw_dependencies(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Dependencies of a stored resource, also when its spec does not validate."""
    info = KINDS.get(body.get("kind"))  # type: ignore[arg-type]
    return dependencies(info.model.stored_references(body.get("spec") or {})) if info else []


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


def wake(ctx: Context, key: ResourceKey, why: str, delay: float = 0.0, urgent: bool = False) -> None:
    """Queue a pass over `key`: now (`urgent`: before the others), or after `delay` seconds (replacing an earlier
    delayed wake-up)."""
    log.debug("wake %s/%s/%s: %s", *key, why)
    if ctx.queue is None:
        return
    if delay > 0:
        ctx.queue.add_after(key, delay)
    else:
        ctx.queue.add(key, urgent)


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
                wake(ctx, ResourceKey(dkind, ns, dname), f"{kind}/{name}={phase or 'Deleted'}")


def backoff(base: float, attempts: int, cap: float) -> float:
    """base · 2^attempts, at most cap."""
    return min(base * 2 ** min(attempts, 16), cap)


def run_pass(ctx: Context, key: ResourceKey) -> None:
    """One reconcile pass over `key` (a work queue item), then the wake-up it asks for, its logs and its Event."""
    with ctx.lock:
        mem = ctx.memory(key)
    started = time.perf_counter()
    try:
        outcome = reconcile(key, _lookup(ctx.index, key.namespace), ctx)
    except Exception as e:
        metrics.RECONCILES.labels(key.kind, "error").inc()
        with ctx.lock:
            delay = backoff(RETRY_BASE, mem.retries, RETRY_MAX)
            mem.retries += 1
        log.warning("reconcile of %s/%s/%s failed, retrying in %.0fs: %s", *key, delay, e)
        wake(ctx, key, "retry", delay=delay)
        return
    finally:
        metrics.RECONCILE_SECONDS.labels(key.kind).observe(time.perf_counter() - started)
    if outcome is None:  # the resource is gone
        ctx.forget(key)
        return
    metrics.RECONCILES.labels(key.kind, "success").inc()
    with ctx.lock:
        mem.written = signature(outcome.stored)
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
        wake(ctx, key, "retry" if retry else "poll", delay=min(d for d in (retry, poll) if d is not None))
    elif ctx.queue is not None:
        ctx.queue.cancel(key)  # nothing to look at again: an earlier poll would only cost a pass
    for what in outcome.created:
        log.info("%s/%s/%s: created %s", *key, what)
    for what in outcome.deleted:
        log.info("%s/%s/%s: deleted %s", *key, what)
    if outcome.event is not None:
        post_event(ctx, outcome.stored, outcome.event)


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    """Register the operator's handlers for `ctx` into `registry`."""

    def freeatm_resources(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Any, Any]:
        return {(namespace or "default", body["kind"], name): summarize(body)}

    def queue_resource(
        event: Mapping[str, Any], body: kopf.Body, namespace: str, name: str, **kwargs: Any
    ) -> None:
        ctx.index = kwargs.get(INDEX)
        key = ResourceKey(body["kind"], namespace or "default", name)
        stored = (body.get("status") or {}).get("phase")
        with ctx.lock:
            mem = ctx.memory(key)
            mem.seen_at = time.monotonic()
            changed = not mem.known or mem.stored_phase != stored
            mem.known, mem.stored_phase = True, stored
            echo = mem.written is not None and mem.written == signature(body)
            new = mem.written is None
            if new:  # nothing of ours can be missing from it: the first pass needs no read
                mem.first = dict(body)
        if event.get("type") == "DELETED":
            ctx.forget(key)
            if ctx.queue is not None:
                ctx.queue.cancel(key)
            gone = delete_workload(ctx.kube, key)
            if gone:
                log.info("%s/%s/%s deleted: deleted %s", *key, ", ".join(gone))
            wake_dependents(ctx, ctx.index, key.namespace, key.kind, name, None)
            return
        if changed:  # wake the dependents (the index already holds the new phase)
            wake_dependents(ctx, ctx.index, key.namespace, key.kind, name, stored)
        if not echo:  # the echo of our own status write, or a progress update, has nothing to reconcile
            wake(ctx, key, "event", urgent=new)

    def follow_job(event: Mapping[str, Any], body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
        owner = job_owner(body)
        if owner is None or owner.kind not in KINDS:
            return
        ns = owner.namespace
        gone = event.get("type") == "DELETED"
        state = None if gone else job_state(body)
        with ctx.lock:
            before = ctx.jobs.get((ns, name))
        before_state = job_state(before) if before is not None else None
        changed = before_state != state and not (before is None and state is not None and state.blank)
        if gone:
            ctx.forget_job(ns, name)
        else:
            ctx.remember_job(dict(body))
        if changed:
            wake(ctx, owner, f"Job/{name}")

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
        kopf.on.event(GROUP, VERSION, info.plural, id="reconcile", registry=registry)(queue_resource)
    kopf.on.event(
        "batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY}, id="follow-job", registry=registry
    )(follow_job)
    kopf.on.probe(id="crds", registry=registry)(served)


def resync(ctx: Context, now: float) -> list[ResourceKey]:
    """Queue every resource in progress whose last event is `resync_seconds` old, its Job to be read afresh;
    return their keys."""
    with ctx.lock:
        stale = [
            key
            for key, mem in ctx.resources.items()
            if mem.known  # seen, whether or not a reconcile of it ever finished
            and mem.phase not in QUIET
            and now - mem.seen_at >= ctx.config.resync_seconds
        ]
        for key in stale:
            ctx.resources[key].seen_at = now  # one pass per period
    for key in stale:
        metrics.RESYNCS.labels(key.kind).inc()
        ctx.forget_job(key.namespace, job_name(key.kind, key.name))
        wake(ctx, key, "resync")
    return stale


def post_event(ctx: Context, body: Mapping[str, Any], event: Event) -> None:
    """Post a Kubernetes Event; losing one must not fail the reconcile."""
    ns = (body.get("metadata") or {}).get("namespace") or "default"
    try:
        ctx.kube.create(resource_path("Event", ns), event_object(body, event, now_rfc3339()))
    except Exception as e:
        log.warning("could not post event %s: %s", event.reason, e)
