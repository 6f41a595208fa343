"""Operator scale benchmark: N resources against kmock; how fast do their Jobs appear?

    python benchmarks/operator_scale.py            # N=200
    python benchmarks/operator_scale.py --n 1000

kmock (the in-memory Kubernetes API emulator) runs in this process; the operator runs in a child process (so
that its peak RSS is its own) and talks to kmock over loopback HTTP. The resources (a mix of the three kinds,
without dependencies, so each gets its Job at once) are created one after the other as fast as the client can.
Create-to-Job latency = when the Job's create request reached the API − when the resource's did.
The last line is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kmock_cluster import KmockCluster  # noqa: E402

from freeatm.api import KINDS  # noqa: E402
from freeatm.operator.workload import job_name  # noqa: E402

OPERATOR = """
import asyncio, logging, sys
import kubernetes.client
from freeatm.operator.config import OperatorConfig
from freeatm.operator.main import operator
logging.basicConfig(level=logging.WARNING)
cfg = kubernetes.client.Configuration()
cfg.host = sys.argv[1]
cfg.connection_pool_maxsize = 32
config = OperatorConfig(runtime_image="freeatm-runtime:bench", namespaces=(sys.argv[2],), metrics_port=0, liveness_port=0)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="resources to create (default 200)")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    args = parser.parse_args()

    cluster = KmockCluster(namespace="bench")
    url = cluster.configuration.host
    child = subprocess.Popen(
        [sys.executable, "-c", OPERATOR, url, cluster.namespace], env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        # The operator is ready when it has listed the resources (watch requests reached kmock).
        deadline = time.monotonic() + 60
        while not cluster.emulator._buses:  # watch streams open once kopf has listed the resources
            if time.monotonic() > deadline or child.poll() is not None:
                raise SystemExit("the operator did not start")
            time.sleep(0.1)
        time.sleep(1.0)

        docs = [manifest(i) for i in range(args.n)]
        started = time.monotonic()
        for doc in docs:
            cluster.create(doc)
        created_all = time.monotonic()
        wanted = {(doc["metadata"]["name"], doc["kind"]) for doc in docs}
        created = cluster.emulator.created_at
        while time.monotonic() - started < args.timeout:
            missing = [n for n, k in wanted if ("jobs", job_name(k, n)) not in created]
            if not missing:
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"timed out: {len(missing)} of {args.n} Jobs missing")
        all_jobs = max(created[("jobs", job_name(k, n))] for n, k in wanted)
        latencies = [created[("jobs", job_name(k, n))] - created[(KINDS[k].plural, n)] for n, k in wanted]
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        cluster.close()
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = {
        "n": args.n,
        "create_seconds": round(created_all - started, 3),
        "all_jobs_seconds": round(all_jobs - started, 3),
        "latency_p50_seconds": round(statistics.median(latencies), 3),
        "latency_p95_seconds": round(percentile(latencies, 0.95), 3),
        "latency_max_seconds": round(max(latencies), 3),
        "operator_peak_rss_mib": round(peak_kib / 1024, 1),
    }
    print(
        f"{args.n} resources created in {result['create_seconds']}s; every Job existed after {result['all_jobs_seconds']}s"
    )
    print(
        f"create-to-Job latency p50 {result['latency_p50_seconds']}s, p95 {result['latency_p95_seconds']}s; operator peak RSS {result['operator_peak_rss_mib']} MiB"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
