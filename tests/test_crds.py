"""The committed CRDs are generated from the models, structural, documented, and accept the examples."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from freeatm.api.crd import all_crds

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from walk(schema[key], f"{path}[{key}]")


def test_committed_crds_match_the_models() -> None:
    for name, crd in all_crds().items():
        committed = yaml.safe_load((ROOT / "crds" / name).read_text())
        assert committed == crd, f"crds/{name} is stale: run `freeatm crds --out crds/`"
    assert sorted(p.name for p in (ROOT / "crds").glob("*.yaml")) == sorted(all_crds())


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_schema_is_structural_and_documented(name: str) -> None:
    crd = all_crds()[name]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["categories"] == ["freeatm"]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in walk(schema["properties"]["spec"], "spec"):
        if not path.endswith("]"):
            assert node.get("description"), f"{path} has no description (kubectl explain shows nothing)"
    for path, node in walk(schema):
        assert "$ref" not in node and "anyOf" not in node, path
        assert node.get("type") or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        for bound in ("minimum", "maximum"):
            # The API server reads bounds as float64 and converts integer ones to int64: 2**63 - 1 overflows.
            assert abs(node.get(bound, 0)) <= 2**53, f"{path}.{bound} is not exact as a float64"


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_schema_defaults_are_kept_and_valid(name: str) -> None:
    """The API server refuses a default its own schema rejects; a null default (pydantic's optional) is one."""
    schema = all_crds()[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    defaults = [(path, node) for path, node in walk(schema) if "default" in node]
    assert defaults, "the schema keeps the models' defaults"
    for path, node in defaults:
        assert node["default"] is not None, path
        OAS30Validator({k: v for k, v in node.items() if k != "default"}).validate(node["default"])


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_conditions_are_a_map_list_and_ready_is_a_column(name: str) -> None:
    version = all_crds()[name]["spec"]["versions"][0]
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]
    ready = next(c for c in version["additionalPrinterColumns"] if c["name"] == "Ready")
    assert ready["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_no_description_only_repeats_its_field_name(name: str) -> None:
    """What `kubectl explain` shows says more than the field's name ("Optimiser." for optimizer does not)."""
    schema = all_crds()[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        field = path.rpartition(".")[2]
        if path.endswith("]") or not field or field in ("apiVersion", "kind", "metadata"):
            continue
        named = words(re.sub(r"(?<=[a-z])(?=[A-Z])", " ", field))
        text = node["description"].partition(" Default: ")[0]
        new = [
            w
            for w in words(text)
            if w not in ("a", "an", "the", "of") and w[:5] not in {n[:5] for n in named}
        ]
        assert len(new) >= 2, f"{path}: {text!r} only repeats the field's name"


def test_crds_pass_kubernetes_validate() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            "1.29",
            *map(str, sorted((ROOT / "crds").glob("*.yaml"))),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_their_crd(example: Path) -> None:
    schemas = {
        c["spec"]["names"]["kind"]: c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for c in all_crds().values()
    }
    docs = [
        d
        for d in yaml.safe_load_all(example.read_text())
        if d and d.get("apiVersion", "").startswith("freeatm.io/")
    ]
    assert docs
    for doc in docs:
        OAS30Validator(schemas[doc["kind"]]).validate(doc)


def test_crd_schema_rejects_what_the_models_reject() -> None:
    schema = all_crds()["freeatm.io_maskpretrainjobs.yaml"]["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]
    doc = {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": "MaskPretrainJob",
        "metadata": {"name": "x"},
        "spec": {"dataset": {"ref": "d"}, "training": {"epochs": -1}, "output": {"uri": "file:///x"}},
    }
    assert list(OAS30Validator(schema).iter_errors(doc))
