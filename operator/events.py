"""Kubernetes Events: one on every phase transition (pure: what to post; the handler posts it)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


def transition_event(old_phase: str | None, new_phase: str, reason: str, message: str) -> Event | None:
    """The Event for a phase change, or None when the phase did not change."""
    if old_phase == new_phase:
        return None
    kind = "Warning" if new_phase == "Failed" else "Normal"
    why = reason if reason and reason != new_phase else new_phase
    text = f"{old_phase or 'New'} → {new_phase}" + (f": {message}" if message else "")
    return Event(kind, why, text[:1024])


def event_object(
    involved: Mapping[str, Any], event: Event, now: str, component: str = "freeatm-operator"
) -> dict[str, Any]:
    """A core/v1 Event about `involved`, with a unique name (<object>.<hex nanoseconds>, as kubectl's events)."""
    meta = involved.get("metadata") or {}
    ref = {
        "apiVersion": involved.get("apiVersion"),
        "kind": involved.get("kind"),
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
    }
    if meta.get("uid"):
        ref["uid"] = meta["uid"]
    if meta.get("resourceVersion"):
        ref["resourceVersion"] = meta["resourceVersion"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta.get('name')}.{time.time_ns():x}", "namespace": meta.get("namespace")},
        "involvedObject": ref,
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "action": "Reconcile",
    }
