"""The three resource kinds: envelope models and their registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .common import API_VERSION, DNS_LABEL, MAX_NAME_LENGTH, Model, WorkloadSpec
from .eval_job import EvalJobSpec
from .pretrain_job import MaskPretrainJobSpec
from .status import Status
from .synthetic_dataset import SyntheticDatasetSpec


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta freeatm reads; the rest passes through."""

    model_config = ConfigDict(extra="allow")

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


class Resource(Model):
    """Common envelope: apiVersion, kind, metadata, spec, status."""

    api_version: Literal["freeatm.io/v1alpha1"] = API_VERSION
    metadata: ObjectMeta
    status: Status | None = None
    spec: WorkloadSpec

    def dependencies(self) -> list[tuple[str, str]]:
        """(kind, name) of every resource this one waits for: implicit refs first, then dependsOn."""
        seen: list[tuple[str, str]] = []
        for dep in self.spec.explicit_dependencies():
            if dep not in seen:
                seen.append(dep)
        return seen


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
    if api_version != API_VERSION or kind not in KINDS:
        raise UnknownKind(
            f"apiVersion {api_version!r} kind {kind!r} is not a freeatm resource; expected apiVersion "
            f"{API_VERSION} and kind one of {', '.join(KINDS)}"
        )
    return KINDS[kind].model.model_validate(doc)


def error_lines(err: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) for each error, paths written as users write them: spec.training.epochs."""
    out = []
    for e in err.errors(include_url=False):
        path = ""
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling (kubectl explain shows the fields)"
        out.append((path or "(document)", msg))
    return out
