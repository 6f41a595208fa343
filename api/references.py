"""References between resources: the fields that name another resource, the graph they make and its cycles
(docs/architecture.md#dependencies).

A reference is either implied (a field marked `RefTo`, such as a MaskPretrainJob's `dataset.ref`: the dependent
reads the referenced resource's output) or explicit (an entry of `dependsOn`: it only waits). The fields are
found by walking the spec's model, so adding a reference field is one edit: mark it with `RefTo`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING, Any, get_args

from pydantic import BaseModel

from .common import Dependency

if TYPE_CHECKING:
    from .resources import Resource

Key = tuple[str, str]  # (kind, name)

_KINDS = get_args(Dependency.model_fields["kind"].annotation)


@dataclass(frozen=True)
class RefTo:
    """Marks a field (`Annotated[str | None, RefTo(kind)]`) whose value names a resource of `kind` in the same
    namespace. Once that resource has Succeeded, its `status.outputs.uri` replaces the name: it is written to
    the sibling field `uri` and the reference is cleared; `keeps_name_in`, when set, names a sibling field that
    receives the name when it is empty (a checkpoint's label)."""

    kind: str
    keeps_name_in: str | None = None


@dataclass(frozen=True)
class Reference:
    """One reference a resource makes."""

    kind: str
    name: str
    path: str  # the field as users write it: spec.dataset.ref, spec.dependsOn[0]
    implied: bool  # a RefTo field (its output is read), not an entry of dependsOn (waited for only)

    @property
    def key(self) -> Key:
        return (self.kind, self.name)


def references(spec_type: type[BaseModel], spec: BaseModel | Mapping[str, Any]) -> list[Reference]:
    """Every reference in `spec`, implied ones first, each group in field order. `spec` is the typed model or its
    stored (camelCase) form, which need not validate: a field of the wrong shape is skipped."""
    found = [ref for ref, _ in _walk(spec_type, spec, "spec")]
    return sorted(found, key=lambda ref: not ref.implied)


def dependencies(refs: Iterable[Reference]) -> list[Key]:
    """(kind, name) of every resource referenced, once each, in the order of `refs`."""
    return list(dict.fromkeys(ref.key for ref in refs))


def resolve_references(spec: BaseModel, uri_of: Callable[[Reference], str]) -> None:
    """Replace, in place, every implied reference of `spec` by the URI `uri_of` gives for it (see `RefTo`)."""
    for ref, bind in _walk(type(spec), spec, "spec"):
        if bind is not None:
            bind(uri_of(ref))


def _get(value: Any, attribute: str, alias: str) -> Any:
    if isinstance(value, BaseModel):
        return getattr(value, attribute)
    return value.get(alias) if isinstance(value, Mapping) else None


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The model types inside a field's annotation (`X`, `X | None`, `list[X]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


def _walk(
    model: type[BaseModel], value: Any, path: str
) -> Iterator[tuple[Reference, Callable[[str], None] | None]]:
    """Every reference under `value`, with, for an implied one in a typed model, what replaces it by a URI."""
    if issubclass(model, Dependency):
        kind, name = _get(value, "kind", "kind"), _get(value, "name", "name")
        if kind in _KINDS and name:
            yield Reference(kind, str(name), path, implied=False), None
        return
    for attribute, info in model.model_fields.items():
        alias = info.alias or attribute
        item, here = _get(value, attribute, alias), f"{path}.{alias}"
        marker = next((m for m in info.metadata if isinstance(m, RefTo)), None)
        if marker is not None:
            if item:
                bind = partial(_bind, value, attribute, marker) if isinstance(value, BaseModel) else None
                yield Reference(marker.kind, str(item), here, implied=True), bind
            continue
        for sub in _models(info.annotation):
            if isinstance(item, list):
                for i, element in enumerate(item):
                    yield from _walk(sub, element, f"{here}[{i}]")
            elif item is not None:
                yield from _walk(sub, item, here)


def _bind(container: BaseModel, attribute: str, marker: RefTo, uri: str) -> None:
    name = getattr(container, attribute)
    container.uri = uri  # type: ignore[attr-defined]
    setattr(container, attribute, None)
    if marker.keeps_name_in and not getattr(container, marker.keeps_name_in):
        setattr(container, marker.keeps_name_in, name)


def key(resource: Resource) -> Key:
    return (resource.kind, resource.metadata.name)  # type: ignore[attr-defined]


def topological_order(resources: Iterable[Resource]) -> list[Resource]:
    """Resources ordered so that each comes after everything it depends on; raises graphlib.CycleError."""
    by_key = {key(r): r for r in resources}
    sorter: TopologicalSorter[Key] = TopologicalSorter()
    for k, r in by_key.items():
        sorter.add(k, *[d for d in r.dependencies() if d in by_key])
    return [by_key[k] for k in sorter.static_order()]


def find_cycle(resources: Iterable[Resource]) -> list[Key] | None:
    """A dependency cycle among `resources`, each depending on the next (the first repeated at the end), or
    None."""
    graph = {key(r): r.dependencies() for r in resources}
    return _cycle({k: [d for d in deps if d in graph] for k, deps in graph.items()})


def cycle_through(start: Key, dependencies_of: Callable[[Key], Iterable[Key]]) -> list[Key] | None:
    """A dependency cycle among the resources that are in one with `start`, each depending on the next (starting
    and ending at `start` when it is on the cycle found), or None when `start` is on none. `dependencies_of`
    reads the graph one resource at a time (the operator's index)."""
    graph = _reachable(start, dependencies_of)
    dependents: dict[Key, list[Key]] = {}
    for node, deps in graph.items():
        for dep in deps:
            dependents.setdefault(dep, []).append(node)
    # The resources in a cycle with start are those it reaches that reach it back.
    in_cycle = _reachable(start, lambda node: dependents.get(node, []))
    cycle = _cycle({n: [d for d in graph[n] if d in in_cycle] for n in in_cycle})
    if cycle is None or start not in cycle:
        return cycle
    at = cycle.index(start)
    return cycle[at:-1] + cycle[:at] + [start]


def _reachable(start: Key, neighbours: Callable[[Key], Iterable[Key]]) -> dict[Key, list[Key]]:
    """Every node reachable from `start` (itself included), with its neighbours."""
    found: dict[Key, list[Key]] = {}
    todo = [start]
    while todo:
        node = todo.pop()
        if node not in found:
            found[node] = list(neighbours(node))
            todo += found[node]
    return found


def _cycle(graph: Mapping[Key, Iterable[Key]]) -> list[Key] | None:
    """graphlib's cycle of `graph` (node → its dependencies), each node depending on the next, or None."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as e:
        return list(reversed(e.args[1]))  # graphlib lists each node before the ones that depend on it
    return None


def describe_cycle(cycle: list[Key]) -> str:
    """'A/x → B/y → A/x'."""
    return " → ".join(f"{kind}/{name}" for kind, name in cycle)
