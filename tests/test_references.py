"""References between resources (api/references.py): one walk of the models lists them for the validator, local
mode and the operator alike, typed or as stored; cycles come from graphlib."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Annotated

import pytest
import yaml

from freeatm.api import KINDS, EvalJob, EvalJobSpec, Outputs, parse_resource
from freeatm.api.common import Model
from freeatm.api.manifests import load
from freeatm.api.references import Reference, RefTo, cycle_through, find_cycle, topological_order
from freeatm.api.resolve import resolve
from freeatm.operator.dependencies import evaluate
from freeatm.operator.handlers import summarize
from freeatm.operator.workload import ref_dependencies

SDS = {
    "apiVersion": "freeatm.io/v1alpha1",
    "kind": "SyntheticDataset",
    "metadata": {"name": "shapes"},
    "spec": {
        "model": {"uri": "toy://shapes"},
        "prompts": {"preset": "shapes"},
        "output": {"uri": "file:///tmp/refs/shapes"},
    },
}
MPJ = {
    "apiVersion": "freeatm.io/v1alpha1",
    "kind": "MaskPretrainJob",
    "metadata": {"name": "pre"},
    "spec": {
        "dataset": {"ref": "shapes"},
        "dependsOn": [
            {"kind": "SyntheticDataset", "name": "other"},
            {"kind": "SyntheticDataset", "name": "shapes"},
        ],
        "output": {"uri": "file:///tmp/refs/pre"},
    },
}
EVJ = {
    "apiVersion": "freeatm.io/v1alpha1",
    "kind": "EvalJob",
    "metadata": {"name": "ev"},
    "spec": {
        "checkpoints": [{"uri": "random://resnet18", "label": "random"}, {"ref": "pre"}],
        "benchmarks": [{"name": "knn", "dataset": {"format": "shapes", "uri": "toy://shapesbench/val"}}],
        "output": {"uri": "file:///tmp/refs/ev"},
    },
}


def test_references_name_their_field_and_say_whether_they_are_implied() -> None:
    assert parse_resource(MPJ).references() == [
        Reference("SyntheticDataset", "shapes", "spec.dataset.ref", implied=True),
        Reference("SyntheticDataset", "other", "spec.dependsOn[0]", implied=False),
        Reference("SyntheticDataset", "shapes", "spec.dependsOn[1]", implied=False),
    ]
    assert parse_resource(MPJ).dependencies() == [
        ("SyntheticDataset", "shapes"),
        ("SyntheticDataset", "other"),
    ]
    assert parse_resource(EVJ).references() == [
        Reference("MaskPretrainJob", "pre", "spec.checkpoints[1].ref", implied=True)
    ]
    assert parse_resource(SDS).references() == []


def test_a_stored_spec_gives_the_same_references_valid_or_not() -> None:
    for doc in (SDS, MPJ, EVJ):
        typed = parse_resource(doc)
        assert KINDS[doc["kind"]].model.stored_references(doc["spec"]) == typed.references()
    broken = copy.deepcopy(MPJ)
    broken["spec"]["training"] = {"epochs": "many"}
    broken["spec"]["dependsOn"] += [{"kind": "Deployment", "name": "x"}, {"kind": "EvalJob"}, "junk"]
    assert summarize(broken)["deps"] == [["SyntheticDataset", "shapes"], ["SyntheticDataset", "other"]]
    assert summarize({"kind": "MaskPretrainJob", "spec": {"dataset": "shapes"}})["deps"] == []


def test_resolving_replaces_implied_references_only() -> None:
    outputs = {("SyntheticDataset", "shapes"): Outputs(uri="s3://b/shapes")}
    mpj = resolve(parse_resource(MPJ), outputs)
    assert mpj.spec.dataset.uri == "s3://b/shapes" and mpj.spec.dataset.ref is None  # type: ignore[attr-defined]
    assert [d.name for d in mpj.spec.depends_on] == ["other", "shapes"]
    ev = resolve(parse_resource(EVJ), {("MaskPretrainJob", "pre"): Outputs(uri="s3://b/pre")})
    assert [(c.label, c.uri, c.ref) for c in ev.spec.checkpoints] == [  # type: ignore[attr-defined]
        ("random", "random://resnet18", None),
        ("pre", "s3://b/pre", None),
    ]
    assert ref_dependencies(parse_resource(EVJ)) == [("MaskPretrainJob", "pre")]
    # A ref that dependsOn names too is still read: a new location of its output must change the inputs digest.
    assert ref_dependencies(parse_resource(MPJ)) == [("SyntheticDataset", "shapes")]


def test_cycles_through_a_resource_start_and_end_at_it() -> None:
    graph = {("A", "a"): [("B", "b")], ("B", "b"): [("C", "c")], ("C", "c"): [("A", "a")]}
    assert cycle_through(("B", "b"), lambda k: graph.get(k, [])) == [
        ("B", "b"),
        ("C", "c"),
        ("A", "a"),
        ("B", "b"),
    ]
    assert cycle_through(("A", "a"), lambda k: [("A", "a")]) == [("A", "a"), ("A", "a")]
    # Depending on a cycle is not being in one: the dependent waits for (or fails with) its dependencies.
    behind = {("D", "d"): [("B", "b")], ("B", "b"): [("C", "c")], ("C", "c"): [("B", "b")]}
    assert cycle_through(("D", "d"), lambda k: behind.get(k, [])) is None
    assert cycle_through(("B", "b"), lambda k: behind.get(k, [])) == [("B", "b"), ("C", "c"), ("B", "b")]


class BaselineSource(Model):
    """A fixture's new reference field: a checkpoint every other one is compared with."""

    ref: Annotated[str | None, RefTo("MaskPretrainJob")] = None
    uri: str | None = None


class ComparedEvalJobSpec(EvalJobSpec):
    baseline: BaselineSource | None = None


class ComparedEvalJob(EvalJob):
    spec: ComparedEvalJobSpec


@pytest.fixture
def compared_eval_job(monkeypatch: pytest.MonkeyPatch) -> dict:
    """EvalJob with one more reference field, declared in one place (its RefTo marker)."""
    monkeypatch.setitem(KINDS, "EvalJob", dataclasses.replace(KINDS["EvalJob"], model=ComparedEvalJob))
    doc = copy.deepcopy(EVJ)
    doc["spec"]["baseline"] = {"ref": "base"}
    return doc


def test_a_new_reference_field_is_seen_everywhere(compared_eval_job: dict, tmp_path: Path) -> None:
    base = copy.deepcopy(MPJ) | {"metadata": {"name": "base"}}
    base["spec"] = {"dataset": {"ref": "shapes"}, "output": {"uri": "file:///tmp/refs/base"}}
    ev = parse_resource(compared_eval_job)
    assert ("MaskPretrainJob", "base") in ev.dependencies()

    # The validator: a missing target is named by its field, a cycle through it is an error.
    (tmp_path / "ev.yaml").write_text(yaml.safe_dump(compared_eval_job))
    assert [(p.severity, p.path) for p in load([tmp_path / "ev.yaml"]).problems if "base" in p.message] == [
        ("warning", "spec.baseline.ref")
    ]
    looped = copy.deepcopy(base)
    looped["spec"]["dependsOn"] = [{"kind": "EvalJob", "name": "ev"}]
    (tmp_path / "all.yaml").write_text(yaml.safe_dump_all([SDS, MPJ, looped, compared_eval_job]))
    assert any("dependency cycle" in p.message for p in load([tmp_path / "all.yaml"]).errors)

    # Local mode: the order and the resolved resource.
    resources = [parse_resource(d) for d in (compared_eval_job, MPJ, SDS, base)]
    assert find_cycle(resources) is None
    order = [r.metadata.name for r in topological_order(resources)]
    assert order.index("base") < order.index("ev")
    outputs = {("MaskPretrainJob", n): Outputs(uri=f"s3://b/{n}") for n in ("pre", "base")}
    assert resolve(ev, outputs).spec.baseline.uri == "s3://b/base"  # type: ignore[attr-defined]

    # The operator: its index entry, also of an invalid body, and its verdict.
    assert ["MaskPretrainJob", "base"] in summarize(compared_eval_job)["deps"]
    invalid = copy.deepcopy(compared_eval_job)
    invalid["spec"]["benchmarks"] = "none"
    assert ["MaskPretrainJob", "base"] in summarize(invalid)["deps"]
    verdict = evaluate(("EvalJob", "ev"), ev.dependencies(), lambda kind, name: None)
    assert "MaskPretrainJob/base" in verdict.waiting
