"""Scenarios: the operator in-process, against kmock and against the real control plane.

Each scenario runs on both tiers (tests/kmock_cluster.py): on kmock the harness plays the Job controller by
writing Job and pod status; on the real control plane (tests/control_plane.py) the real Job, TTL and garbage-
collector controllers run and the harness only decides how each pod ends (tests/pod_executor.py).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from openapi_schema_validator import OAS30Validator

sys.path.insert(0, str(Path(__file__).parent))

from kmock_cluster import Cluster, ControlPlaneCluster, KmockCluster, wait_for  # noqa: E402

from freeatm.api.crd import crd_for  # noqa: E402

NS_OUT = "file:///var/freeatm"


def sds(name: str, **spec) -> dict:
    base = {
        "model": {"uri": "toy://shapes"},
        "prompts": {"preset": "shapes"},
        "generation": {"images": 128, "resolution": 32, "shardSize": 64},
        "attention": {"resolutions": [16]},
        "workers": 2,
        "output": {"uri": f"{NS_OUT}/{name}"},
    }
    return {"kind": "SyntheticDataset", "metadata": {"name": name}, "spec": {**base, **spec}}


def mpj(name: str, dataset: str, **spec) -> dict:
    base = {
        "dataset": {"ref": dataset},
        "backbone": "resnet18_os8",  # a 4×4 grid at 32 px: mask guidance is refused below that
        "training": {"epochs": 1, "batchSize": 16, "imageSize": 32},
        "output": {"uri": f"{NS_OUT}/{name}"},
    }
    return {"kind": "MaskPretrainJob", "metadata": {"name": name}, "spec": {**base, **spec}}


def evj(name: str, checkpoints: list[str], **spec) -> dict:
    base = {
        "checkpoints": [{"ref": c} for c in checkpoints],
        "benchmarks": [
            {"name": "linear-probe", "dataset": {"format": "shapes", "uri": "toy://shapesbench/val"}}
        ],
        "output": {"uri": f"{NS_OUT}/{name}"},
    }
    return {"kind": "EvalJob", "metadata": {"name": name}, "spec": {**base, **spec}}


@pytest.fixture(params=["kmock", "real"])
def cluster(request):
    if request.param == "real":
        c = ControlPlaneCluster(request.getfixturevalue("control_plane"), request.getfixturevalue("node"))
    else:
        c = KmockCluster()
    try:
        c.start_operator()
        yield c
    finally:
        c.close()


def phase_of(c: Cluster, kind: str, name: str) -> str | None:
    return c.status(kind, name).get("phase")


def wait_phase(c: Cluster, kind: str, name: str, phase: str, timeout: float = 15) -> dict:
    # On the real tier the node runs a pod as soon as it is scheduled: a Pending resource may be Running already.
    accepted = {phase, "Running"} if phase == "Pending" and not c.emulated else {phase}
    wait_for(lambda: phase_of(c, kind, name) in accepted, timeout, f"{kind}/{name} {phase}")
    status = c.status(kind, name)
    schema = crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    OAS30Validator(schema).validate(status)
    return status


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def runtime_spec(job: dict) -> dict:
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return json.loads(next(e["value"] for e in env if e["name"] == "FREEATM_SPEC"))


def test_three_stage_chain_runs_in_order_and_hands_outputs_over(cluster):
    c = cluster
    c.create(sds("shapes"))
    c.create(mpj("shapes-freeatm", "shapes"))
    c.create(
        evj("shapes-eval", ["shapes-freeatm"], dependsOn=[{"kind": "SyntheticDataset", "name": "shapes"}])
    )

    wait_for(lambda: c.job("shapes-gen"), what="generation Job")
    status = wait_phase(c, "MaskPretrainJob", "shapes-freeatm", "Waiting")
    assert status["waitingFor"] == ["SyntheticDataset/shapes"]
    assert condition(status, "DependenciesReady")["status"] == "False"
    assert wait_phase(c, "EvalJob", "shapes-eval", "Waiting")["waitingFor"] == [
        "MaskPretrainJob/shapes-freeatm",
        "SyntheticDataset/shapes",
    ]
    assert c.job("shapes-freeatm-train") is None and c.job("shapes-eval-eval") is None

    c.job_running("shapes-gen", active=2)
    wait_phase(c, "SyntheticDataset", "shapes", "Running")
    c.job_succeeded(
        "shapes-gen",
        [{"uri": f"{NS_OUT}/shapes", "manifestDigest": "sha256:feed"}, {"uri": f"{NS_OUT}/shapes"}],
    )
    status = wait_phase(c, "SyntheticDataset", "shapes", "Succeeded")
    assert status["outputs"] == {"uri": f"{NS_OUT}/shapes", "manifestDigest": "sha256:feed"}
    assert (
        condition(status, "Ready")["status"] == "True" and condition(status, "Complete")["status"] == "True"
    )

    train = wait_for(lambda: c.job("shapes-freeatm-train"), what="training Job (event-driven start)")
    assert runtime_spec(train)["spec"]["dataset"] == {"uri": f"{NS_OUT}/shapes"}
    assert train["metadata"]["ownerReferences"][0]["kind"] == "MaskPretrainJob"
    wait_phase(c, "MaskPretrainJob", "shapes-freeatm", "Pending")
    assert wait_phase(c, "EvalJob", "shapes-eval", "Waiting")["waitingFor"] == [
        "MaskPretrainJob/shapes-freeatm"
    ]

    c.job_succeeded(
        "shapes-freeatm-train",
        [{"uri": f"{NS_OUT}/shapes-freeatm", "checkpointUri": f"{NS_OUT}/shapes-freeatm/backbone.pt"}],
    )
    wait_phase(c, "MaskPretrainJob", "shapes-freeatm", "Succeeded")
    ev = wait_for(lambda: c.job("shapes-eval-eval"), what="evaluation Job")
    assert runtime_spec(ev)["spec"]["checkpoints"] == [
        {"uri": f"{NS_OUT}/shapes-freeatm", "label": "shapes-freeatm"}
    ]

    rows = [{"checkpoint": "shapes-freeatm", "benchmark": "linear-probe", "metric": "top1", "value": 0.81}]
    c.job_succeeded(
        "shapes-eval-eval",
        [{"uri": f"{NS_OUT}/shapes-eval", "reportUri": f"{NS_OUT}/shapes-eval/report.md", "results": rows}],
    )
    status = wait_phase(c, "EvalJob", "shapes-eval", "Succeeded")
    assert status["outputs"]["results"] == rows
    reasons = wait_for(
        lambda: (r := [e["reason"] for e in c.events("shapes-eval")]) and r[-1] == "Succeeded" and r
    )
    # On the real tier the pod runs as soon as it is scheduled: the operator may see it Running.
    running = [] if c.emulated else [r for r in reasons if r == "Running"][:1]
    assert reasons == ["WaitingForDependencies", "JobCreated", *running, "Succeeded"]


def test_dependency_failure_propagates_unless_the_policy_waits(cluster):
    c = cluster
    c.create(sds("data"))
    c.create(mpj("strict", "data"))
    c.create(mpj("patient", "data", onDependencyFailure="Wait"))
    wait_for(lambda: c.job("data-gen"))
    wait_phase(c, "MaskPretrainJob", "strict", "Waiting")
    c.job_failed(
        "data-gen", "BackoffLimitExceeded", failed=4, message="Job has reached the specified backoff limit"
    )
    wait_phase(c, "SyntheticDataset", "data", "Failed")
    status = wait_phase(c, "MaskPretrainJob", "strict", "Failed")
    assert condition(status, "Stalled")["reason"] == "DependencyFailed"
    assert "SyntheticDataset/data" in condition(status, "Ready")["message"]
    status = wait_phase(c, "MaskPretrainJob", "patient", "Waiting")
    assert "Failed" in condition(status, "DependenciesReady")["message"]
    assert c.job("strict-train") is None and c.job("patient-train") is None


def test_dependency_applied_after_its_dependent(cluster):
    c = cluster
    c.create(mpj("early", "late-data"))
    status = wait_phase(c, "MaskPretrainJob", "early", "Waiting")
    assert "SyntheticDataset/late-data (not found)" in condition(status, "DependenciesReady")["message"]
    c.create(sds("late-data"))
    wait_for(lambda: c.job("late-data-gen"))
    c.job_succeeded("late-data-gen", [{"uri": f"{NS_OUT}/late-data"}])
    wait_for(lambda: c.job("early-train"), what="dependent's Job")
    assert wait_phase(c, "MaskPretrainJob", "early", "Pending")["waitingFor"] == []


def test_cycle_is_refused_with_a_message_naming_it(cluster):
    c = cluster
    c.create(sds("a", dependsOn=[{"kind": "SyntheticDataset", "name": "b"}]))
    c.create(sds("b", dependsOn=[{"kind": "SyntheticDataset", "name": "a"}]))
    for name in ("a", "b"):
        status = wait_phase(c, "SyntheticDataset", name, "Failed")
        assert condition(status, "Stalled")["reason"] == "DependencyCycle"
    msg = condition(c.status("SyntheticDataset", "a"), "Ready")["message"]
    assert msg == "dependency cycle: SyntheticDataset/a → SyntheticDataset/b → SyntheticDataset/a"
    assert c.jobs() == []
    c.patch_spec("SyntheticDataset", "a", {"dependsOn": []})  # break the cycle: a runs, b waits for it
    wait_for(lambda: c.job("a-gen"), what="a's Job after the cycle is broken")
    wait_phase(c, "SyntheticDataset", "b", "Waiting")


def test_invalid_spec_fails_until_the_spec_changes(cluster):
    c = cluster
    bad = sds("bad", prompts={"classes": ["cat"], "templates": ["no slot here"]})
    c.create(bad)
    status = wait_phase(c, "SyntheticDataset", "bad", "Failed")
    stalled = condition(status, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec"
    assert "spec.prompts.templates" in stalled["message"]
    assert status["observedGeneration"] == 1
    assert c.jobs() == []
    c.patch_spec(
        "SyntheticDataset", "bad", {"prompts": {"classes": ["cat"], "templates": ["a photo of a {}"]}}
    )
    wait_for(lambda: c.job("bad-gen"), what="Job after the fix")
    status = wait_phase(c, "SyntheticDataset", "bad", "Pending")
    assert status["observedGeneration"] == 2 and condition(status, "Stalled")["status"] == "False"


def test_suspend_and_resume(cluster):
    c = cluster
    c.create(sds("paused", suspend=True))
    job = wait_for(lambda: c.job("paused-gen"))
    assert job["spec"]["suspend"] is True
    status = wait_phase(c, "SyntheticDataset", "paused", "Suspended")
    assert condition(status, "Suspended")["status"] == "True"
    c.patch_spec("SyntheticDataset", "paused", {"suspend": False})
    wait_for(lambda: c.job("paused-gen")["spec"]["suspend"] is False, what="Job resumed")
    wait_phase(c, "SyntheticDataset", "paused", "Pending")
    c.job_running("paused-gen", active=2)
    wait_phase(c, "SyntheticDataset", "paused", "Running")
    c.patch_spec("SyntheticDataset", "paused", {"suspend": True})
    wait_for(lambda: c.job("paused-gen")["spec"]["suspend"] is True, what="Job suspended again")
    assert len(c.jobs()) == 1


def test_deleting_a_resource_deletes_its_workload(cluster):
    c = cluster
    doc = mpj("gone", "unused", distributed={"nodes": 2, "gpusPerNode": 0})
    doc["spec"]["dataset"] = {"uri": f"{NS_OUT}/d"}
    c.create(doc)
    wait_for(lambda: c.job("gone-train"))
    # The Service selects the pods of this Job by its uid, so it is created right after the Job, not with it.
    assert wait_for(lambda: c.get("Service", "gone-train"), what="headless Service")["spec"]["clusterIP"] == "None"
    c.delete("MaskPretrainJob", "gone")
    wait_for(
        lambda: c.job("gone-train") is None and c.get("Service", "gone-train") is None,
        what="workload deleted",
    )


def test_operator_restart_mid_run_neither_duplicates_nor_loses_work(cluster):
    c = cluster
    c.create(sds("steady"))
    c.create(mpj("after", "steady"))
    uid = wait_for(lambda: c.job("steady-gen"))["metadata"].get("uid")
    c.job_running("steady-gen", active=2)
    wait_phase(c, "SyntheticDataset", "steady", "Running")
    c.stop_operator()
    c.job_succeeded("steady-gen", [{"uri": f"{NS_OUT}/steady", "manifestDigest": "sha256:1"}])
    c.start_operator()
    assert wait_phase(c, "SyntheticDataset", "steady", "Succeeded")["outputs"]["manifestDigest"] == "sha256:1"
    wait_for(lambda: c.job("after-train"), what="dependent started after the restart")
    assert c.job("steady-gen")["metadata"].get("uid") == uid
    if c.emulated:
        assert c.requests_for("POST", "Job") == 2  # one per resource, none duplicated
    c.stop_operator()
    c.start_operator()  # a second restart with everything in place changes nothing
    wait_phase(c, "MaskPretrainJob", "after", "Pending")
    if c.emulated:
        assert c.requests_for("POST", "Job") == 2


def test_resync_recovers_a_lost_job_event(cluster, monkeypatch):
    from freeatm.operator import handlers
    from freeatm.operator.reconcile import Context, job_state

    c = cluster
    c.stop_operator()
    c.config = replace(c.config, resync_seconds=1.0)
    wake, remember = handlers.wake, Context.remember_job
    resyncs: list[float] = []

    def forgetful(ctx, job):  # what the Job watch brings after the create gets lost too
        if job_state(job).blank:
            remember(ctx, job)

    def lossy(ctx, key, why, **options):  # every wake-up from a Job (and every poll) gets lost
        if why.startswith("Job/") or why == "poll":
            return
        if why == "resync":
            resyncs.append(time.monotonic())
        wake(ctx, key, why, **options)

    monkeypatch.setattr(handlers, "wake", lossy)
    monkeypatch.setattr(Context, "remember_job", forgetful)
    c.start_operator()
    c.create(sds("lossy"))
    wait_phase(c, "SyntheticDataset", "lossy", "Pending")
    # A first resync proves the resource idle: no event of the operator's own is still on its way.
    wait_for(lambda: resyncs, what="a resync of the idle resource")
    idle = len(resyncs)
    c.job_succeeded("lossy-gen", [{"uri": f"{NS_OUT}/lossy", "manifestDigest": "sha256:2"}])
    assert wait_phase(c, "SyntheticDataset", "lossy", "Succeeded")["outputs"]["manifestDigest"] == "sha256:2"
    assert len(resyncs) > idle


def test_retries_exhausted(cluster):
    c = cluster
    c.create(sds("flaky", backoffLimit=3))
    wait_for(lambda: c.job("flaky-gen"))
    c.job_running("flaky-gen", active=2, failed=2)
    assert wait_phase(c, "SyntheticDataset", "flaky", "Running")["restarts"] == 2
    c.job_failed(
        "flaky-gen", "BackoffLimitExceeded", failed=4, message="Job has reached the specified backoff limit"
    )
    status = wait_phase(c, "SyntheticDataset", "flaky", "Failed")
    assert status["restarts"] == 4 and status["completionTime"]
    assert condition(status, "Stalled")["reason"] == "BackoffLimitExceeded"
    assert condition(status, "Failed")["status"] == "True"
    warnings = wait_for(lambda: [e for e in c.events("flaky") if e["type"] == "Warning"])
    assert warnings[0]["reason"] == "BackoffLimitExceeded"


def test_bad_input_fails_at_once(cluster):
    c = cluster
    c.create(sds("wrong"))
    wait_for(lambda: c.job("wrong-gen"))
    c.job_failed(
        "wrong-gen",
        "PodFailurePolicy",
        failed=1,
        message="Container runtime exited with 65",
        error="model toy://nope: unknown",
    )
    status = wait_phase(c, "SyntheticDataset", "wrong", "Failed")
    assert condition(status, "Stalled")["reason"] == "InvalidInput"
    assert "model toy://nope: unknown" in condition(status, "Stalled")["message"]


def test_pod_evicted_does_not_count_as_a_failure(cluster):
    c = cluster
    c.create(sds("evicted", workers=1))
    job = wait_for(lambda: c.job("evicted-gen"))
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    c.job_running("evicted-gen", active=1)
    wait_phase(c, "SyntheticDataset", "evicted", "Running")
    # The kubelet evicts the pod; the Job controller ignores it (podFailurePolicy) and starts a replacement.
    c.add_pod(
        "evicted-gen",
        0,
        exit_code=137,
        conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}],
    )
    c.job_running("evicted-gen", active=1, failed=0)
    c.job_succeeded("evicted-gen", [{"uri": f"{NS_OUT}/evicted"}])
    status = wait_phase(c, "SyntheticDataset", "evicted", "Succeeded")
    assert status["restarts"] == 0 and status["outputs"]["uri"] == f"{NS_OUT}/evicted"


def test_spec_change_replaces_the_job_and_restarts_the_run(cluster):
    c = cluster
    c.create(sds("changing"))
    first = wait_for(lambda: c.job("changing-gen"))
    c.job_running("changing-gen", active=2)
    wait_phase(c, "SyntheticDataset", "changing", "Running")
    c.patch_spec("SyntheticDataset", "changing", {"workers": 1})
    second = wait_for(
        lambda: (j := c.job("changing-gen")) and j["spec"]["parallelism"] == 1 and j, what="new Job"
    )
    assert second["metadata"]["annotations"]["freeatm.io/generation"] == "2"
    assert (
        second["metadata"]["annotations"]["freeatm.io/spec-digest"]
        != first["metadata"]["annotations"]["freeatm.io/spec-digest"]
    )
    status = wait_phase(c, "SyntheticDataset", "changing", "Pending")
    assert status["observedGeneration"] == 2 and status.get("restarts", 0) == 0


def test_metrics_and_liveness_endpoints():
    import socket

    from kmock_cluster import KmockCluster

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    c = KmockCluster()
    try:
        c.config = type(c.config)(
            **{**c.config.__dict__, "metrics_port": free_port(), "liveness_port": free_port()}
        )
        c.start_operator(serve=True)
        c.create(sds("observed"))
        wait_for(lambda: c.job("observed-gen"))
        health = wait_for(lambda: _get(f"http://127.0.0.1:{c.config.liveness_port}/healthz"), what="liveness")
        assert health is not None
        text = wait_for(
            lambda: (
                (t := _get(f"http://127.0.0.1:{c.config.metrics_port}/metrics"))
                and "JobCreated" not in t
                and t
            )
        )
        assert 'freeatm_operator_jobs_created_total{kind="SyntheticDataset"}' in text
        assert 'freeatm_operator_resources{kind="SyntheticDataset",phase="Pending"} 1.0' in text
    finally:
        c.close()


def _get(url: str) -> str | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_a_foreign_job_with_the_same_name_is_not_adopted(cluster):
    c = cluster
    c.create(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "taken-gen"},
            "spec": {
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "nodeSelector": {"freeatm.io/e2e": "unschedulable"},
                        "containers": [{"name": "c", "image": "busybox"}],
                    }
                }
            },
        }
    )
    c.create(sds("taken"))
    status = wait_phase(c, "SyntheticDataset", "taken", "Waiting")
    assert condition(status, "Ready")["reason"] == "JobNameConflict"
    assert "ownerReferences" not in c.job("taken-gen")["metadata"]


# -- issue #13: the lifecycle defects a real control plane exposes ---------------------------------------------


def real_only(c: Cluster, why: str) -> None:
    if c.emulated:
        pytest.skip(f"kmock {why}")


def wait_reason(c: Cluster, kind: str, name: str, reason: str, timeout: float = 30) -> dict:
    """The status once its Ready condition gives `reason`."""
    return wait_for(
        lambda: (s := c.status(kind, name)) and condition(s, "Ready")["reason"] == reason and s,
        timeout,
        f"{reason} as the reason of {kind}/{name}",
    )


def warnings_of(c: Cluster, name: str) -> list[dict]:
    return [e for e in c.events(name) if e.get("type") == "Warning"]


def test_a_job_the_api_server_rejects_fails_with_its_message_once(cluster):
    c = cluster
    real_only(c, "validates no Job")
    bad = {"spec": {"containers": [{"name": "runtime", "imagePullPolicy": "Sometimes"}]}}
    c.create(sds("refused", workers=1, podTemplate=bad))
    status = wait_phase(c, "SyntheticDataset", "refused", "Failed")
    stalled = condition(status, "Stalled")
    assert stalled["reason"] == "JobRejected" and "imagePullPolicy" in stalled["message"], stalled
    time.sleep(7)  # longer than the old fixed 5 s retry
    assert len(warnings_of(c, "refused")) == 1 and c.job("refused-gen") is None


def test_a_quota_forbidding_the_job_is_a_status_retried_with_backoff(cluster):
    c = cluster
    real_only(c, "has no admission")
    quota = {
        "kind": "ResourceQuota",
        "metadata": {"name": "no-jobs"},
        "spec": {"hard": {"count/jobs.batch": "0"}},
    }
    quotas = f"/api/v1/namespaces/{c.namespace}/resourcequotas"
    c.api.create(quotas, {"apiVersion": "v1", **quota})
    # What the ResourceQuota controller (not run by the test control plane) would compute; admission needs it.
    used = {"status": {"hard": {"count/jobs.batch": "0"}, "used": {"count/jobs.batch": "0"}}}
    c.api.patch(f"{quotas}/no-jobs/status", used)
    c.create(sds("quota", workers=1))
    status = wait_phase(c, "SyntheticDataset", "quota", "Failed")
    assert condition(status, "Stalled")["reason"] == "CreateForbidden"
    assert "forbidden" in condition(status, "Stalled")["message"]
    c.api.delete(f"{quotas}/no-jobs")
    wait_for(lambda: c.job("quota-gen"), 40, "the Job once the quota is gone")
    wait_phase(c, "SyntheticDataset", "quota", "Pending", timeout=30)
    assert len(warnings_of(c, "quota")) == 1


def test_ttl_cannot_take_the_result_while_the_operator_is_down(cluster):
    c = cluster
    c.create(sds("ttl", workers=1, ttlSecondsAfterFinished=1))
    wait_for(lambda: c.job("ttl-gen"))
    c.job_running("ttl-gen", active=1)
    wait_phase(c, "SyntheticDataset", "ttl", "Running")
    c.stop_operator()
    c.job_succeeded("ttl-gen", [{"uri": f"{NS_OUT}/ttl", "manifestDigest": "sha256:ttl"}])
    time.sleep(3)  # the TTL controller deletes the finished Job; its pods keep the result for the operator
    c.start_operator()
    status = wait_phase(c, "SyntheticDataset", "ttl", "Succeeded", timeout=30)
    assert status["outputs"]["manifestDigest"] == "sha256:ttl"
    if not c.emulated:
        wait_for(lambda: c.job("ttl-gen") is None, 30, "the TTL to delete the Job once the result is read")
    time.sleep(2)  # and it is not run again
    assert phase_of(c, "SyntheticDataset", "ttl") == "Succeeded"
    if c.emulated:
        assert c.requests_for("POST", "Job") == 1
    else:
        assert c.job("ttl-gen") is None


def test_a_job_deleted_before_its_result_was_read_fails_instead_of_rerunning(cluster):
    c = cluster
    c.create(sds("lost", workers=1))
    wait_for(lambda: c.job("lost-gen"))
    c.job_running("lost-gen", active=1)
    wait_phase(c, "SyntheticDataset", "lost", "Running")
    c.stop_operator()
    c.job_succeeded("lost-gen", [{"uri": f"{NS_OUT}/lost"}])
    c.delete("Job", "lost-gen")
    wait_for(lambda: c.job("lost-gen") is None, 30, "the Job deleted")
    c.start_operator()
    status = wait_phase(c, "SyntheticDataset", "lost", "Failed", timeout=30)
    assert condition(status, "Stalled")["reason"] == "JobLost"
    time.sleep(3)
    assert c.job("lost-gen") is None
    c.patch_spec(
        "SyntheticDataset", "lost", {"generation": {"images": 64, "resolution": 32, "shardSize": 64}}
    )
    wait_for(lambda: c.job("lost-gen"), 30, "a new Job for the new spec")


def test_a_replacement_waits_for_the_old_pods(cluster):
    c = cluster
    c.create(sds("replace", workers=1))
    c.job_running(wait_for(lambda: c.job("replace-gen"))["metadata"]["name"], active=1)
    old = c.job("replace-gen")
    c.api.patch(
        c.path("SyntheticDataset", "replace") + ("" if c.emulated else "/status"),
        {"status": {"progress": {"done": 3, "total": 10}}},
    )
    c.patch_spec(
        "SyntheticDataset", "replace", {"generation": {"images": 64, "resolution": 32, "shardSize": 64}}
    )
    new = wait_for(
        lambda: (
            (j := c.job("replace-gen")) and j["metadata"]["annotations"]["freeatm.io/generation"] == "2" and j
        ),
        30,
        "the new Job",
    )
    if not c.emulated:
        assert new["metadata"]["uid"] != old["metadata"]["uid"]
        label = {"batch.kubernetes.io/controller-uid": old["metadata"]["uid"]}
        assert c.api.list(c.path("Pod"), label) == [], "the new Job came before the old pods were gone"
    status = wait_phase(c, "SyntheticDataset", "replace", "Pending", timeout=30)
    assert "progress" not in status and status.get("restarts", 0) == 0


def test_the_rendezvous_service_selects_the_pods_of_this_job_only(cluster):
    c = cluster
    doc = mpj("ddp", "unused", distributed={"nodes": 2, "gpusPerNode": 0})
    doc["spec"]["dataset"] = {"uri": f"{NS_OUT}/d"}
    c.create(doc)
    job = wait_for(lambda: c.job("ddp-train"))
    svc = wait_for(lambda: c.get("Service", "ddp-train"))
    if c.emulated:
        assert svc["spec"]["selector"] == {"freeatm.io/kind": "MaskPretrainJob", "freeatm.io/name": "ddp"}
    else:
        assert svc["spec"]["selector"] == {"batch.kubernetes.io/controller-uid": job["metadata"]["uid"]}


def test_pause_after_a_helm_upgrade_keeps_the_running_job(cluster):
    c = cluster
    c.create(sds("upgrade", workers=1))
    first = wait_for(lambda: c.job("upgrade-gen"))
    c.job_running("upgrade-gen", active=1)
    wait_phase(c, "SyntheticDataset", "upgrade", "Running")
    c.stop_operator()
    c.config = replace(c.config, runtime_image="freeatm-runtime:upgraded")
    c.start_operator()
    c.patch_spec("SyntheticDataset", "upgrade", {"suspend": True})
    wait_for(lambda: (j := c.job("upgrade-gen")) and j["spec"]["suspend"] is True, 30, "the Job suspended")
    assert c.job("upgrade-gen")["metadata"].get("uid") == first["metadata"].get("uid")
    wait_phase(c, "SyntheticDataset", "upgrade", "Suspended")
    if c.emulated:
        assert c.requests_for("POST", "Job") == 1


def test_a_dependency_deleted_after_it_succeeded_keeps_the_dependents_job(cluster):
    c = cluster
    c.create(sds("base", workers=1))
    c.create(mpj("user", "base"))
    wait_for(lambda: c.job("base-gen"))
    c.job_succeeded("base-gen", [{"uri": f"{NS_OUT}/base"}])
    first = wait_for(lambda: c.job("user-train"), 30, "the dependent's Job")
    c.delete("SyntheticDataset", "base")
    wait_for(lambda: c.get("SyntheticDataset", "base") is None, 30, "the dependency deleted")
    c.patch_spec("MaskPretrainJob", "user", {"suspend": True})
    wait_for(
        lambda: (j := c.job("user-train")) and j["spec"]["suspend"] is True,
        30,
        "the dependent's Job suspended",
    )
    assert c.job("user-train")["metadata"].get("uid") == first["metadata"].get("uid")


def test_a_job_left_by_an_earlier_resource_of_the_same_name_is_not_adopted(cluster):
    c = cluster
    c.create(sds("again", workers=1))
    wait_for(lambda: c.job("again-gen"))
    c.job_succeeded("again-gen", [{"uri": f"{NS_OUT}/again", "manifestDigest": "sha256:earlier"}])
    wait_phase(c, "SyntheticDataset", "again", "Succeeded", timeout=30)
    c.stop_operator()
    if not c.emulated:  # the garbage collector's window held open, as long as a busy cluster can take
        c.api.patch(c.path("Job", "again-gen"), {"metadata": {"finalizers": ["freeatm.io/test-hold"]}})
    c.delete("SyntheticDataset", "again")
    wait_for(lambda: c.get("SyntheticDataset", "again") is None, 30, "the earlier resource deleted")
    c.create(sds("again", workers=1, generation={"images": 64, "resolution": 32, "shardSize": 64}))
    uid = c.get("SyntheticDataset", "again")["metadata"]["uid"]
    c.start_operator()
    if not c.emulated:
        status = wait_reason(c, "SyntheticDataset", "again", "ReplacingJob")
        assert "earlier" in condition(status, "Ready")["message"] and "outputs" not in status
        c.api.patch(c.path("Job", "again-gen"), {"metadata": {"finalizers": None}})
    wait_for(
        lambda: (j := c.job("again-gen")) and j["metadata"]["ownerReferences"][0]["uid"] == uid,
        30,
        "a Job owned by the new resource",
    )
    status = wait_phase(c, "SyntheticDataset", "again", "Pending", timeout=30)
    assert "outputs" not in status, "the new resource took the earlier one's result"


def test_a_missing_service_account_is_the_pending_reason(cluster):
    c = cluster
    real_only(c, "runs no Job controller")
    c.create(sds("nosa", workers=1, serviceAccountName="missing-sa"))
    status = wait_reason(c, "SyntheticDataset", "nosa", "FailedCreate")
    assert status["phase"] == "Pending" and "missing-sa" in condition(status, "Ready")["message"]


def test_an_unschedulable_pod_is_the_pending_reason_with_the_schedulers_words(cluster):
    c = cluster
    real_only(c, "runs no scheduler")
    c.create(sds("gpu", workers=1, resources={"limits": {"nvidia.com/gpu": 1}}))
    status = wait_reason(c, "SyntheticDataset", "gpu", "Unschedulable")
    assert (
        status["phase"] == "Pending"
        and "Insufficient nvidia.com/gpu" in condition(status, "Ready")["message"]
    )
    plane = getattr(c, "plane", None)
    if plane is not None and hasattr(plane, "kubectl"):
        shown = plane.kubectl("get", "sds", "gpu", "-n", c.namespace)
        assert "Unschedulable" in str(getattr(shown, "stdout", shown))


def test_an_image_that_cannot_be_pulled_is_the_pending_reason(cluster):
    c = cluster
    real_only(c, "runs no kubelet")
    image = {"spec": {"containers": [{"name": "runtime", "image": "registry.invalid/freeatm-runtime:gone"}]}}
    c.create(sds("pull", workers=1, podTemplate=image))
    status = wait_reason(c, "SyntheticDataset", "pull", "ImagePullBackOff")
    message = condition(status, "Ready")["message"]
    assert status["phase"] == "Pending" and "registry.invalid/freeatm-runtime:gone" in message, message


def test_a_job_kueue_has_not_admitted_is_the_pending_reason_and_stays_suspended(cluster):
    c = cluster
    c.create(sds("queued", workers=1, queueName="team-a"))
    wait_for(lambda: c.job("queued-gen"))
    c.api.patch(c.path("Job", "queued-gen"), {"spec": {"suspend": True}})  # Kueue's part, until it admits
    status = wait_reason(c, "SyntheticDataset", "queued", "Queued")
    assert status["phase"] == "Pending" and "team-a" in condition(status, "Ready")["message"]
    time.sleep(2)
    assert c.job("queued-gen")["spec"]["suspend"] is True, "the operator undid Kueue's suspension"
    c.api.patch(c.path("Job", "queued-gen"), {"spec": {"suspend": False}})  # admitted
    c.job_running("queued-gen", active=1)
    wait_phase(c, "SyntheticDataset", "queued", "Running", timeout=30)


def test_crds_installed_after_the_operator_started_are_served(cluster):
    c = cluster
    real_only(c, "has no CRD objects")
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    name = crd_for("EvalJob")["metadata"]["name"]
    c.stop_operator()
    c.api.delete(f"{crds}/{name}")
    wait_for(lambda: c.api.get(f"{crds}/{name}") is None, 60, "the EvalJob CRD deleted")
    c.start_operator()
    c.api.create(crds, crd_for("EvalJob"))
    wait_for(
        lambda: any(
            r.get("kind") == "EvalJob"
            for r in (c.api.get("/apis/freeatm.io/v1alpha1") or {}).get("resources", [])
        ),
        60,
        "EvalJob served",
    )
    doc = evj("late", [])
    doc["spec"]["checkpoints"] = [{"uri": f"{NS_OUT}/ckpt", "label": "c"}]
    c.create(doc)
    wait_for(lambda: c.job("late-eval"), 30, "the EvalJob's Job")


def test_a_nan_loss_cannot_break_the_progress_patch(cluster):
    import kubernetes.client

    from freeatm.runtime.status_patch import status_sink

    c = cluster
    doc = mpj("nan", "unused")
    doc["spec"]["dataset"] = {"uri": f"{NS_OUT}/d"}
    c.create(doc)
    sink = status_sink(f"MaskPretrainJob/{c.namespace}/nan", kubernetes.client.ApiClient(c.configuration))
    sink({"done": 2, "total": 10, "loss": float("nan"), "rate": float("inf")})
    assert wait_for(lambda: c.status("MaskPretrainJob", "nan").get("progress"))["done"] == 2
