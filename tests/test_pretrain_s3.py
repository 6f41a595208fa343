"""Pretraining against a real S3 server: shards streamed from s3://, checkpoints and export written there."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_fixture import pretrain_job  # noqa: E402

from freeatm.runtime.backbones import load_export  # noqa: E402
from freeatm.runtime.pretrain import checkpoint as ckpt  # noqa: E402
from freeatm.runtime.pretrain import run  # noqa: E402
from freeatm.runtime.pretrain.data import iter_raw, open_dataset  # noqa: E402
from freeatm.runtime.shapesbench.study import write_shapes_dataset  # noqa: E402

torch.set_num_threads(1)


def test_pretrain_from_and_to_s3(s3_env) -> None:  # type: ignore[no-untyped-def]
    s3_env.create_bucket("pretrain")
    write_shapes_dataset("s3://pretrain/data/shapes", 16, shard_size=8)
    info = open_dataset("s3://pretrain/data/shapes", need_masks=True, batch_size=8)
    samples = list(iter_raw(info.uri, info.shards))
    assert [s["index"] for s in samples] == list(range(16))

    out = "s3://pretrain/runs/a"
    job = pretrain_job(
        "s3://pretrain/data/shapes", out, framework="mim", epochs=2, batchSize=8, checkpointEvery=1
    )
    assert run(job) == {"uri": out, "checkpointUri": f"{out}/export/backbone.pt"}
    assert ckpt.steps(out) == [4, 3]
    backbone, meta = load_export(out)
    assert (
        backbone.name == "vit_tiny_patch8"
        and meta["steps"] == 4
        and meta["datasetUri"] == "s3://pretrain/data/shapes"
    )
    state = ckpt.load_latest(out, meta["specDigest"])
    assert state is not None and state["step"] == 4
