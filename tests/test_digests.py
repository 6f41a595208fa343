"""The digests freeatm stores keep their values: a dataset manifest's and a checkpoint's specDigest, local
mode's stage digests and the operator's Job annotations are compared with digests written by earlier versions."""

from __future__ import annotations

from freeatm.api import parse_resource
from freeatm.api.digest import spec_digest
from freeatm.cli.local_run import stage_digest
from freeatm.operator.workload import declared_digest, inputs_digest
from freeatm.runtime.generate.manifest import generation_digest
from freeatm.runtime.pretrain.loop import training_digest


def resource(kind: str, name: str, spec: dict):
    return parse_resource(
        {"apiVersion": "freeatm.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    )


DATASET = resource(
    "SyntheticDataset",
    "shapes",
    {
        "model": {"uri": "toy://shapes"},
        "prompts": {"preset": "shapes"},
        "generation": {"images": 256, "resolution": 32, "shardSize": 64},
        "attention": {"resolutions": [16]},
        "workers": 2,
        "output": {"uri": "pvc://data/shapes"},
    },
)
TRAINING = resource(
    "MaskPretrainJob",
    "train",
    {
        "dataset": {"ref": "shapes"},
        "backbone": "resnet_test_os8",
        "training": {"batchSize": 64, "loaderWorkers": 2},
        "output": {"uri": "s3://bucket/ck"},
    },
)


def test_the_canonical_form_is_sorted_compact_json():
    assert spec_digest({"b": [1, 2], "a": "é"}) == spec_digest({"a": "é", "b": [1, 2]})
    assert spec_digest({}) == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_stored_digests_keep_their_values():
    assert generation_digest(DATASET.spec) == (
        "sha256:6d962dd7fc9521db7f97f5e6e22d932d8d07e5b2d503b079f9ddbb3a62d397f3"
    )
    assert training_digest(TRAINING, "sha256:" + "0" * 64) == (
        "sha256:26ca7379c551618f863cf8a35fcae41e90c6bbe12ff576bd5aea89d47fbf1b7c"
    )
    assert (declared_digest(DATASET), declared_digest(TRAINING)) == ("990d685ca76e2fc4", "55e8c123adf27cfa")
    assert (
        inputs_digest(TRAINING, {("SyntheticDataset", "shapes"): {"uri": "s3://b/d"}}) == "ae693b52cf150cf9"
    )
    upstream = stage_digest(DATASET, {})
    assert upstream == "sha256:31c17912cc241628c78ca7657613ed80c5e359535a4b10141fac20c71380551a"
    assert stage_digest(TRAINING, {("SyntheticDataset", "shapes"): upstream}) == (
        "sha256:2f113e40f5f8898905b3c13687430937c86fb92424965a4c6e00e8a9ea2d156c"
    )
