"""freeatm.api — the resource types; the CRD schemas are generated from these models."""

from .common import API_VERSION, GROUP, VERSION
from .eval_job import EvalJobSpec
from .pretrain_job import MaskPretrainJobSpec
from .resources import (
    KINDS,
    EvalJob,
    MaskPretrainJob,
    Resource,
    SyntheticDataset,
    UnknownKind,
    error_lines,
    parse_resource,
)
from .status import Condition, Outputs, Progress, ResultRow, Status
from .synthetic_dataset import SyntheticDatasetSpec

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "Condition",
    "EvalJob",
    "EvalJobSpec",
    "MaskPretrainJob",
    "MaskPretrainJobSpec",
    "Outputs",
    "Progress",
    "Resource",
    "ResultRow",
    "Status",
    "SyntheticDataset",
    "SyntheticDatasetSpec",
    "UnknownKind",
    "error_lines",
    "parse_resource",
]
