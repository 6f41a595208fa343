"""operator/reconcile.py with an in-memory API: one pass at a time, idempotent, restart-safe."""

from __future__ import annotations

import copy

from freeatm.operator.config import OperatorConfig
from freeatm.operator.kube import Conflict
from freeatm.operator.reconcile import Context, reconcile


class FakeKube:
    """Objects by API path; merge patches; no controllers."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []

    def get(self, path):
        self.calls.append(("GET", path))
        return copy.deepcopy(self.objects.get(path))

    def list(self, path, labels=None):
        return [
            o
            for p, o in self.objects.items()
            if p.rsplit("/", 1)[0] == path
            and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in (labels or {}).items())
        ]

    def create(self, path, body):
        self.calls.append(("POST", path))
        key = f"{path}/{body['metadata']['name']}"
        if key in self.objects:
            raise Conflict(key)
        self.objects[key] = copy.deepcopy(body)
        return copy.deepcopy(body)

    def patch(self, path, body):
        self.calls.append(("PATCH", path))
        if path not in self.objects:
            return None
        self.objects[path] = merge(self.objects[path], body)
        return copy.deepcopy(self.objects[path])

    def delete(self, path):
        self.calls.append(("DELETE", path))
        return self.objects.pop(path, None) is not None


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


JOB = "/apis/batch/v1/namespaces/ns/jobs/d-gen"


def body(gen=1, status=None, **spec):
    return {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": "SyntheticDataset",
        "metadata": {"name": "d", "namespace": "ns", "uid": "u-1", "generation": gen},
        "spec": {
            "model": {"uri": "toy://shapes"},
            "prompts": {"preset": "shapes"},
            "output": {"uri": "s3://b/d"},
            **spec,
        },
        "status": status or {},
    }


def applied(b, outcome):
    return {**b, "status": merge(b["status"], outcome.patch)}


def test_a_second_pass_changes_nothing():
    kube = FakeKube()
    ctx = Context(kube=kube, config=OperatorConfig())
    first = reconcile(body(), lambda k, n: None, ctx)
    assert first.created == ["d-gen"] and first.phase == "Pending" and first.event.reason == "JobCreated"
    job = kube.objects[JOB]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    kube.calls.clear()
    second = reconcile(applied(body(), first), lambda k, n: None, ctx)
    assert second.patch == {} and second.event is None and second.created == []
    assert [c[0] for c in kube.calls] == ["GET"]  # only the Job is read


def test_suspend_is_a_patch_and_other_changes_replace_the_job():
    kube = FakeKube()
    ctx = Context(kube=kube, config=OperatorConfig())
    b = applied(body(), reconcile(body(), lambda k, n: None, ctx))
    b2 = {**body(gen=2, suspend=True), "status": b["status"]}
    out = reconcile(b2, lambda k, n: None, ctx)
    job = kube.objects[JOB]
    assert job["spec"]["suspend"] is True and job["metadata"]["annotations"]["freeatm.io/generation"] == "2"
    assert out.phase == "Suspended" and out.deleted == []
    b3 = {
        **body(gen=3, suspend=True, workers=2, generation={"images": 8, "shardSize": 4}),
        "status": applied(b2, out)["status"],
    }
    out = reconcile(b3, lambda k, n: None, ctx)
    assert out.deleted == ["d-gen"] and out.created == ["d-gen"]
    assert kube.objects[JOB]["metadata"]["annotations"]["freeatm.io/generation"] == "3"


def test_kueue_suspending_the_job_is_not_undone():
    kube = FakeKube()
    ctx = Context(kube=kube, config=OperatorConfig())
    b = applied(body(), reconcile(body(), lambda k, n: None, ctx))
    kube.objects[JOB]["spec"]["suspend"] = True  # Kueue holds it until admission
    out = reconcile(b, lambda k, n: None, ctx)
    assert kube.objects[JOB]["spec"]["suspend"] is True
    assert out.phase == "Pending" and out.patch["conditions"][0]["reason"] == "Queued"


def test_a_finished_resource_is_not_rerun_when_its_job_is_gone():
    kube = FakeKube()
    ctx = Context(kube=kube, config=OperatorConfig())
    b = applied(body(), reconcile(body(), lambda k, n: None, ctx))
    kube.objects[JOB]["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    b = applied(b, reconcile(b, lambda k, n: None, ctx))
    assert b["status"]["phase"] == "Succeeded" and b["status"]["outputs"] == {"uri": "s3://b/d"}
    del kube.objects[JOB]  # ttlSecondsAfterFinished
    out = reconcile(b, lambda k, n: None, ctx)
    assert out.created == [] and out.phase == "Succeeded" and out.patch == {}
