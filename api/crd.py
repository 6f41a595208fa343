"""CustomResourceDefinitions generated from the pydantic models (the single source of truth)."""

from __future__ import annotations

import copy
import json
from typing import Any

from .common import GROUP, INT64, VERSION
from .resources import KINDS, KindInfo
from .status import Status

# A null default is pydantic's "optional": the API server would refuse it (the fields are not nullable), and
# the schema's other defaults are what the API server fills in, so `kubectl explain` and stored objects show them.
_DROP = {"title", "examples", "discriminator"}

PRINTER_COLUMNS: dict[str, list[dict[str, str]]] = {
    "SyntheticDataset": [
        {
            "name": "Images",
            "type": "integer",
            "jsonPath": ".spec.generation.images",
            "description": "Images requested",
        },
    ],
    "MaskPretrainJob": [
        {
            "name": "Method",
            "type": "string",
            "jsonPath": ".spec.method.framework",
            "description": "Self-supervised framework",
        },
        {
            "name": "Masks",
            "type": "boolean",
            "jsonPath": ".spec.method.useMasks",
            "description": "Mask-guided (Free-ATM) or baseline",
        },
        {
            "name": "Loss",
            "type": "number",
            "jsonPath": ".status.progress.loss",
            "description": "Recent training loss",
            "priority": 1,
        },
    ],
    "EvalJob": [
        {
            "name": "Benchmarks",
            "type": "integer",
            "jsonPath": ".status.progress.benchmarksDone",
            "description": "Benchmarks finished",
        },
    ],
}


def _described(description: str, default: Any) -> str:
    """The field's docstring on one line, ending with its default: `kubectl explain` shows no schema default."""
    text = " ".join(description.split())
    if default is None:
        return text
    shown = default if isinstance(default, str) and default else json.dumps(default)
    return f"{text} Default: {shown}."


def _openapi(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn pydantic's JSON Schema into a structural OpenAPI v3 schema: refs inlined, nulls dropped."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return _openapi(merged, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if len(options) == 1:
            return _openapi({**options[0], **rest}, defs)
        types = {o.get("type") for o in options}
        if types == {"string", "integer"}:
            return _openapi({**rest, "x-kubernetes-int-or-string": True}, defs)
        raise ValueError(f"cannot express anyOf {options} in a structural schema")
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in _DROP or (k == "default" and v is None):
            continue
        if k == "properties":
            out[k] = {name: _openapi(sub, defs) for name, sub in v.items()}
        elif k in ("items", "additionalProperties") and isinstance(v, dict):
            out[k] = _openapi(v, defs)
        elif k == "prefixItems":  # fixed-length tuple → array with min/max items
            out["items"] = _openapi(v[0], defs)
        elif k == "const":
            out["enum"] = [v]
        elif k in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if k == "exclusiveMinimum" else "maximum"] = v
            out[k] = True
        else:
            out[k] = v
    if "description" in out:
        out["description"] = _described(out["description"], out.get("default"))
    if out.get("type") == "integer" and out.get("maximum") == INT64:
        # The API server reads schema bounds as float64: 2**63 - 1 rounds up to 2**63, and its int64 conversion
        # overflows to -2**63, refusing every value. `type: integer` is int64 already.
        del out["maximum"]
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    elif out.get("x-kubernetes-preserve-unknown-fields"):
        out["type"] = "object"
        out.pop("additionalProperties", None)
    elif "type" not in out and "enum" in out:
        out["type"] = "string"
    elif "type" not in out and "properties" in out:
        out["type"] = "object"
    if out.get("additionalProperties") is False:
        # structural schemas prune unknown fields; validation rejects them first
        del out["additionalProperties"]
    return out


def schema_for(info: KindInfo) -> dict[str, Any]:
    """openAPIV3Schema of one kind."""
    spec_model = info.model.model_fields["spec"].annotation
    full = spec_model.model_json_schema(by_alias=True, mode="validation")  # type: ignore[union-attr]
    defs = full.pop("$defs", {})
    spec = _openapi(full, defs)
    status_full = Status.model_json_schema(by_alias=True, mode="validation")
    status = _openapi(status_full, status_full.pop("$defs", {}))
    # One condition per type (metav1.Condition's convention): server-side apply merges them by type.
    status["properties"]["conditions"] |= {
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    }
    return {
        "type": "object",
        "description": info.model.__doc__,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "freeatm.io/v1alpha1"},
            "kind": {"type": "string", "description": info.model.__name__},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd_for(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of `kind`."""
    info = KINDS[kind]
    columns = [
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            "description": "Status of the Ready condition: True, False or Unknown",
        },
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase"},
        {
            "name": "Reason",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            "description": "Why it is in this phase (e.g. Unschedulable, ImagePullBackOff, FailedCreate, Queued)",
        },
        {
            "name": "Progress",
            "type": "integer",
            "jsonPath": ".status.progress.percent",
            "description": "Percent done",
        },
        *copy.deepcopy(PRINTER_COLUMNS[kind]),
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {
            "name": "Message",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
            "description": "The details, in the words of whoever knows (scheduler, API server, runtime)",
            "priority": 1,
        },
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": [info.short],
                "categories": ["freeatm"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema_for(info)},
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD, for every kind."""
    return {f"{GROUP}_{KINDS[k].plural}.yaml": crd_for(k) for k in KINDS}
