"""runtime/status_patch.py: the workload patches status.progress of its own resource (kmock as the API)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import kubernetes.client
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kmock_cluster import KmockCluster  # noqa: E402

from freeatm.runtime.errors import InvalidInput  # noqa: E402
from freeatm.runtime.progress import ProgressReporter  # noqa: E402
from freeatm.runtime.status_patch import parse_target, progress_body, status_sink  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    c = KmockCluster()
    yield c
    c.close()


def test_target_parsing():
    assert parse_target("MaskPretrainJob/ml/r50") == ("MaskPretrainJob", "ml", "r50")
    for bad in ("", "Pod/ns/x", "MaskPretrainJob/r50", "MaskPretrainJob//r50"):
        with pytest.raises(InvalidInput):
            parse_target(bad)


def test_progress_body_keeps_declared_fields_only():
    body = progress_body({"done": 1, "total": 2, "loss": 0.5, "bogus": 1, "updatedAt": "t"})
    assert body == {"status": {"progress": {"done": 1, "total": 2, "loss": 0.5, "updatedAt": "t"}}}


def test_reporter_patches_the_status_subresource(cluster):
    cluster.create(
        {
            "kind": "MaskPretrainJob",
            "metadata": {"name": "p1"},
            "spec": {
                "dataset": {"uri": "file:///d"},
                "training": {"batchSize": 16},
                "output": {"uri": "file:///o"},
            },
            "status": {"phase": "Running", "jobName": "p1-train"},
        }
    )
    sink = status_sink(
        f"MaskPretrainJob/{cluster.namespace}/p1", kubernetes.client.ApiClient(cluster.configuration)
    )
    reporter = ProgressReporter(total=100, unit="steps", sinks=[sink], interval=0)
    reporter.update(10, epoch=0, step=10, loss=2.5)
    reporter.update(20, epoch=0, step=20, loss=2.0, message="training")
    status = cluster.status("MaskPretrainJob", "p1")
    assert status["phase"] == "Running" and status["jobName"] == "p1-train"  # the operator's fields stay
    progress = status["progress"]
    assert (
        progress["done"] == 20
        and progress["total"] == 100
        and progress["step"] == 20
        and progress["loss"] == 2.0
    )
    assert progress["unit"] == "steps" and progress["percent"] == 20 and progress["message"] == "training"
    # it went through the status subresource
    assert any(str(r.url).endswith("/maskpretrainjobs/p1/status") for r in list(cluster.emulator))


def test_a_non_finite_number_cannot_break_the_patch():
    body = progress_body({"done": 1, "loss": float("nan"), "rate": float("inf"), "etaSeconds": 2.0})
    assert body == {"status": {"progress": {"done": 1, "loss": None, "rate": None, "etaSeconds": 2.0}}}
    json.dumps(body, allow_nan=False)  # what the API server accepts


def test_a_nan_loss_is_patched_without_an_error(cluster):
    cluster.create(
        {
            "kind": "MaskPretrainJob",
            "metadata": {"name": "p2"},
            "spec": {"dataset": {"uri": "file:///d"}, "output": {"uri": "file:///o"}},
        }
    )
    sink = status_sink(
        f"MaskPretrainJob/{cluster.namespace}/p2", kubernetes.client.ApiClient(cluster.configuration)
    )
    sink({"done": 5, "total": 10, "loss": float("nan")})
    assert cluster.status("MaskPretrainJob", "p2")["progress"] == {"done": 5, "total": 10}


@pytest.mark.parametrize(
    ("env", "to_status"),
    [
        ({}, True),
        ({"JOB_COMPLETION_INDEX": "0"}, True),
        ({"JOB_COMPLETION_INDEX": "1"}, False),  # generation worker 1 of an Indexed Job
        ({"RANK": "0", "JOB_COMPLETION_INDEX": "0"}, True),
        ({"RANK": "3"}, False),
    ],
)
def test_only_worker_0_patches_the_status(env, to_status, monkeypatch):
    from freeatm.runtime import progress

    for key in ("RANK", "JOB_COMPLETION_INDEX", "FREEATM_PROGRESS_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FREEATM_RESOURCE", "SyntheticDataset/ns/d")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("freeatm.runtime.status_patch.status_sink", lambda: "status-sink")
    sinks = progress.sinks_from_env()
    assert ("status-sink" in sinks) == to_status
