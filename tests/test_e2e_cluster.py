"""End to end on the real control plane: the chart installed with the real helm binary, the operator running
from it under the chart's ServiceAccount (RBAC enforced by the API server), a small quickstart applied with
kubectl, every stage run by the real runtime on the test-harness node (tests/pod_executor.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.control_plane import ControlPlane
from tests.pod_executor import PodExecutor

ROOT = Path(__file__).resolve().parents[1]
NS = "freeatm-e2e"
pytestmark = pytest.mark.slow


def small_quickstart(model_dir: Path, out: Path) -> str:
    """examples/quickstart.yaml with a random toy model, few images and steps, outputs under `out`."""
    docs = list(yaml.safe_load_all((ROOT / "examples" / "quickstart.yaml").read_text()))
    for doc in docs:
        spec = doc["spec"]
        spec["output"]["uri"] = (out / doc["metadata"]["name"]).as_uri()
        if doc["kind"] == "SyntheticDataset":
            spec["model"]["uri"] = model_dir.as_uri()
            spec["generation"].update(images=32, steps=4, batchSize=16, shardSize=8)
        elif doc["kind"] == "MaskPretrainJob":
            spec["training"].update(epochs=1, batchSize=16, checkpointEvery=1)
        else:
            for bench in spec["benchmarks"]:
                bench.update(maxImages=32, epochs=2)
    return yaml.safe_dump_all(docs)


def helm(plane: ControlPlane, *args: str) -> str:
    done = subprocess.run(
        [str(plane.bin / "helm"), f"--kubeconfig={plane.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def resources(plane: ControlPlane) -> dict[str, dict]:
    listing = plane.kubectl("get", "freeatm", "-n", NS, "-o", "json").stdout
    return {f"{i['kind']}/{i['metadata']['name']}": i for i in json.loads(listing)["items"]}


def wait(what: str, predicate, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from freeatm.runtime.toy import build_random_pipeline

    path = tmp_path_factory.mktemp("model")
    build_random_pipeline(seed=0).save_pretrained(path)
    return path


@pytest.mark.timeout(1200)
def test_helm_install_then_kubectl_apply_runs_the_quickstart(
    control_plane: ControlPlane, node: PodExecutor, model_dir: Path, tmp_path: Path
) -> None:
    plane = control_plane
    plane.kubectl("create", "namespace", NS)
    # The CRDs are already applied for the whole session (tests/conftest.py): the chart leaves them alone.
    helm(
        plane,
        "install",
        "freeatm",
        str(ROOT / "helm" / "freeatm"),
        "--namespace",
        NS,
        "--set",
        "crds.install=false",
        "--set",
        f"watchNamespaces={{{NS}}}",
        "--set",
        "operator.resyncSeconds=20",
        "--wait",
        "--timeout=180s",
    )
    operator_sa = f"system:serviceaccount:{NS}:freeatm"
    runtime_sa = f"system:serviceaccount:{NS}:freeatm-runtime"

    def can(who: str, *what: str) -> str:
        done = plane.kubectl("auth", "can-i", *what, "-n", NS, f"--as={who}", check=False)
        return done.stdout.strip()

    for plural in ("syntheticdatasets", "maskpretrainjobs", "evaljobs"):
        assert can(runtime_sa, "patch", f"{plural}.freeatm.io", "--subresource=status") == "yes"
        assert can(runtime_sa, "get", f"{plural}.freeatm.io", "--subresource=status") == "yes"
        assert can(runtime_sa, "patch", f"{plural}.freeatm.io") == "no"
        assert can(runtime_sa, "delete", f"{plural}.freeatm.io") == "no"
    for verb, what in (("create", "jobs.batch"), ("get", "secrets"), ("list", "pods"), ("create", "pods")):
        assert can(runtime_sa, verb, what) == "no", (verb, what)
    assert can(operator_sa, "create", "jobs.batch") == "yes"
    assert can(operator_sa, "get", "secrets") == "no"

    pipeline = tmp_path / "quickstart.yaml"
    pipeline.write_text(small_quickstart(model_dir, tmp_path / "out"))
    plane.kubectl("apply", "-n", NS, "-f", str(pipeline))

    def all_done() -> dict[str, dict] | None:
        found = resources(plane)
        phases = {k: (v.get("status") or {}).get("phase") for k, v in found.items()}
        failed = [k for k, p in phases.items() if p == "Failed"]
        assert not failed, {k: found[k]["status"] for k in failed}
        return found if len(found) == 4 and set(phases.values()) == {"Succeeded"} else None

    try:
        done = wait("all four resources Succeeded", all_done, 900)
    except AssertionError:
        pods = plane.kubectl("get", "pods", "-n", NS, "-o", "wide", check=False).stdout
        logs = plane.kubectl("logs", "-n", NS, "deploy/freeatm", "--tail=80", check=False)
        raise AssertionError(f"{pods}\n{logs.stdout}{logs.stderr}") from None

    dataset = done["SyntheticDataset/shapes"]["status"]
    assert dataset["outputs"]["manifestDigest"].startswith("sha256:")
    # Generation worker 0 alone reports progress (its own share of the images), the runtime's RBAC allowing it:
    # the API server's audit log names the pod behind each of the runtime's status writes.
    assert (
        dataset["progress"]["percent"] == 100 and dataset["progress"]["done"] == dataset["progress"]["total"]
    )
    writes = [
        e
        for e in plane.status_writes(NS, "syntheticdatasets", "shapes")
        if e["user"]["username"] == runtime_sa
    ]
    pods = {e["user"]["extra"]["authentication.kubernetes.io/pod-name"][0] for e in writes}
    assert len(writes) >= 2 and all(e["responseStatus"]["code"] == 200 for e in writes), writes
    assert len(pods) == 1 and next(iter(pods)).startswith("shapes-gen-0-"), pods
    results = done["EvalJob/shapes-eval"]["status"]["outputs"]["results"]
    assert {"baseline", "free-atm"} <= {r["checkpoint"] for r in results}

    # `kubectl get freeatm` prints one table per kind, each with the phase and the progress.
    tables = [t.splitlines() for t in plane.kubectl("get", "freeatm", "-n", NS).stdout.strip().split("\n\n")]
    assert len(tables) == 3 and sum(len(t) - 1 for t in tables) == 4, tables
    for header, *rows in tables:
        columns = header.split()
        for row in rows:
            cells = dict(zip(columns, row.split(), strict=False))
            assert cells["PHASE"] == "Succeeded" and cells["PROGRESS"] == "100", tables

    # Foreground deletion: the garbage collector deletes the owned Job before the resource itself goes.
    job = "shapes-baseline-train"
    assert plane.kubectl("get", "job", job, "-n", NS, check=False).returncode == 0
    plane.kubectl(
        "delete", "maskpretrainjob", "shapes-baseline", "-n", NS, "--cascade=foreground", "--timeout=120s"
    )
    assert plane.kubectl("get", "job", job, "-n", NS, check=False).returncode != 0
    helm(plane, "uninstall", "freeatm", "--namespace", NS, "--wait")
