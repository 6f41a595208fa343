"""`freeatm run` as a user starts it, for the local-mode tests: one child process, output merged and captured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# The smallest pipeline the local-mode tests run: a 16-image dataset and one epoch of a baseline on it.
DATASET = {
    "apiVersion": "freeatm.io/v1alpha1",
    "kind": "SyntheticDataset",
    "metadata": {"name": "shapes"},
    "spec": {
        "model": {"uri": "toy://shapes"},
        "prompts": {"preset": "shapes"},
        "generation": {"images": 16, "resolution": 32, "steps": 2, "batchSize": 8, "shardSize": 8},
        "attention": {"resolutions": [16]},
        "output": {"uri": "file:///var/freeatm/shapes"},
    },
}
PRETRAIN = {
    "apiVersion": "freeatm.io/v1alpha1",
    "kind": "MaskPretrainJob",
    "metadata": {"name": "baseline"},
    "spec": {
        "dataset": {"ref": "shapes"},
        "method": {"framework": "contrastive", "useMasks": False},
        "backbone": "vit_test",
        "training": {"epochs": 1, "batchSize": 8, "imageSize": 32, "checkpointEvery": 1, "loaderWorkers": 0},
        "output": {"uri": "file:///var/freeatm/baseline"},
    },
}


def freeatm_run(pipeline: Path, workdir: Path, *options: str, **popen: Any) -> subprocess.Popen[str]:
    """Start `freeatm run -f pipeline --workdir workdir [options]`; `popen` goes to subprocess.Popen."""
    command = [
        sys.executable,
        "-m",
        "freeatm.cli.main",
        "run",
        "-f",
        str(pipeline),
        "--workdir",
        str(workdir),
    ]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.Popen(
        [*command, *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **popen
    )
