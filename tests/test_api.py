"""The resource types: defaults, bounds and cross-field rules (docs/architecture.md#resources)."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from freeatm.api import error_lines, parse_resource

SDS = {
    "apiVersion": "freeatm.io/v1alpha1",
    "kind": "SyntheticDataset",
    "metadata": {"name": "shapes"},
    "spec": {
        "model": {"uri": "toy://shapes"},
        "prompts": {"preset": "shapes"},
        "generation": {"images": 64, "resolution": 32, "shardSize": 16},
        "output": {"uri": "file:///tmp/x"},
    },
}
MPJ = {
    "apiVersion": "freeatm.io/v1alpha1",
    "kind": "MaskPretrainJob",
    "metadata": {"name": "pre"},
    "spec": {"dataset": {"ref": "shapes"}, "output": {"uri": "s3://bucket/pre"}},
}
EVJ = {
    "apiVersion": "freeatm.io/v1alpha1",
    "kind": "EvalJob",
    "metadata": {"name": "ev"},
    "spec": {
        "checkpoints": [{"ref": "pre"}, {"uri": "random://resnet18", "label": "random"}],
        "benchmarks": [
            {"name": "linear-probe", "dataset": {"format": "shapes", "uri": "toy://shapesbench/val"}}
        ],
        "output": {"uri": "pvc://results/ev"},
    },
}


def with_spec(doc: dict, path: str, value: object) -> dict:
    doc = copy.deepcopy(doc)
    node = doc["spec"]
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return doc


def errors_of(doc: dict) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as e:
        parse_resource(doc)
    return error_lines(e.value)


def test_defaults_and_wire_round_trip() -> None:
    sds = parse_resource(SDS)
    assert sds.spec.attention.threshold.method == "relative"
    assert sds.spec.shards() == 4
    again = parse_resource(sds.to_wire())
    assert again == sds
    assert "shardSize" in sds.to_wire()["spec"]["generation"]


def test_dependencies_include_implicit_refs() -> None:
    assert parse_resource(MPJ).dependencies() == [("SyntheticDataset", "shapes")]
    ev = with_spec(
        EVJ,
        "dependsOn",
        [{"kind": "SyntheticDataset", "name": "shapes"}, {"kind": "MaskPretrainJob", "name": "pre"}],
    )
    assert parse_resource(ev).dependencies() == [("MaskPretrainJob", "pre"), ("SyntheticDataset", "shapes")]


@pytest.mark.parametrize(
    ("doc", "path", "value", "where", "says"),
    [
        (SDS, "bogus", 1, "spec.bogus", "unknown field"),
        (SDS, "generation.resolution", 30, "spec.generation.resolution", "multiple of 8"),
        (SDS, "attention.threshold", {"value": 1.0}, "spec.attention.threshold.value", "less than 1"),
        (SDS, "attention.threshold", {"value": 0.0}, "spec.attention.threshold.value", "greater than 0"),
        (SDS, "attention.timesteps", [0.8, 0.2], "spec.attention.timesteps", "start < end"),
        (SDS, "attention.resolutions", [12], "spec.attention.resolutions", "power of two"),
        (SDS, "attention.resolutions", [64], "spec", "exceed generation.resolution"),
        (SDS, "output.uri", "ftp://host/x", "spec.output.uri", "ftp://"),
        (SDS, "output.uri", "s3://KEY:SECRET@bucket/x", "spec.output.uri", "carries credentials"),
        (SDS, "model.uri", "gs://bucket/model", "spec.model.uri", "hf://"),
        (SDS, "prompts", {"preset": "shapes", "classes": ["cat"]}, "spec.prompts", "exactly one"),
        (
            SDS,
            "prompts",
            {"classes": ["cat"], "templates": ["a photo"]},
            "spec.prompts.templates",
            "exactly one {}",
        ),
        (SDS, "workers", 9, "spec", "exceeds the 4 shard(s)"),
        (SDS, "output", {"uri": "s3://b/x", "accessKey": "AKIA0000"}, "spec", "spec.output.accessKey"),
        (
            SDS,
            "podTemplate",
            {"spec": {"containers": [{"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}]}},
            "spec",
            "Secret",
        ),
        # What the API server would refuse in the Job (a 422 the operator can only report): caught here.
        (
            SDS,
            "tolerations",
            [{"key": "gpu", "tolerationSeconds": 60}],
            "spec.tolerations[0]",
            "tolerationSeconds",
        ),
        (
            SDS,
            "tolerations",
            [{"key": "gpu", "operator": "Exists", "value": "yes"}],
            "spec.tolerations[0]",
            "operator Exists",
        ),
        (SDS, "tolerations", [{"operator": "Equal", "value": "x"}], "spec.tolerations[0]", "without key"),
        (
            SDS,
            "nodeSelector",
            {"gpu type": "a100"},
            "spec.nodeSelector",
            "'gpu type' is not a valid label key",
        ),
        (SDS, "nodeSelector", {"-bad.io/x": "1"}, "spec.nodeSelector", "prefix"),
        (SDS, "nodeSelector", {"gpu": "a" * 64}, "spec.nodeSelector", "not a valid label value"),
        (SDS, "queueName", "q" * 64, "spec.queueName", "kueue.x-k8s.io/queue-name"),
        (SDS, "queueName", "team a", "spec.queueName", "not a valid label value"),
        (
            SDS,
            "resources",
            {"requests": {"cpu": "lots"}},
            "spec.resources.requests",
            "cpu: 'lots' is not a quantity",
        ),
        (SDS, "resources", {"limits": {"memory": "16 GB"}}, "spec.resources.limits", "memory"),
        (
            SDS,
            "resources",
            {"requests": {"nvidia.com/gpu": 1}},
            "spec.resources",
            "requests.nvidia.com/gpu needs limits.nvidia.com/gpu",
        ),
        (
            SDS,
            "resources",
            {"requests": {"nvidia.com/gpu": 2}, "limits": {"nvidia.com/gpu": 1}},
            "spec.resources",
            "must equal limits.nvidia.com/gpu",
        ),
        (SDS, "podTemplate", {"spec": {"restartPolicy": "OnFailure"}}, "spec.podTemplate", "restartPolicy"),
        (MPJ, "training", {"epochs": -1}, "spec.training.epochs", "greater than or equal to 1"),
        (MPJ, "dataset", {"ref": "a", "uri": "file:///d"}, "spec.dataset", "exactly one of ref"),
        (MPJ, "dataset", {}, "spec.dataset", "exactly one of ref"),
        (MPJ, "backbone", "resnet7", "spec.backbone", "resnet18"),
        (MPJ, "method", {"framework": "mim"}, "spec", "ViT backbone"),
        (MPJ, "method", {"useMasks": False, "objectContrast": True}, "spec.method", "needs useMasks"),
        (
            MPJ,
            "method",
            {"framework": "contrastive", "guidedMasking": True},
            "spec.method",
            "belongs to framework mim",
        ),
        (
            MPJ,
            "method",
            {"framework": "vlp", "imageTextLoss": False, "useMasks": False},
            "spec.method",
            "nothing is trained",
        ),
        (MPJ, "method", {"imageTextLoss": False}, "spec.method", "belongs to framework vlp"),
        (
            MPJ,
            "method",
            {"framework": "vlp", "imageLoss": False},
            "spec.method",
            "belongs to framework contrastive",
        ),
        (MPJ, "method", {"imageLoss": False, "objectContrast": False}, "spec.method", "nothing is trained"),
        (MPJ, "method", {"useMasks": False, "silhouette": True}, "spec.method", "needs useMasks"),
        (
            MPJ,
            "method",
            {"framework": "vlp", "silhouetteLossWeight": 2},
            "spec.method",
            "framework contrastive",
        ),
        (MPJ, "method", {"phraseTemperature": 0.1}, "spec.method", "belongs to framework vlp"),
        (MPJ, "textTower", {"width": 64}, "spec", "only used by framework vlp"),
        (MPJ, "distributed", {"nodes": 3, "gpusPerNode": 2}, "spec", "does not split over 6"),
        (MPJ, "training", {"precision": "bf16"}, "spec", "needs GPUs"),
        (EVJ, "benchmarks", [], "spec.benchmarks", "at least 1"),
        (
            EVJ,
            "benchmarks",
            [{"name": "detection", "dataset": {"format": "imagefolder", "uri": "file:///d"}}],
            "spec.benchmarks[0]",
            "cannot run on format imagefolder",
        ),
        (
            EVJ,
            "benchmarks",
            [{"name": "knn", "dataset": {"format": "shapes", "uri": "toy://shapesbench/val"}}] * 2,
            "spec",
            "repeat knn",
        ),
    ],
)
def test_bad_input_names_the_field(doc: dict, path: str, value: object, where: str, says: str) -> None:
    errors = errors_of(with_spec(doc, path, value))
    assert any(p == where and says in m for p, m in errors), errors


def test_name_must_be_a_short_dns_label() -> None:
    doc = copy.deepcopy(SDS)
    doc["metadata"]["name"] = "Bad_Name"
    assert errors_of(doc)[0][0] == "metadata.name"


def test_method_switches_follow_use_masks() -> None:
    on = parse_resource(MPJ).spec.method.fixes()
    off = parse_resource(with_spec(MPJ, "method", {"useMasks": False})).spec.method.fixes()
    assert on == {"maskAwareCrop": True, "objectContrast": True, "silhouette": False}
    assert off == {"maskAwareCrop": False, "objectContrast": False, "silhouette": False}
    mim = with_spec(
        with_spec(MPJ, "method", {"framework": "mim", "objectWeightedLoss": True}), "backbone", "vit_tiny"
    )
    assert parse_resource(mim).spec.method.fixes() == {"guidedMasking": True, "objectWeightedLoss": True}
    vlp = with_spec(MPJ, "method", {"framework": "vlp"})
    assert parse_resource(vlp).spec.method.fixes() == {"regionPhraseAlignment": True}
    vlp_off = with_spec(MPJ, "method", {"framework": "vlp", "useMasks": False})
    assert parse_resource(vlp_off).spec.method.fixes() == {"regionPhraseAlignment": False}


def test_text_tower_is_checked() -> None:
    vlp = with_spec(MPJ, "method", {"framework": "vlp"})
    # the defaults: unset, so older digests keep their values
    assert parse_resource(vlp).spec.text_tower is None
    tower = parse_resource(with_spec(vlp, "textTower", {})).spec.text_tower
    assert (tower.tokenizer, tower.width, tower.layers, tower.heads) == ("toy://shapesbench", 128, 2, 4)
    errors = errors_of(with_spec(vlp, "textTower", {"tokenizer": "hf://openai/clip"}))
    assert errors[0][0] == "spec.textTower.tokenizer" and "toy://" in errors[0][1], errors
    errors = errors_of(with_spec(vlp, "textTower", {"width": 100, "heads": 3}))
    assert "must divide" in errors[0][1], errors
    coarse = with_spec(with_spec(vlp, "backbone", "resnet_test"), "training", {"imageSize": 32})
    assert "mask guidance needs ≥ 4×4" in errors_of(coarse)[0][1]  # the region–phrase term pools on the grid
    # the baseline is valid
    parse_resource(with_spec(coarse, "method", {"framework": "vlp", "useMasks": False}))


def test_what_the_api_server_accepts_still_validates() -> None:
    doc = copy.deepcopy(SDS)
    doc["spec"].update(
        tolerations=[
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"operator": "Exists"},
        ],
        nodeSelector={"kubernetes.io/arch": "amd64", "node.example.com/pool": ""},
        queueName="team-a.gpu_queue",
        resources={
            "requests": {"cpu": "500m", "memory": "16Gi", "nvidia.com/gpu": 1, "ephemeral-storage": "1e9"},
            "limits": {"memory": "16Gi", "nvidia.com/gpu": 1},
        },
        podTemplate={"spec": {"restartPolicy": "Never"}},
    )
    parse_resource(doc)
