"""The dependency graph between resources: order, cycles, missing and wrongly-typed references."""

from __future__ import annotations

from collections.abc import Iterable
from graphlib import CycleError, TopologicalSorter

from .resources import Resource

Key = tuple[str, str]  # (kind, name)


def key(resource: Resource) -> Key:
    return (resource.kind, resource.metadata.name)  # type: ignore[attr-defined]


def find_cycle(resources: Iterable[Resource]) -> list[Key] | None:
    """A dependency cycle among `resources` (first node repeated at the end), or None."""
    try:
        topological_order(resources)
    except CycleError as e:
        return list(e.args[1])
    return None


def topological_order(resources: Iterable[Resource]) -> list[Resource]:
    """Resources ordered so that each comes after everything it depends on; raises graphlib.CycleError."""
    by_key = {key(r): r for r in resources}
    sorter: TopologicalSorter[Key] = TopologicalSorter()
    for k, r in by_key.items():
        sorter.add(k, *[d for d in r.dependencies() if d in by_key])
    return [by_key[k] for k in sorter.static_order()]


def describe_cycle(cycle: list[Key]) -> str:
    """'A/x → B/y → A/x'."""
    return " → ".join(f"{kind}/{name}" for kind, name in cycle)
