"""metav1.Condition bookkeeping and how a phase reads as conditions, for the operator and local mode alike.

kstatus (Flux, Argo CD) reads Ready, Reconciling and Stalled; freeatm adds Complete, Failed and Suspended
(each derived from the phase here) and DependenciesReady (set by whoever resolves dependencies). A condition's
lastTransitionTime changes only when its status changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .status import Status
from .vocabulary import (
    ACTIVE_PHASES,
    CONDITION_TYPES,
    DEPENDENCIES_SUCCEEDED,
    DEPENDENCY_FAILED,
    NOT_COMPLETE,
    NOT_FAILED,
    NOT_SUSPENDED,
    SUSPENDED,
    PhaseReason,
)


def now() -> str:
    """The current time in RFC 3339 (seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_condition(conditions: Iterable[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for c in conditions or ():
        if c.get("type") == type_:
            return c
    return None


def is_true(conditions: Iterable[dict[str, Any]] | None, type_: str) -> bool:
    c = get_condition(conditions, type_)
    return bool(c and c.get("status") == "True")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    at: str,
) -> list[dict[str, Any]]:
    """A copy of `conditions` with `type_` set; lastTransitionTime kept while the status stays the same."""
    old = get_condition(conditions, type_)
    new: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": old["lastTransitionTime"]
        if old and old.get("status") == status and old.get("lastTransitionTime")
        else at,
    }
    if generation is not None:
        new["observedGeneration"] = generation
    out = [c for c in (conditions or []) if c.get("type") != type_]
    out.append(new)
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(out, key=lambda c: order.get(c.get("type", ""), len(order)))


def phase_conditions(
    conditions: list[dict[str, Any]] | None,
    phase: str,
    reason: str,
    message: str,
    generation: int | None,
    at: str,
) -> list[dict[str, Any]]:
    """`conditions` with Ready, Reconciling, Stalled, Complete, Failed and Suspended set for `phase`."""
    active, failed = phase in ACTIVE_PHASES, phase == "Failed"
    succeeded, suspended = phase == "Succeeded", phase == "Suspended"
    rules = [
        ("Ready", succeeded, reason, message),
        ("Reconciling", active, reason, message if active else ""),
        ("Stalled", failed, reason, message if failed else ""),
        ("Complete", succeeded, reason if succeeded else NOT_COMPLETE, message if succeeded else ""),
        ("Failed", failed, reason if failed else NOT_FAILED, message if failed else ""),
        ("Suspended", suspended, SUSPENDED if suspended else NOT_SUSPENDED, message if suspended else ""),
    ]
    out = list(conditions or [])
    for type_, value, why, text in rules:
        out = set_condition(out, type_, "True" if value else "False", why, text, generation, at)
    return out


def with_phase(status: Status, outcome: PhaseReason, generation: int | None = None) -> Status:
    """A copy of `status` in `outcome`'s phase with its conditions updated (local mode's status writer)."""
    phase, reason, message = outcome
    wire = status.to_wire()
    at = now()
    conditions = phase_conditions(wire.get("conditions"), phase, reason, message, generation, at)
    if phase in ("Running", "Succeeded"):
        conditions = set_condition(
            conditions,
            "DependenciesReady",
            "True",
            DEPENDENCIES_SUCCEEDED,
            "all dependencies Succeeded",
            generation,
            at,
        )
    elif phase == "Waiting" or reason == DEPENDENCY_FAILED:
        conditions = set_condition(conditions, "DependenciesReady", "False", reason, message, generation, at)
    wire.update(phase=phase, conditions=conditions)
    if generation is not None:
        wire["observedGeneration"] = generation
    return Status.model_validate(wire)
