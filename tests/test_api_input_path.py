"""The models are the checks the operator applies too (it gets JSON from the API server, not YAML): strict
types, finite numbers, normalised URIs; and the built-in toy:// targets agree with what the runtime serves."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from freeatm.api import error_lines, parse_resource
from freeatm.api.toy import SHAPESBENCH_SPLITS, SHAPESBENCH_VARIANTS
from freeatm.api.yaml_input import InputError, parse

ROOT = Path(__file__).resolve().parents[1]
DOCS = [d for d in yaml.safe_load_all((ROOT / "examples" / "quickstart.yaml").read_text()) if d]


def dataset(**generation: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DOCS[0])
    doc["spec"]["generation"].update(generation)
    return doc


@pytest.mark.parametrize(
    ("generation", "says"),
    [
        ({"images": "8"}, "not the string '8'"),
        ({"images": True}, "not the boolean true"),
        ({"guidanceScale": float("nan")}, "finite number"),
        ({"guidanceScale": float("inf")}, "finite number"),
        ({"seed": 2**64}, "less than or equal to 4294967295"),
    ],
)
def test_what_the_operator_receives_is_checked_as_strictly(generation: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_resource(dataset(**generation))
    assert [(p, m) for p, m in error_lines(e.value) if says in m], error_lines(e.value)


def test_a_json_array_is_a_tuple_field() -> None:
    doc = dataset()
    doc["spec"]["attention"]["timesteps"] = [0.5, 1]
    assert parse_resource(doc).spec.attention.timesteps == (0.5, 1.0)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("uri", "normalised"),
    [
        ("file:///var//out/./x/", "file:///var/out/x"),
        ("s3://bucket/prefix/", "s3://bucket/prefix"),
        ("S3://bucket", "s3://bucket"),
        ("pvc://claim/a//b", "pvc://claim/a/b"),
    ],
)
def test_uris_are_normalised(uri: str, normalised: str) -> None:
    doc = dataset()
    doc["spec"]["output"]["uri"] = uri
    assert parse_resource(doc).to_wire()["spec"]["output"]["uri"] == normalised


def test_the_toy_catalogue_is_what_the_runtime_serves() -> None:
    from freeatm.runtime.evaluate.datasets import SHAPES_SEEDS
    from freeatm.runtime.shapes import VARIANTS

    assert set(SHAPESBENCH_SPLITS) == set(SHAPES_SEEDS)
    assert set(SHAPESBENCH_VARIANTS) == set(VARIANTS)


def test_the_loader_reads_what_json_can_hold() -> None:
    assert parse("when: 2024-01-02\nx: yes\nn: 0x10\n") == [{"when": "2024-01-02", "x": True, "n": 16}]
    with pytest.raises(InputError) as e:
        parse("a: 1\nb:\n  c: 1\n  c: 2\n")
    assert e.value.where == "line 4, column 3" and "'c' is written twice (first on line 3)" in str(e.value)
