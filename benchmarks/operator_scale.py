"""Operator scale benchmark: N resources applied at once; how fast do their Jobs appear, and finish?

    python benchmarks/operator_scale.py                       # kmock, N=200
    python benchmarks/operator_scale.py --tier real --n 1000  # the real control plane (tests/control_plane.py)

kmock: the in-memory API emulator, no controllers. real: etcd, kube-apiserver, the controller-manager's Job
controller and the scheduler, built by .ci/build-control-plane.sh, with the test-harness node
(tests/pod_executor.py) ending every pod at once with exit 0, so the real Job controller completes each Job and
the operator records it: "all Succeeded" is measured there only.

The operator runs in a child process (its peak RSS is read from /proc) and watches one namespace. The resources
(a mix of the three kinds, without dependencies, so each gets its Job at once) are created one after the other
as fast as the client can; a watch on Jobs records when each appears. Create-to-Job latency = when the Job was
seen − when the resource's create request returned. The last line is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from kmock_cluster import Cluster, ControlPlaneCluster, KmockCluster  # noqa: E402
from pod_executor import watch_events  # noqa: E402

from freeatm.api import KINDS  # noqa: E402
from freeatm.operator.kube import resource_path  # noqa: E402
from freeatm.operator.workload import job_name  # noqa: E402

OPERATOR = """
import asyncio, logging, sys
from freeatm.operator.config import OperatorConfig
from freeatm.operator.kube import load_configuration
from freeatm.operator.main import operator
logging.basicConfig(level=logging.WARNING)
host, kubeconfig, namespace = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = load_configuration(kubeconfig or None, host=host or None)
config = OperatorConfig(runtime_image="freeatm-runtime:bench", namespaces=(namespace,), metrics_port=0, liveness_port=0)
asyncio.run(operator(config, configuration=cfg, serve_metrics=False, liveness=False))
"""


def manifest(i: int) -> dict:
    name = f"r{i:05d}"
    out = {"uri": f"file:///var/freeatm/{name}"}
    if i % 3 == 0:
        return {
            "kind": "SyntheticDataset",
            "metadata": {"name": name},
            "spec": {
                "model": {"uri": "toy://shapes"},
                "prompts": {"preset": "shapes"},
                "generation": {"images": 256, "resolution": 32, "shardSize": 64},
                "attention": {"resolutions": [16]},
                "workers": 2,
                "output": out,
            },
        }
    if i % 3 == 1:
        return {
            "kind": "MaskPretrainJob",
            "metadata": {"name": name},
            "spec": {
                "dataset": {"uri": "file:///var/freeatm/data"},
                "training": {"epochs": 1, "batchSize": 64},
                "output": out,
            },
        }
    return {
        "kind": "EvalJob",
        "metadata": {"name": name},
        "spec": {
            "checkpoints": [{"uri": "random://resnet18"}],
            "benchmarks": [{"name": "knn", "dataset": {"format": "shapes", "uri": "toy://shapesbench/val"}}],
            "output": out,
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def watch_jobs(cluster: Cluster, seen: dict[str, float], stop: threading.Event) -> None:
    """Record time.monotonic() when each Job of the namespace first appears: one watch, resumed from the last
    resourceVersion it saw (a fresh watch would send every Job again), its events read as plain JSON."""
    path = resource_path("Job", cluster.namespace)
    version = None
    while not stop.is_set():
        try:
            if version is None:
                listing = cluster.api.get(path) or {}
                version = listing["metadata"]["resourceVersion"]
                for job in listing["items"]:
                    seen.setdefault(job["metadata"]["name"], time.monotonic())
            query = {"resourceVersion": version, "allowWatchBookmarks": "true"}
            for event in watch_events(cluster.api.client, path, query, seconds=5):
                if event["type"] == "ERROR":
                    version = None  # expired: list again
                    break
                meta = event["object"]["metadata"]
                version = meta.get("resourceVersion", version)
                if event["type"] == "ADDED":
                    seen.setdefault(meta["name"], time.monotonic())
        except Exception:
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="resources to create (default 200)")
    parser.add_argument("--tier", choices=("kmock", "real"), default="kmock")
    parser.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    args = parser.parse_args()

    plane = executor = None
    if args.tier == "real":
        from control_plane import ControlPlane, kube_bin
        from pod_executor import PodExecutor

        binaries = kube_bin()
        if binaries is None:
            raise SystemExit("no control-plane binaries: run `bash .ci/build-control-plane.sh`")
        work = Path(tempfile.mkdtemp(prefix="freeatm-scale-"))
        plane = ControlPlane(work / "plane", binaries).start()
        plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        executor = PodExecutor(
            plane.admin_kubeconfig, plane.server, plane.ca_file, pods=10 * args.n, workdir=work / "node"
        ).start()
        cluster: Cluster = ControlPlaneCluster(plane, executor)
        executor.script(cluster.namespace, lambda c: (0, json.dumps({"uri": f"file:///var/freeatm/{c.job}"})))
        operator_args = ["", str(plane.admin_kubeconfig), cluster.namespace]
    else:
        cluster = KmockCluster(namespace="bench")
        operator_args = [cluster.configuration.host, "", cluster.namespace]

    seen: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_jobs, args=(cluster, seen, stop), daemon=True)
    watcher.start()
    child = subprocess.Popen(
        [sys.executable, "-c", OPERATOR, *operator_args], env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    result: dict[str, object] = {"tier": args.tier, "n": args.n}
    try:
        time.sleep(5.0)  # kopf lists and opens its watches
        if child.poll() is not None:
            raise SystemExit("the operator did not start")
        docs = [manifest(i) for i in range(args.n)]
        created: dict[str, float] = {}
        started = time.monotonic()
        for doc in docs:
            cluster.create(doc)
            created[job_name(doc["kind"], doc["metadata"]["name"])] = time.monotonic()
        result["create_seconds"] = round(time.monotonic() - started, 3)
        while set(created) - set(seen):
            if time.monotonic() - started > args.timeout:
                raise SystemExit(f"timed out: {len(set(created) - set(seen))} of {args.n} Jobs missing")
            time.sleep(0.05)
        latencies = [seen[j] - t for j, t in created.items()]
        result["all_jobs_seconds"] = round(max(seen[j] for j in created) - started, 3)
        result["latency_p50_seconds"] = round(statistics.median(latencies), 3)
        result["latency_p95_seconds"] = round(percentile(latencies, 0.95), 3)
        result["latency_max_seconds"] = round(max(latencies), 3)
        if args.tier == "real":
            plurals = ",".join(info.plural for info in KINDS.values())
            while True:
                listing = plane.kubectl("get", plurals, "-n", cluster.namespace, "-o", "json").stdout
                phases = [(i.get("status") or {}).get("phase") for i in json.loads(listing)["items"]]
                if phases.count("Succeeded") == args.n:
                    break
                if time.monotonic() - started > args.timeout:
                    raise SystemExit(f"timed out: {phases.count('Succeeded')} of {args.n} Succeeded")
                time.sleep(1)
            result["all_succeeded_seconds"] = round(time.monotonic() - started, 3)
        result["operator_peak_rss_mib"] = peak_rss_mib(child.pid)
    finally:
        stop.set()
        watcher.join(30)  # its watch ends within its timeout; kmock closes only once no request is open
        child.send_signal(signal.SIGINT)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        cluster.close()
        if executor is not None:
            executor.stop()
        if plane is not None:
            plane.stop()
    print(
        f"{args.n} resources created in {result['create_seconds']}s; every Job existed after "
        f"{result['all_jobs_seconds']}s"
        + (
            f"; all Succeeded after {result['all_succeeded_seconds']}s"
            if "all_succeeded_seconds" in result
            else ""
        )
    )
    print(
        f"create-to-Job latency p50 {result['latency_p50_seconds']}s, p95 {result['latency_p95_seconds']}s; "
        f"operator peak RSS {result['operator_peak_rss_mib']} MiB"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
