"""Phase → conditions: how a phase reads as kstatus (Ready, Reconciling, Stalled) and freeatm conditions.

One mapping for the operator and local mode, so Flux, Argo CD and `freeatm run` read a status the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .status import Condition, Status

# For each phase: condition type → status. Types left out keep their last value (e.g. DependenciesReady).
_MATRIX: dict[str, dict[str, str]] = {
    "Pending": {
        "Ready": "False",
        "Reconciling": "True",
        "Stalled": "False",
        "Complete": "False",
        "Failed": "False",
        "Suspended": "False",
    },
    "Waiting": {
        "Ready": "False",
        "Reconciling": "True",
        "Stalled": "False",
        "DependenciesReady": "False",
        "Complete": "False",
        "Failed": "False",
        "Suspended": "False",
    },
    "Running": {
        "Ready": "False",
        "Reconciling": "True",
        "Stalled": "False",
        "DependenciesReady": "True",
        "Complete": "False",
        "Failed": "False",
        "Suspended": "False",
    },
    "Succeeded": {
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
        "DependenciesReady": "True",
        "Complete": "True",
        "Failed": "False",
        "Suspended": "False",
    },
    "Failed": {
        "Ready": "False",
        "Reconciling": "False",
        "Stalled": "True",
        "Complete": "False",
        "Failed": "True",
        "Suspended": "False",
    },
    "Suspended": {
        "Ready": "False",
        "Reconciling": "False",
        "Stalled": "False",
        "Complete": "False",
        "Failed": "False",
        "Suspended": "True",
    },
}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    status: Status, type_: str, value: str, reason: str, message: str, generation: int | None
) -> None:
    """Set one condition in place; lastTransitionTime changes only when its status changes."""
    for i, c in enumerate(status.conditions):
        if c.type == type_:
            since = c.last_transition_time if c.status == value else now()
            status.conditions[i] = Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=since,
                observed_generation=generation,
            )
            return
    status.conditions.append(
        Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=now(),
            observed_generation=generation,
        )
    )


def with_phase(
    status: Status, phase: str, reason: str, message: str = "", generation: int | None = None
) -> Status:
    """A copy of `status` in `phase`, its conditions updated; `reason` and `message` say why."""
    out = status.model_copy(deep=True)
    out.phase = phase  # type: ignore[assignment]
    out.observed_generation = generation
    for type_, value in _MATRIX[phase].items():
        set_condition(out, type_, value, reason, message, generation)
    return out
