"""The control loop without an API: decide (pure) case by case, and whole passes over an in-memory API."""

from __future__ import annotations

import copy

import pytest

from freeatm.api import parse_resource
from freeatm.api.conditions import get_condition
from freeatm.operator.config import OperatorConfig
from freeatm.operator.decide import CreateWorkload, DeleteJob, PatchJob, decide
from freeatm.operator.dependencies import evaluate
from freeatm.operator.kube import Conflict, Rejected
from freeatm.operator.observe import Observed, ResourceKey
from freeatm.operator.reconcile import Context, reconcile
from freeatm.operator.status import desired_status
from freeatm.operator.workload import RESULT_FINALIZER, render

NS = "ns"
KEY = ResourceKey("SyntheticDataset", NS, "d")
RES = f"/apis/freeatm.io/v1alpha1/namespaces/{NS}/syntheticdatasets/d"
JOB = f"/apis/batch/v1/namespaces/{NS}/jobs/d-gen"
T0 = "2026-01-01T00:00:00Z"


def merge(a, b):
    out = dict(a)
    for k, v in b.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


class FakeKube:
    """Objects by API path; merge patches (/status too); no controllers. `refuse` makes creates fail."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.refuse: Rejected | None = None

    def get(self, path):
        self.calls.append(("GET", path))
        return copy.deepcopy(self.objects.get(path))

    def list(self, path, labels=None, fields=None):
        self.calls.append(("LIST", path))
        return [
            copy.deepcopy(o)
            for p, o in self.objects.items()
            if p.rsplit("/", 1)[0] == path
            and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in (labels or {}).items())
        ]

    def create(self, path, body):
        self.calls.append(("POST", path))
        if self.refuse is not None:
            raise self.refuse
        key = f"{path}/{body['metadata']['name']}"
        if key in self.objects:
            raise Conflict(key)
        body = copy.deepcopy(body)
        body["metadata"].setdefault("uid", f"uid-{len(self.objects)}")
        self.objects[key] = body
        return copy.deepcopy(body)

    def patch(self, path, body):
        self.calls.append(("PATCH", path))
        path = path.removesuffix("/status")
        if path not in self.objects:
            return None
        self.objects[path] = merge(self.objects[path], body)
        return copy.deepcopy(self.objects[path])

    def delete(self, path, propagation="Background", uid=None):
        self.calls.append(("DELETE", path))
        return self.objects.pop(path, None) is not None


def resource(gen=1, **spec):
    return {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": "SyntheticDataset",
        "metadata": {"name": "d", "namespace": NS, "uid": "u-1", "generation": gen},
        "spec": {
            "model": {"uri": "toy://shapes"},
            "prompts": {"preset": "shapes"},
            "output": {"uri": "s3://b/d"},
            **spec,
        },
    }


def world(**spec) -> tuple[FakeKube, Context]:
    kube = FakeKube()
    kube.objects[RES] = resource(**spec)
    return kube, Context(kube=kube, config=OperatorConfig())


def edit(kube, **spec):
    """A spec change: the API server bumps the generation."""
    body = kube.objects[RES]
    body["spec"].update(spec)
    body["metadata"]["generation"] += 1


def status(kube):
    return kube.objects[RES].get("status") or {}


def ready(kube):
    return get_condition(status(kube)["conditions"], "Ready")


def no_deps(kind, name):
    return None


def run(ctx, watched=True):
    """A pass; `watched`: the Job watch has delivered the Job as it is now (as it does before the pass it wakes)."""
    if watched:
        job = ctx.kube.objects.get(JOB)
        if job is None:
            ctx.forget_job(NS, "d-gen")
        else:
            ctx.remember_job(job)
    return reconcile(KEY, no_deps, ctx, now=T0)


def finish_job(kube, results=()):
    kube.objects[JOB]["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    for i, message in enumerate(results):
        kube.objects[f"/api/v1/namespaces/{NS}/pods/d-gen-{i}"] = pod(i, message)


def pod(index, message, finalizers=(RESULT_FINALIZER,), **status):
    import json

    return {
        "metadata": {
            "name": f"d-gen-{index}",
            "namespace": NS,
            "labels": {"batch.kubernetes.io/job-name": "d-gen"},
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
            "finalizers": list(finalizers),
            "resourceVersion": "7",
        },
        "status": status
        or {
            "phase": "Succeeded",
            "containerStatuses": [
                {"name": "runtime", "state": {"terminated": {"exitCode": 0, "message": json.dumps(message)}}}
            ],
        },
    }


# -- whole passes -------------------------------------------------------------------------------------------


def test_a_second_pass_changes_nothing():
    kube, ctx = world()
    first = run(ctx)
    assert first.created == ["d-gen"] and first.phase == "Pending" and first.event.reason == "JobCreated"
    assert kube.objects[JOB]["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert status(kube)["jobName"] == "d-gen" and status(kube)["observedGeneration"] == 1
    kube.calls.clear()
    second = run(ctx)
    assert second.event is None and second.created == []
    assert [c[0] for c in kube.calls if c[0] not in ("GET", "LIST")] == []  # nothing written


def test_the_result_is_written_before_the_pods_are_released():
    kube, ctx = world()
    run(ctx)
    finish_job(kube, [{"uri": "s3://b/d", "manifestDigest": "sha256:1"}])
    out = run(ctx)
    assert out.phase == "Succeeded" and status(kube)["outputs"]["manifestDigest"] == "sha256:1"
    writes = [p for m, p in kube.calls if m == "PATCH"]
    assert writes[-2:] == [RES + "/status", f"/api/v1/namespaces/{NS}/pods/d-gen-0"]
    assert kube.objects[f"/api/v1/namespaces/{NS}/pods/d-gen-0"]["metadata"]["finalizers"] == []


def test_a_job_gone_before_its_result_was_read_is_not_run_again():
    kube, ctx = world(ttlSecondsAfterFinished=0)
    run(ctx)
    del kube.objects[JOB]  # the TTL controller (or anyone) deleted it before the operator looked
    out = run(ctx)
    assert out.created == [] and out.phase == "Failed" and JOB not in kube.objects
    assert ready(kube)["reason"] == "JobLost" and "change the spec" in ready(kube)["message"]
    assert run(ctx).created == []  # and stays so
    edit(kube, workers=2)
    assert run(ctx).created == ["d-gen"]  # a new spec runs again


def test_a_finished_resource_is_not_rerun_when_its_job_is_gone():
    kube, ctx = world()
    run(ctx)
    finish_job(kube)
    run(ctx)
    assert status(kube)["phase"] == "Succeeded" and status(kube)["outputs"] == {"uri": "s3://b/d"}
    del kube.objects[JOB]  # ttlSecondsAfterFinished, after the result was read
    out = run(ctx)
    assert out.created == [] and out.phase == "Succeeded" and out.event is None


def test_suspend_is_a_patch_and_other_changes_replace_the_job_after_it_is_gone():
    kube, ctx = world()
    run(ctx)
    kube.objects[RES]["status"]["progress"] = {"done": 3}
    edit(kube, suspend=True)
    out = run(ctx)
    job = kube.objects[JOB]
    assert job["spec"]["suspend"] is True and job["metadata"]["annotations"]["freeatm.io/generation"] == "2"
    assert out.phase == "Suspended" and out.deleted == [] and status(kube)["progress"] == {"done": 3}
    edit(kube, workers=2, generation={"images": 8, "shardSize": 4})
    out = run(ctx)
    assert out.deleted == ["d-gen"] and out.created == [] and out.phase == "Pending"
    assert ready(kube)["reason"] == "ReplacingJob" and "progress" not in status(kube)
    out = run(ctx)  # the old Job is gone now: the new one is created
    assert out.created == ["d-gen"]
    assert kube.objects[JOB]["metadata"]["annotations"]["freeatm.io/generation"] == "3"


def test_kueue_suspending_the_job_is_not_undone():
    kube, ctx = world(queueName="team-a")
    run(ctx)
    kube.objects[JOB]["spec"]["suspend"] = True  # Kueue holds it until admission
    out = run(ctx)
    assert kube.objects[JOB]["spec"]["suspend"] is True
    assert out.phase == "Pending" and ready(kube)["reason"] == "Queued"
    assert "Kueue" in ready(kube)["message"] and "team-a" in ready(kube)["message"]


@pytest.mark.parametrize(
    ("code", "reason", "retry"), [(422, "JobRejected", False), (403, "CreateForbidden", True)]
)
def test_a_refused_create_is_a_status_with_the_servers_message(code, reason, retry):
    kube, ctx = world()
    kube.refuse = Rejected(code, 'Job.batch "d-gen" is invalid: spec.template.spec.tolerations[0]: bad')
    out = run(ctx)
    assert out.phase == "Failed" and out.retry is retry and out.event.type == "Warning"
    assert ready(kube)["reason"] == reason and "tolerations[0]: bad" in ready(kube)["message"]
    assert get_condition(status(kube)["conditions"], "Stalled")["status"] == "True"
    again = run(ctx)  # the next attempt (retried with backoff, or not at all): no new Event
    assert again.event is None
    assert sum(1 for m, p in kube.calls if m == "POST" and p.endswith("/jobs")) == (2 if retry else 1)


# -- decide, case by case -------------------------------------------------------------------------------------


def observed(body=None, job=None, pods=(), events=(), deps=None, status=None) -> Observed:
    body = copy.deepcopy(body or resource())
    if status is not None:
        body["status"] = status
    parsed = parse_resource({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    verdict = evaluate(
        ("SyntheticDataset", "d"), parsed.dependencies(), lambda k, n: (deps or {}).get((k, n))
    )
    return Observed(
        key=KEY,
        body=body,
        now=T0,
        resource=parsed,
        verdict=verdict,
        job=job,
        pods=list(pods),
        events=list(events),
    )


def made_job(body=None, config=None, deps=None, uid="j-1"):
    """The Job the operator would have created for `body`, as stored."""
    body = body or resource()
    parsed = parse_resource({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    job = render(parsed, deps or {}, config or OperatorConfig())[0]
    job["metadata"].update(
        uid=uid, ownerReferences=[{"uid": "u-1", "controller": True, "kind": "SyntheticDataset"}]
    )
    job["metadata"]["annotations"]["freeatm.io/suspend"] = "false"
    return job


def phase_of(plan, current=None):
    st = desired_status(current or {}, plan.view)
    return (
        st["phase"],
        get_condition(st["conditions"], "Ready")["reason"],
        get_condition(st["conditions"], "Ready")["message"],
    )


def test_a_helm_upgrade_of_the_runtime_image_keeps_the_running_job():
    job = made_job(config=OperatorConfig(runtime_image="old:1"))
    body = resource(gen=2, suspend=True)  # a pause, decided under a new image
    plan = decide(observed(body, job), OperatorConfig(runtime_image="new:2"))
    assert not any(isinstance(a, (DeleteJob, CreateWorkload)) for a in plan.actions)
    assert [
        a.patch["spec"]["suspend"] for a in plan.actions if isinstance(a, PatchJob) and "spec" in a.patch
    ] == [True]


def test_a_dependency_deleted_after_it_succeeded_keeps_the_running_job():
    outputs = {("SyntheticDataset", "d0"): {"uri": "s3://b/d0"}}
    body = resource(dependsOn=[{"kind": "SyntheticDataset", "name": "d0"}])
    job = made_job(body, deps=outputs)
    body["metadata"]["generation"] = 2
    body["spec"]["suspend"] = True
    plan = decide(observed(body, job, deps={}), OperatorConfig())  # d0 is gone
    assert not any(isinstance(a, (DeleteJob, CreateWorkload)) for a in plan.actions)


def test_a_real_spec_change_deletes_in_the_foreground_and_waits():
    job = made_job()
    body = resource(gen=2, workers=2, generation={"images": 8, "shardSize": 4})
    plan = decide(observed(body, job), OperatorConfig())
    assert plan.actions == [DeleteJob("d-gen", "j-1")] and plan.new_run
    deleting = {**job, "metadata": {**job["metadata"], "deletionTimestamp": T0}}
    plan = decide(observed(body, deleting, pods=[pod(0, {})]), OperatorConfig())
    assert plan.actions == [] and phase_of(plan)[:2] == ("Pending", "ReplacingJob")
    assert [p["metadata"]["name"] for p in plan.release] == ["d-gen-0"]  # the old pods may go


def test_a_job_being_deleted_by_ttl_gives_its_result_first():
    job = made_job()
    job["metadata"]["deletionTimestamp"] = T0
    job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    plan = decide(
        observed(job=job, pods=[pod(0, {"uri": "s3://b/d", "manifestDigest": "sha256:9"})]), OperatorConfig()
    )
    assert plan.view.pod_results == [{"uri": "s3://b/d", "manifestDigest": "sha256:9"}]
    assert phase_of(plan)[:2] == ("Succeeded", "Succeeded") and len(plan.release) == 1


def test_results_come_from_this_jobs_pods_only():
    job = made_job()
    job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    mine, old = pod(0, {"manifestDigest": "new"}), pod(1, {"manifestDigest": "old"})
    mine["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = "j-1"
    old["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = "j-0"
    plan = decide(observed(job=job, pods=[mine, old]), OperatorConfig())
    assert plan.view.pod_results == [{"manifestDigest": "new"}]


def test_a_job_of_an_earlier_resource_with_the_same_name_is_not_adopted():
    job = made_job()
    job["metadata"]["ownerReferences"][0]["uid"] = "u-0"  # the resource was deleted and created again
    plan = decide(observed(job=job), OperatorConfig())
    assert plan.actions == [DeleteJob("d-gen", "j-1")] and phase_of(plan)[1] == "ReplacingJob"
    foreign = {**job, "metadata": {"name": "d-gen", "labels": {}}}
    plan = decide(observed(job=foreign), OperatorConfig())
    assert plan.actions == [] and phase_of(plan)[:2] == ("Waiting", "JobNameConflict")


@pytest.mark.parametrize(
    ("pods", "events", "reason", "text"),
    [
        (
            [{"metadata": {"name": "p"}, "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]}}],
            [], "Unschedulable", "Insufficient nvidia.com/gpu",
        ),
        (
            [{"metadata": {"name": "p"}, "status": {"phase": "Pending", "containerStatuses": [
                {"name": "runtime", "image": "nope:1", "state": {"waiting": {
                    "reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope:1"'}}}]}}],
            [], "ImagePullBackOff", "nope:1",
        ),
        (
            [],
            [{"reason": "FailedCreate", "involvedObject": {"kind": "Job", "name": "d-gen"},
              "lastTimestamp": T0, "message": 'pods "d-gen-0-" is forbidden: error looking up service account'}],
            "FailedCreate", "service account",
        ),
    ],
)  # fmt: skip
def test_why_it_is_pending(pods, events, reason, text):
    plan = decide(observed(job=made_job(), pods=pods, events=events), OperatorConfig())
    phase, why, message = phase_of(plan)
    assert (phase, why) == ("Pending", reason) and text in message
    assert plan.requeue_after  # nobody reports a change of these: look again


def test_a_pod_that_succeeded_before_its_job_completed_keeps_it_running():
    job = made_job()
    job["status"] = {"active": 0, "ready": 0, "uncountedTerminatedPods": {"succeeded": ["p-1"]}}
    done = {"metadata": {"name": "p"}, "status": {"phase": "Succeeded"}}
    plan = decide(observed(job=job, pods=[done]), OperatorConfig())
    assert phase_of(plan)[0] == "Running" and plan.requeue_after is None


def test_restarts_count_the_failures_the_job_controller_has_not_counted_yet():
    job = made_job()
    job["status"] = {
        "failed": 2,
        "uncountedTerminatedPods": {"failed": ["p-3", "p-4"]},
        "conditions": [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}],
    }
    plan = decide(observed(job=job), OperatorConfig())
    assert desired_status({}, plan.view)["restarts"] == 4


def test_a_pass_reads_the_job_the_watch_delivered_and_asks_the_server_otherwise():
    kube, ctx = world()
    run(ctx, watched=False)  # creates the Job: remembered from the create's answer
    kube.objects[JOB]["status"] = {"active": 1, "ready": 1}
    kube.calls.clear()
    assert run(ctx, watched=False).phase == "Pending" and ("GET", JOB) not in kube.calls  # not told yet
    assert run(ctx).phase == "Running" and ("GET", JOB) not in kube.calls  # the watch told
    ctx.forget_job(NS, "d-gen")  # a resync
    kube.calls.clear()
    assert run(ctx, watched=False).phase == "Running" and ("GET", JOB) in kube.calls


def test_a_first_pass_takes_the_resource_from_its_watch_event():
    kube, ctx = world()
    ctx.memory(KEY).first = copy.deepcopy(kube.objects[RES])
    assert run(ctx).created == ["d-gen"] and ("GET", RES) not in kube.calls
    assert ctx.memory(KEY).first is None
    run(ctx)
    assert ("GET", RES) in kube.calls  # later passes read it: it holds the operator's own writes


class ChangingIndex(dict):
    """A kopf index that another thread changes while the first copy of it is taken."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.copies = 0

    def items(self):  # type: ignore[override]
        self.copies += 1
        if self.copies == 1:
            raise RuntimeError("dictionary changed size during iteration")
        return super().items()


class Queue:
    """What a work queue was asked to do."""

    def __init__(self) -> None:
        self.added: list[ResourceKey] = []

    def add(self, key: ResourceKey, urgent: bool = False) -> None:
        self.added.append(key)


def test_waking_dependents_survives_a_concurrent_index_change() -> None:
    from freeatm.operator.handlers import wake_dependents

    kube, ctx = world()
    ctx.queue = Queue()  # type: ignore[assignment]
    dependent = {"phase": "Waiting", "reason": None, "outputs": {}, "deps": [["SyntheticDataset", "d"]]}
    index = ChangingIndex({(NS, "SyntheticDataset", "d"): [dependent]})
    wake_dependents(ctx, index, NS, "SyntheticDataset", "d", "Succeeded")
    assert index.copies == 2
    assert ctx.queue.added == [KEY]


def test_resync_wakes_a_resource_whose_first_pass_never_finished() -> None:
    from freeatm.operator.handlers import resync

    kube, ctx = world()
    ctx.queue = Queue()  # type: ignore[assignment]
    with ctx.lock:
        mem = ctx.memory(KEY)
        mem.known, mem.seen_at = True, 0.0  # seen, but its reconcile failed before writing anything
        ctx.jobs[(NS, "d-gen")] = {"metadata": {"name": "d-gen"}}
    assert resync(ctx, now=ctx.config.resync_seconds + 1) == [KEY]
    assert ctx.queue.added == [KEY]
    assert (NS, "d-gen") not in ctx.jobs  # the pass reads the Job afresh
