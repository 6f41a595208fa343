"""Reading multi-document YAML files of freeatm resources and checking them together (`freeatm validate`)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from .common import GROUP
from .pretrain_job import MaskPretrainJobSpec
from .references import describe_cycle, find_cycle
from .resources import KINDS, Resource, UnknownKind, error_lines, parse_resource
from .yaml_input import InputError, read_documents


@dataclass(frozen=True)
class Problem:
    """One finding: where (file, document, field path), what is wrong and what to do."""

    severity: Literal["error", "warning"]
    file: str
    document: str  # Kind/name, or "document N" when unnamed
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.file}: {self.document}: {self.path}: {self.message}"


@dataclass
class Manifests:
    """The valid resources read from some files, and every problem found."""

    resources: list[Resource] = field(default_factory=list)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) → file
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def _label(doc: Any, index: int) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("metadata"), dict):
        kind, name = doc.get("kind"), doc["metadata"].get("name")
        if isinstance(kind, str) and isinstance(name, str) and kind and name:
            return f"{kind}/{name}"
    return f"document {index + 1}"


def _foreign(doc: dict[str, Any]) -> bool:
    """Another project's resource kept beside freeatm's (a Secret, an Argo CD Application): skipped. One whose
    kind is freeatm's, or whose group or kind is a near miss of freeatm's (freatm.io, EvalJobs), is an error."""
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return False
    group = api_version.rpartition("/")[0]
    near = difflib.get_close_matches(group, [GROUP], cutoff=0.7) or difflib.get_close_matches(kind, KINDS)
    return kind not in KINDS and not near


def load(files: list[Path]) -> Manifests:
    """Parse and validate every document of `files`, then check references and cycles between them."""
    out = Manifests()
    for file in files:
        try:
            docs = read_documents(file)
        except InputError as e:
            out.problems.append(Problem("error", str(file), "-", e.where, str(e)))
            continue
        except OSError as e:
            out.problems.append(Problem("error", str(file), "-", "-", f"cannot read the file: {e.strerror}"))
            continue
        if not docs:
            out.problems.append(Problem("error", str(file), "-", "-", "the file holds no resources"))
        for i, doc in enumerate(docs):
            label = _label(doc, i)
            if not isinstance(doc, dict):
                out.problems.append(Problem("error", str(file), label, "-", "a document must be a mapping"))
                continue
            try:
                resource = parse_resource(doc)
            except UnknownKind as e:
                if _foreign(doc):
                    out.problems.append(
                        Problem(
                            "warning", str(file), label, "apiVersion/kind", "not a freeatm resource; skipped"
                        )
                    )
                else:
                    out.problems.append(Problem("error", str(file), label, "apiVersion/kind", str(e)))
                continue
            except ValidationError as e:
                out.problems.extend(Problem("error", str(file), label, p, m) for p, m in error_lines(e))
                continue
            key = (resource.kind, resource.metadata.name)  # type: ignore[attr-defined]
            if key in out.sources:
                out.problems.append(
                    Problem(
                        "error",
                        str(file),
                        label,
                        "metadata.name",
                        f"duplicate {key[0]}/{key[1]} (also in {out.sources[key]})",
                    )
                )
                continue
            out.sources[key] = str(file)
            out.resources.append(resource)
            if isinstance(resource.spec, MaskPretrainJobSpec):  # type: ignore[attr-defined]
                out.problems.extend(
                    Problem("warning", str(file), label, p, m) for p, m in resource.spec.warnings()
                )
    out.problems.extend(check_references(out))
    out.problems.extend(check_outputs(out))
    return out


def check_outputs(m: Manifests) -> list[Problem]:
    """Two resources whose outputs are one location, or one inside the other, would overwrite each other."""
    problems: list[Problem] = []
    seen: list[tuple[str, str]] = []  # (output URI, Kind/name)
    for r in m.resources:
        key = (r.kind, r.metadata.name)  # type: ignore[attr-defined]
        uri, label = r.spec.output.uri, f"{key[0]}/{key[1]}"  # type: ignore[attr-defined]
        for other_uri, other in seen:
            if uri == other_uri or uri.startswith(other_uri + "/") or other_uri.startswith(uri + "/"):
                problems.append(
                    Problem(
                        "error",
                        m.sources[key],
                        label,
                        "spec.output.uri",
                        f"{uri} overlaps the output of {other} ({other_uri}): give each resource its own location",
                    )
                )
                break
        seen.append((uri, label))
    return problems


def check_references(m: Manifests) -> list[Problem]:
    """Missing references (warnings: they may exist in the cluster), references to the wrong kind and cycles."""
    problems: list[Problem] = []
    names_by_kind = {kind: {n for k, n in m.sources if k == kind} for kind in KINDS}
    for r in m.resources:
        key = (r.kind, r.metadata.name)  # type: ignore[attr-defined]
        file, label = m.sources[key], f"{key[0]}/{key[1]}"
        for ref in r.references():
            if ref.key == key:
                problems.append(Problem("error", file, label, ref.path, "a resource cannot depend on itself"))
            elif ref.name in names_by_kind[ref.kind]:
                continue
            elif other := [k for k, names in names_by_kind.items() if ref.name in names]:
                message = f"{ref.name!r} is of kind {other[0]}, but this field refers to a {ref.kind}"
                problems.append(Problem("error", file, label, ref.path, message))
            else:
                message = f"{ref.kind}/{ref.name} is not in these files; it must exist in the cluster"
                problems.append(Problem("warning", file, label, ref.path, message))
    cycle = find_cycle(m.resources)
    if cycle:
        kind, name = cycle[0]
        problems.append(
            Problem(
                "error",
                m.sources[(kind, name)],
                f"{kind}/{name}",
                "spec.dependsOn",
                f"dependency cycle {describe_cycle(cycle)}: remove one of these dependencies",
            )
        )
    return problems
