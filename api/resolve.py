"""Hand a dependency's outputs to its dependents: the resolved resource a workload runs with
(docs/architecture.md#dependencies).

Used by the operator and by local mode alike, so both resolve references the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

from .references import Reference, resolve_references
from .resources import Resource
from .status import Outputs


class UnresolvedReference(LookupError):
    """A referenced resource has no output URI yet."""


def resolve(resource: Resource, outputs: Mapping[tuple[str, str], Outputs]) -> Resource:
    """A copy of `resource` with every implied reference replaced by the referenced resource's
    `status.outputs.uri`. A checkpoint keeps its ref's name as its label, so result tables show resource names,
    not URIs."""

    def uri_of(ref: Reference) -> str:
        out = outputs.get(ref.key)
        if out is None or not out.uri:
            raise UnresolvedReference(f"{ref.kind}/{ref.name} has no outputs.uri yet")
        return out.uri

    resolved = resource.model_copy(deep=True)
    resolve_references(resolved.spec, uri_of)
    resolved.status = None
    return resolved
