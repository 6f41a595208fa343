"""operator/workload.py: the Jobs and Services a resource becomes (what `freeatm render` prints)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from freeatm.api import parse_resource
from freeatm.api.vocabulary import EXIT_INVALID
from freeatm.operator.config import OperatorConfig
from freeatm.operator.workload import (
    ANNOTATION_INPUTS_DIGEST,
    ANNOTATION_SPEC_DIGEST,
    CONTROLLER_UID,
    RESULT_FINALIZER,
    MissingDependencyOutput,
    bind_service,
    job_name,
    planned_outputs,
    render,
    resolve,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def sds(**spec):
    base = {
        "model": {"uri": "toy://shapes"},
        "prompts": {"preset": "shapes"},
        "generation": {"images": 256, "resolution": 32, "shardSize": 64},
        "attention": {"resolutions": [16]},
        "workers": 2,
        "output": {"uri": "pvc://data/shapes"},
    }
    base.update(spec)
    return parse_resource(
        {
            "apiVersion": "freeatm.io/v1alpha1",
            "kind": "SyntheticDataset",
            "metadata": {"name": "shapes", "namespace": "ml", "generation": 3},
            "spec": base,
        }
    )


def mpj(**spec):
    base = {
        "dataset": {"ref": "shapes"},
        "training": {"batchSize": 64},
        "output": {"uri": "s3://bucket/ck", "secretRef": {"name": "s3"}},
    }
    base.update(spec)
    return parse_resource(
        {
            "apiVersion": "freeatm.io/v1alpha1",
            "kind": "MaskPretrainJob",
            "metadata": {"name": "train1"},
            "spec": base,
        }
    )


def container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def env(job):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job)["env"]}


def example_objects(path: Path):
    resources = [parse_resource(d) for d in yaml.safe_load_all(path.read_text()) if d]
    outputs = planned_outputs(resources)
    return [obj for r in resources for obj in render(r, outputs, OperatorConfig())]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_render_valid_kubernetes_objects(path):
    objects = example_objects(path)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, "1.29", strict=True)


def test_generation_is_an_indexed_job_with_one_index_per_worker():
    (job,) = render(sds(), None, OperatorConfig(runtime_image="img:1"))
    assert job["metadata"]["name"] == "shapes-gen" == job_name("SyntheticDataset", "shapes")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    assert container(job)["command"] == ["freeatm-runtime"] and container(job)["args"] == ["generate"]
    assert container(job)["image"] == "img:1"
    e = env(job)
    assert e["FREEATM_RESOURCE"] == "SyntheticDataset/$(FREEATM_NAMESPACE)/shapes"
    assert e["FREEATM_METRICS_PORT"] == "9090"
    # A worker's shards follow from the Indexed Job's JOB_COMPLETION_INDEX and spec.workers: nothing else says.
    assert set(e) == {
        "FREEATM_NAMESPACE",
        "FREEATM_RESOURCE",
        "FREEATM_SPEC",
        "FREEATM_METRICS_PORT",
        "FREEATM_PVC_ROOT",
        "PYTHONUNBUFFERED",
    }
    assert json.loads(e["FREEATM_SPEC"])["spec"]["workers"] == 2
    # pvc:// output: the claim is mounted where runtime/storage.py looks for it
    assert {"name": "pvc-data", "persistentVolumeClaim": {"claimName": "data"}} in spec["template"]["spec"][
        "volumes"
    ]
    assert {"name": "pvc-data", "mountPath": "/mnt/pvc/data"} in container(job)["volumeMounts"]
    assert e["FREEATM_PVC_ROOT"] == "/mnt/pvc"
    assert job["metadata"]["annotations"]["freeatm.io/generation"] == "3"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_job_settings_reach_the_job():
    r = sds(
        backoffLimit=5,
        activeDeadlineSeconds=600,
        ttlSecondsAfterFinished=60,
        suspend=True,
        queueName="gpu",
        nodeSelector={"pool": "gpu"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        priorityClassName="batch-high",
        serviceAccountName="sa1",
        resources={"requests": {"cpu": 2}, "limits": {"memory": "8Gi"}},
        image="custom:2",
    )
    (job,) = render(r)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (
        spec["backoffLimit"] == 5
        and spec["activeDeadlineSeconds"] == 600
        and spec["ttlSecondsAfterFinished"] == 60
    )
    assert spec["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["priorityClassName"] == "batch-high"
    assert pod["serviceAccountName"] == "sa1"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container(job)["resources"] == {"requests": {"cpu": 2}, "limits": {"memory": "8Gi"}}
    assert container(job)["image"] == "custom:2"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "runtime", "operator": "In", "values": [EXIT_INVALID]},
    }
    assert rules[1]["action"] == "Ignore" and rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"
    kubernetes_validate.validate(job, "1.29", strict=True)


def test_the_spec_digest_is_what_the_user_declared():
    def digest(job):
        return job["metadata"]["annotations"][ANNOTATION_SPEC_DIGEST]

    (a,) = render(sds(suspend=False))
    (b,) = render(sds(suspend=True))
    (c,) = render(sds(workers=4))
    assert digest(a) == digest(b) != digest(c)
    (other_image,) = render(sds(), config=OperatorConfig(runtime_image="registry/freeatm-runtime:2.0"))
    assert digest(other_image) == digest(a)  # a Helm upgrade of the runtime image changes no digest
    outputs = {("SyntheticDataset", "shapes"): {"uri": "s3://b/d"}}
    (t1,) = render(mpj(), outputs)
    (t2,) = render(mpj(), {("SyntheticDataset", "shapes"): {"uri": "s3://b/other"}})
    assert digest(t1) == digest(t2)
    assert (
        t1["metadata"]["annotations"][ANNOTATION_INPUTS_DIGEST]
        != t2["metadata"]["annotations"][ANNOTATION_INPUTS_DIGEST]
    )


def test_pods_keep_their_result_until_the_operator_read_it():
    (job,) = render(sds())
    assert job["spec"]["template"]["metadata"]["finalizers"] == [RESULT_FINALIZER]


def test_the_service_selects_the_pods_of_one_job_by_its_uid():
    r = mpj(distributed={"nodes": 2, "gpusPerNode": 1})
    job, svc = render(r, {("SyntheticDataset", "shapes"): {"uri": "s3://b/d"}})
    bound = bind_service(svc, {**job, "metadata": {**job["metadata"], "uid": "u-7"}})
    assert bound["spec"]["selector"] == {CONTROLLER_UID: "u-7"}
    assert bind_service(svc, job) == svc  # no uid (an emulator): the workload labels


def test_refs_are_resolved_from_dependency_outputs():
    r = mpj()
    with pytest.raises(MissingDependencyOutput):
        render(r, {})
    doc = resolve(r, {("SyntheticDataset", "shapes"): {"uri": "s3://bucket/shapes", "manifestDigest": "x"}})
    assert doc["spec"]["dataset"] == {"uri": "s3://bucket/shapes"}
    evj = parse_resource(
        {
            "apiVersion": "freeatm.io/v1alpha1",
            "kind": "EvalJob",
            "metadata": {"name": "ev"},
            "spec": {
                "checkpoints": [{"ref": "a"}, {"uri": "random://resnet18", "label": "random"}],
                "benchmarks": [
                    {"name": "knn", "dataset": {"format": "shapes", "uri": "toy://shapesbench/val"}}
                ],
                "output": {"uri": "file:///x"},
            },
        }
    )
    doc = resolve(evj, {("MaskPretrainJob", "a"): {"uri": "pvc://ck/a"}})
    assert doc["spec"]["checkpoints"][0] == {"uri": "pvc://ck/a", "label": "a"}
    parse_resource(doc)  # the runtime can read it
    (job,) = render(evj, {("MaskPretrainJob", "a"): {"uri": "pvc://ck/a"}})
    assert container(job)["volumeMounts"][0]["mountPath"] == "/mnt/pvc/ck"


def test_secret_refs_become_env_from():
    (job,) = render(
        mpj(dataset={"ref": "shapes", "secretRef": {"name": "ds"}}),
        {("SyntheticDataset", "shapes"): {"uri": "s3://b/d"}},
    )
    assert container(job)["envFrom"] == [{"secretRef": {"name": "ds"}}, {"secretRef": {"name": "s3"}}]


def test_multi_node_training_uses_torchrun_and_a_headless_service():
    r = mpj(distributed={"nodes": 2, "gpusPerNode": 4}, training={"batchSize": 64, "precision": "bf16"})
    job, svc = render(r, {("SyntheticDataset", "shapes"): {"uri": "s3://b/d"}})
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    c = container(job)
    assert c["command"] == ["bash"]
    cmd = c["args"][1]
    assert (
        "torchrun" in cmd
        and "--nnodes 2" in cmd
        and "--nproc_per_node 4" in cmd
        and "--rdzv_backend c10d" in cmd
    )
    assert "-m freeatm.runtime.cli pretrain" in cmd and "${FREEATM_RANK0_HOST:=localhost}:29500" in cmd
    assert env(job)["FREEATM_RANK0_HOST"] == "train1-train-0.train1-train"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert spec["template"]["spec"]["subdomain"] == svc["metadata"]["name"] == "train1-train"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    for obj in (job, svc):
        kubernetes_validate.validate(obj, "1.29", strict=True)


def test_single_process_training_runs_the_runtime_directly():
    (job,) = render(mpj(), {("SyntheticDataset", "shapes"): {"uri": "s3://b/d"}})
    assert container(job)["command"] == ["freeatm-runtime"] and container(job)["args"] == ["pretrain"]
    assert "completionMode" not in job["spec"]


def test_pod_template_overrides_merge_by_name():
    r = sds(
        podTemplate={
            "metadata": {"annotations": {"a": "b"}},
            "spec": {
                "containers": [
                    {"name": "runtime", "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}]},
                    {"name": "sidecar", "image": "busybox"},
                ],
                "hostIPC": True,
            },
        }
    )
    (job,) = render(r)
    pod = job["spec"]["template"]
    assert (
        pod["metadata"]["annotations"] == {"a": "b"}
        and pod["metadata"]["labels"]["freeatm.io/name"] == "shapes"
    )
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert names == ["runtime", "sidecar"]
    assert env(job)["HF_HUB_OFFLINE"] == "1" and "FREEATM_SPEC" in env(job)
    assert pod["spec"]["hostIPC"] is True


def test_render_accepts_a_manifest_dict():
    doc = {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": "SyntheticDataset",
        "metadata": {"name": "x"},
        "spec": {
            "model": {"uri": "toy://shapes"},
            "prompts": {"preset": "shapes"},
            "output": {"uri": "file:///o"},
        },
    }
    (job,) = render(doc)
    assert job["metadata"]["name"] == "x-gen" and "namespace" not in job["metadata"]


def test_operator_imports_without_torch():
    code = "import sys, freeatm.operator.main, freeatm.operator.workload; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_configuration_from_the_environment():
    config = OperatorConfig.from_env(
        {
            "FREEATM_RUNTIME_IMAGE": "reg/rt:1",
            "FREEATM_RUNTIME_SERVICE_ACCOUNT": "",
            "FREEATM_NAMESPACES": "a, b",
            "FREEATM_RUNTIME_METRICS_PORT": "9300",
            "FREEATM_OPERATOR_METRICS_PORT": "8000",
        },
        metrics_port=None,
        liveness_port=9001,
    )
    assert (
        config.runtime_image == "reg/rt:1"
        and config.service_account is None
        and config.namespaces == ("a", "b")
    )
    assert (
        config.runtime_metrics_port == 9300 and config.metrics_port == 8000 and config.liveness_port == 9001
    )
    (job,) = render(sds(), None, config)
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]
    assert env(job)["FREEATM_METRICS_PORT"] == "9300"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_freeatm_render_prints_valid_objects(path, capsys):
    from freeatm.cli.main import main

    code = main(["render", "-f", str(path)])
    out, errors = capsys.readouterr()
    assert code == 0, out + errors
    objects = [d for d in yaml.safe_load_all(out) if d]
    assert objects and {o["kind"] for o in objects} <= {"Job", "Service"}
    for obj in objects:
        kubernetes_validate.validate(obj, "1.29", strict=True)
