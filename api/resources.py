"""The three resource kinds: envelope models and their registry."""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .common import (
    API_VERSION,
    DNS_LABEL,
    MAX_NAME_LENGTH,
    Model,
    WorkloadSpec,
    is_credential,
    names_credential,
)
from .eval_job import EvalJobSpec
from .pretrain_job import MaskPretrainJobSpec
from .references import Key, Reference, dependencies, references
from .status import Status
from .synthetic_dataset import SyntheticDatasetSpec


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta freeatm reads; the rest passes through."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        if len(name) > MAX_NAME_LENGTH or not DNS_LABEL.match(name):
            raise ValueError(
                f"name {name!r} must be a DNS label of at most {MAX_NAME_LENGTH} characters "
                "(lower-case letters, digits and '-', starting and ending with a letter or digit)"
            )
        return name

    @field_validator("labels", "annotations")
    @classmethod
    def _no_credentials(cls, values: dict[str, str]) -> dict[str, str]:
        # Metadata is copied into every Job, pod and stored spec: a credential here would leak everywhere.
        found = [key for key, value in values.items() if names_credential(key) or is_credential(value)]
        if found:
            raise ValueError(
                f"{', '.join(map(repr, found))} looks like a credential: store it in a Secret and reference it "
                "with secretRef: {name: ...}"
            )
        return values


class Resource(Model):
    """Common envelope: apiVersion, kind, metadata, spec, status."""

    api_version: Literal["freeatm.io/v1alpha1"] = API_VERSION
    metadata: ObjectMeta
    status: Status | None = None
    spec: WorkloadSpec

    def references(self) -> list[Reference]:
        """Every reference this resource makes: implied refs first, then dependsOn."""
        return references(type(self.spec), self.spec)

    def dependencies(self) -> list[Key]:
        """(kind, name) of every resource this one waits for: implied refs first, then dependsOn."""
        return dependencies(self.references())

    @classmethod
    def stored_references(cls, spec: Mapping[str, Any]) -> list[Reference]:
        """The references of a stored spec of this kind, also when it does not validate."""
        return references(cls.model_fields["spec"].annotation, spec)  # type: ignore[arg-type]


class SyntheticDataset(Resource):
    """Generate images with a diffusion model, with object masks from its cross-attention."""

    kind: Literal["SyntheticDataset"] = "SyntheticDataset"
    spec: SyntheticDatasetSpec


class MaskPretrainJob(Resource):
    """Self-supervised pretraining on a synthetic dataset, optionally guided by its masks."""

    kind: Literal["MaskPretrainJob"] = "MaskPretrainJob"
    spec: MaskPretrainJobSpec


class EvalJob(Resource):
    """Evaluate pretrained checkpoints on downstream benchmarks."""

    kind: Literal["EvalJob"] = "EvalJob"
    spec: EvalJobSpec


@dataclass(frozen=True)
class KindInfo:
    """How a kind is named in the API."""

    model: type[Resource]
    plural: str
    singular: str
    short: str
    runtime_command: str  # the freeatm-runtime subcommand its pods run


KINDS: dict[str, KindInfo] = {
    "SyntheticDataset": KindInfo(
        SyntheticDataset, "syntheticdatasets", "syntheticdataset", "sds", "generate"
    ),
    "MaskPretrainJob": KindInfo(MaskPretrainJob, "maskpretrainjobs", "maskpretrainjob", "mpj", "pretrain"),
    "EvalJob": KindInfo(EvalJob, "evaljobs", "evaljob", "evj", "evaluate"),
}


class UnknownKind(ValueError):
    """A document that is not one of the three freeatm kinds."""


def parse_resource(doc: dict[str, Any]) -> Resource:
    """Validate one manifest; raises UnknownKind or pydantic.ValidationError (with field paths)."""
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if api_version != API_VERSION or not isinstance(kind, str) or kind not in KINDS:
        raise UnknownKind(
            f"apiVersion {reprlib.repr(api_version)} kind {reprlib.repr(kind)} is not a freeatm resource; "
            f"expected apiVersion "
            f"{API_VERSION} and kind one of {', '.join(KINDS)}"
        )
    return KINDS[kind].model.model_validate(doc)


# The type errors worth saying what was given instead: YAML turns 8 and "8", true and "true", apart.
_STRICT_TYPES = ("int_type", "float_type", "string_type", "bool_type", "dict_type", "list_type", "tuple_type")
_JSON_TYPE = {str: "the string", bool: "the boolean", int: "the integer", float: "the number", list: "a list",
              dict: "a mapping", type(None): "null"}  # fmt: skip


def error_lines(err: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) for each error, paths written as users write them: spec.training.epochs."""
    out = []
    for e in err.errors(include_url=False):
        path = ""
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in _STRICT_TYPES and type(e["input"]) in _JSON_TYPE:
            given = e["input"]
            shown = json.dumps(given) if given is None or isinstance(given, bool) else reprlib.repr(given)
            msg += f", not {_JSON_TYPE[type(given)]} {shown}"
        elif e["type"] == "finite_number":
            msg = f"{e['input']} is not allowed here: give a finite number"
        elif e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling (kubectl explain shows the fields)"
        out.append((path or "(document)", msg))
    return out
