"""Property-based fuzzing of the input path (hypothesis): bytes, YAML-like text and mutated valid manifests go
through `manifests.load` as `freeatm validate`, `render` and `run` read them. The only outcome allowed is a list
of problems; whatever is accepted survives the trip to the API server and back (its JSON form, as the operator
receives it, validates to the same JSON form). Bounded to well under a minute on a 2-core CPU."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freeatm.api import manifests, parse_resource

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = (ROOT / "examples" / "quickstart.yaml").read_text()
DOCS = [d for d in yaml.safe_load_all(QUICKSTART) if d]

# FREEATM_FUZZ_EXAMPLES=5000 fuzzes longer than CI does.
FUZZ = settings(
    max_examples=int(os.environ.get("FREEATM_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def load_bytes(data: bytes) -> manifests.Manifests:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_bytes(data)
        result = manifests.load([path])
    for problem in result.problems:
        assert problem.file == str(path) and problem.message
    for resource in result.resources:  # what was accepted is what the cluster would store and hand back
        wire = json.loads(json.dumps(resource.to_wire(), allow_nan=False))
        assert parse_resource(wire).to_wire() == wire
    return result


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_give_problems_not_exceptions(data: bytes) -> None:
    load_bytes(data)


YAML_ALPHABET = st.sampled_from(list("{}[]:,-&*!|>'\"#%@`?~. \n\t\\ax0129e") + ["\ufeff", "\x85", "é", "<<"])


@FUZZ
@given(st.lists(YAML_ALPHABET, max_size=200).map("".join))
def test_yaml_like_text_gives_problems_not_exceptions(text: str) -> None:
    load_bytes(text.encode("utf-8", errors="surrogatepass"))


@FUZZ
@given(st.integers(0, len(QUICKSTART)), st.lists(YAML_ALPHABET, min_size=1, max_size=12).map("".join))
def test_text_spliced_into_a_valid_file_gives_problems_not_exceptions(at: int, chunk: str) -> None:
    load_bytes((QUICKSTART[:at] + chunk + QUICKSTART[at:]).encode())


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["8", "true", "NaN", "", "../..", "toy://nothing", "file://host/x", "s3://b/x?t=1", "a" * 300]
    ),
    st.text(max_size=20),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _field_names(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        return set(schema.get("properties", {})) | {n for v in schema.values() for n in _field_names(v)}
    if isinstance(schema, list):
        return {n for v in schema for n in _field_names(v)}
    return set()


# Every field name of the CRDs, so that a mutation may also add a field where none was (podTemplate, seed).
FIELDS = sorted(
    n for crd in (ROOT / "crds").glob("*.yaml") for n in _field_names(yaml.safe_load(crd.read_text()))
)


def _mutate(doc: Any, choices: list[int], key: str | None, value: Any) -> Any:
    """`doc` with the node that `choices` walks to (an index into a mapping's keys or a list) set to `value`,
    or, with `key`, that node's field `key` set when the node is a mapping."""
    if not choices or not isinstance(doc, dict | list) or not doc:
        return {**doc, key: value} if key is not None and isinstance(doc, dict) else value
    first, rest = choices[0], choices[1:]
    if isinstance(doc, dict):
        k = list(doc)[first % len(doc)]
        return {**doc, k: _mutate(doc[k], rest, key, value)}
    i = first % len(doc)
    return [*doc[:i], _mutate(doc[i], rest, key, value), *doc[i + 1 :]]


@FUZZ
@given(
    st.integers(0, len(DOCS) - 1),
    st.lists(st.integers(0, 50), max_size=5),
    st.none() | st.sampled_from(FIELDS),
    VALUES,
    st.booleans(),
)
def test_mutated_manifests_give_problems_not_exceptions(
    index: int, choices: list[int], key: str | None, value: Any, flow: bool
) -> None:
    docs = list(DOCS)
    docs[index] = _mutate(docs[index], choices, key, value)
    load_bytes(yaml.safe_dump_all(docs, default_flow_style=flow, allow_unicode=True).encode())
