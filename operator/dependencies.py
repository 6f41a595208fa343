"""Dependencies between resources (docs/architecture.md#dependencies): what a resource waits for, failed
dependencies, cycles.

Pure functions over a `lookup(kind, name) -> Summary | None` view of the resources in one namespace (the
operator's kopf index; a dict in tests and `freeatm validate`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from freeatm.api.references import Key, cycle_through, describe_cycle
from freeatm.api.vocabulary import (
    DEPENDENCIES_SUCCEEDED,
    DEPENDENCY_CYCLE,
    DEPENDENCY_FAILED,
    NO_DEPENDENCIES,
    WAITING_FOR_DEPENDENCIES,
)

Summary = Mapping[str, Any]  # {"phase", "reason", "outputs", "deps": [[kind, name], ...]}
Lookup = Callable[[str, str], Summary | None]


@dataclass
class Verdict:
    """Where a resource stands with its dependencies."""

    ready: bool = True
    waiting: list[str] = field(default_factory=list)  # Kind/name of dependencies not yet Succeeded
    failed: list[str] = field(default_factory=list)  # Kind/name of Failed dependencies
    cycle: list[Key] | None = None
    outputs: dict[Key, dict[str, Any]] = field(default_factory=dict)  # outputs of Succeeded dependencies
    reason: str = NO_DEPENDENCIES
    message: str = "no dependencies"


def summary_deps(summary: Summary | None) -> list[Key]:
    return [(str(k), str(n)) for k, n in (summary or {}).get("deps", [])]


def evaluate(key: Key, deps: list[Key], lookup: Lookup, on_failure: str = "Fail") -> Verdict:
    """The verdict for resource `key` whose dependencies are `deps`."""
    if not deps:
        return Verdict()
    cycle = cycle_through(key, lambda k: deps if k == key else summary_deps(lookup(*k)))
    if cycle:
        return Verdict(
            ready=False,
            cycle=cycle,
            reason=DEPENDENCY_CYCLE,
            message=f"dependency cycle: {describe_cycle(cycle)}",
        )
    verdict = Verdict(reason=DEPENDENCIES_SUCCEEDED, message="all dependencies Succeeded")
    notes: list[str] = []
    for kind, name in deps:
        ref = f"{kind}/{name}"
        summary = lookup(kind, name)
        phase = (summary or {}).get("phase")
        if summary is None:
            verdict.waiting.append(ref)
            notes.append(f"{ref} (not found)")
        elif phase == "Succeeded":
            outputs = dict(summary.get("outputs") or {})
            if not outputs.get("uri"):
                verdict.waiting.append(ref)
                notes.append(f"{ref} (Succeeded without outputs)")
            else:
                verdict.outputs[(kind, name)] = outputs
        elif phase == "Failed":
            verdict.failed.append(ref)
            verdict.waiting.append(ref)
            notes.append(f"{ref} (Failed: {summary.get('reason') or 'unknown'})")
        else:
            verdict.waiting.append(ref)
            notes.append(f"{ref} ({phase or 'Pending'})")
    if verdict.failed and on_failure == "Fail":
        verdict.ready = False
        verdict.reason = DEPENDENCY_FAILED
        verdict.message = "dependency failed: " + ", ".join(n for n in notes if "(Failed" in n)
    elif verdict.waiting:
        verdict.ready = False
        verdict.reason = WAITING_FOR_DEPENDENCIES
        verdict.message = "waiting for " + ", ".join(notes)
    return verdict
