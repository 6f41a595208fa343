"""The clusters of the operator's scenario tests: kmock in-process (fast), and the real control plane.

The scenarios talk to both through the same HTTP API (the `kubernetes` client). On kmock, which has no
controllers, the harness plays the Job controller by writing Job and pod status; on the real control plane
(tests/control_plane.py) the real Job controller runs, and the harness only decides how each pod ends
(tests/pod_executor.py plays the node).

kmock quirks handled here (docs/architecture.md#measured-facts): its bundled resource list is loaded and the
CRDs are declared in its discovery; objects are created through HTTP (direct writes send no watch event);
metadata.resourceVersion, uid and generation are seeded by the harness (kmock assigns none) and generation is
bumped on spec changes; there is no garbage collector (the operator deletes Jobs explicitly) and no separate
/status.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import kubernetes.client

from freeatm.api import API_VERSION, KINDS
from freeatm.operator.config import OperatorConfig
from freeatm.operator.kube import Kube, load_configuration, resource_path
from freeatm.operator.main import operator

_rv = itertools.count(1000)


class _LoopThread:
    """An asyncio loop in a daemon thread; `run(coro)` waits for a coroutine on it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Cluster:
    """The API a scenario uses: create/get/patch/delete objects, play the Job controller, run the operator."""

    emulated = True

    def __init__(self, configuration: kubernetes.client.Configuration, namespace: str) -> None:
        self.configuration = configuration
        self.namespace = namespace
        self.api = Kube(configuration)
        self._operator: tuple[threading.Thread, threading.Event] | None = None
        self.config = OperatorConfig(
            runtime_image="freeatm-runtime:test", namespaces=(namespace,), metrics_port=0, liveness_port=0
        )

    # -- objects ---------------------------------------------------------------------------------------------
    def path(self, kind: str, name: str | None = None) -> str:
        return resource_path(kind, self.namespace, name)

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc = {**doc, "metadata": {**doc["metadata"], "namespace": self.namespace}}
        doc.setdefault("apiVersion", API_VERSION if doc["kind"] in KINDS else "v1")
        if self.emulated:  # what the API server would assign
            doc["metadata"].setdefault("uid", str(uuid.uuid4()))
            doc["metadata"].setdefault(
                "creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            )
            if doc["kind"] in KINDS:
                doc["metadata"].setdefault("generation", 1)
        return self.api.create(self.path(doc["kind"]), doc)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.api.get(self.path(kind, name))

    def status(self, kind: str, name: str) -> dict[str, Any]:
        return (self.get(kind, name) or {}).get("status") or {}

    def patch_spec(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        """Change the spec (the API server bumps metadata.generation; kmock does not, so the harness does)."""
        self.api.patch(self.path(kind, name), {"spec": spec})

    def delete(self, kind: str, name: str) -> None:
        self.api.delete(self.path(kind, name))

    def jobs(self) -> list[dict[str, Any]]:
        return self.api.list(self.path("Job"), {"app.kubernetes.io/managed-by": "freeatm-operator"})

    def job(self, name: str) -> dict[str, Any] | None:
        return self.get("Job", name)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.api.list(self.path("Event"))
            if (e.get("involvedObject") or {}).get("name") == name
        ]

    # -- the Job controller, played by the test --------------------------------------------------------------
    def _status_path(self, kind: str, name: str) -> str:
        return self.path(kind, name) + ("" if self.emulated else "/status")

    def job_running(self, name: str, active: int = 1, failed: int = 0) -> None:
        self.api.patch(
            self._status_path("Job", name),
            {"status": {"active": active, "failed": failed, "startTime": _now(), "ready": active}},
        )

    def job_succeeded(self, name: str, results: list[dict[str, Any]] | None = None) -> None:
        """Pods finished with exit code 0 and these termination messages; the Job is Complete."""
        for index, result in enumerate(results or []):
            self.add_pod(name, index, exit_code=0, message=result)
        completions = max(len(results or []), 1)
        self.api.patch(
            self._status_path("Job", name),
            {
                "status": {
                    "active": 0,
                    "ready": 0,
                    "succeeded": completions,
                    "completionTime": _now(),
                    "conditions": [
                        {"type": "SuccessCriteriaMet", "status": "True"},
                        {"type": "Complete", "status": "True"},
                    ],
                }
            },
        )

    def job_failed(
        self, name: str, reason: str, failed: int, message: str = "", error: str | None = None
    ) -> None:
        if error is not None:
            self.add_pod(name, 0, exit_code=65, message={"error": error, "exitCode": 65})
        self.api.patch(
            self._status_path("Job", name),
            {
                "status": {
                    "active": 0,
                    "ready": 0,
                    "failed": failed,
                    "conditions": [
                        {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
                        {"type": "Failed", "status": "True", "reason": reason, "message": message},
                    ],
                }
            },
        )

    def add_pod(
        self,
        job: str,
        index: int,
        exit_code: int,
        message: dict[str, Any] | None = None,
        conditions: list[dict[str, Any]] | None = None,
    ) -> None:
        name = f"{job}-{index}-{uuid.uuid4().hex[:5]}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {"batch.kubernetes.io/job-name": job, "job-name": job},
                "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
            },
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {"freeatm.io/e2e": "unschedulable"},
                "containers": [{"name": "runtime", "image": "freeatm-runtime:test"}],
            },
        }
        pod = self.create(pod)
        self.api.patch(
            self._status_path("Pod", name),
            {
                "status": {
                    "phase": "Succeeded" if exit_code == 0 else "Failed",
                    "conditions": conditions or [],
                    "containerStatuses": [
                        {
                            "name": "runtime",
                            "ready": False,
                            "restartCount": 0,
                            "image": "freeatm-runtime:test",
                            "imageID": "",
                            "state": {
                                "terminated": {
                                    "exitCode": exit_code,
                                    "reason": "Completed" if exit_code == 0 else "Error",
                                    "message": json.dumps(message or {}),
                                    "finishedAt": _now(),
                                }
                            },
                        }
                    ],
                }
            },
        )

    # -- the operator ------------------------------------------------------------------------------------------
    def start_operator(self, timeout: float = 20, serve: bool = False) -> None:
        assert self._operator is None, "operator already running"
        stop, ready = threading.Event(), threading.Event()

        def main() -> None:
            asyncio.run(
                operator(
                    self.config,
                    configuration=self.configuration,
                    stop_flag=stop,
                    ready_flag=ready,
                    serve_metrics=serve,
                    liveness=serve,
                )
            )

        thread = threading.Thread(target=main, name="freeatm-operator", daemon=True)
        thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("the operator did not start")
        self._operator = (thread, stop)

    def stop_operator(self) -> None:
        if self._operator is None:
            return
        thread, stop = self._operator
        stop.set()
        thread.join(30)
        self._operator = None

    def close(self) -> None:
        self.stop_operator()
        self.api.close()


def _emulator_class() -> type:
    import kmock

    class Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
        """kmock plus what the API server does on every write: a new resourceVersion; generation on spec changes."""

        async def _handle(self, request: Any) -> Any:
            # kmock logs every request and matches each new one against the whole log (quadratic): keep it
            # short, and keep our own light log of writes instead.
            del self._requests[:-16]
            if request.resource is not None and request.action in (kmock.action.CREATE, kmock.action.DELETE):
                self.writes.append(
                    (str(getattr(request.method, "value", request.method)).upper(), request.resource.plural)
                )
            writes = (kmock.action.CREATE, kmock.action.UPDATE)
            if request.resource is not None and isinstance(request.data, dict) and request.action in writes:
                meta = request.data.setdefault("metadata", {})
                meta["resourceVersion"] = str(next(_rv))
                key = (request.resource, request.namespace, request.name)
                if request.action == kmock.action.UPDATE and "spec" in request.data and key in self.objects:
                    stored = self.objects[key]
                    if not stored.deleted:
                        meta["generation"] = int((stored.get("metadata") or {}).get("generation") or 1) + 1
            if (
                request.resource is not None
                and request.action == kmock.action.CREATE
                and isinstance(request.data, dict)
            ):
                self.created_at[(request.resource.plural, request.data.get("metadata", {}).get("name"))] = (
                    time.monotonic()
                )
            return await super()._handle(request)

    return Emulator


class KmockCluster(Cluster):
    """kmock's KubernetesEmulator on a loopback port, in a background thread."""

    def __init__(self, namespace: str = "ns1") -> None:
        import kmock

        self._loop = _LoopThread("kmock")
        self.emulator = _emulator_class()()
        self.emulator.created_at = {}  # (plural, name) → time.monotonic() of its creation request
        self.emulator.writes = []  # (method, plural) of every create and delete
        self.emulator.resources.load_bundled()
        for kind, info in KINDS.items():
            self.emulator.resources[f"{API_VERSION}/{info.plural}"] = kmock.ResourceInfo(
                kind=kind,
                singular=info.singular,
                namespaced=True,
                shortnames={info.short},
                categories={"freeatm"},
                verbs={"list", "watch", "get", "create", "patch", "update", "delete"},
            )
        self._server = kmock.Server(self.emulator)

        async def enter() -> str:
            await self.emulator.__aenter__()
            await self._server.__aenter__()
            return str(self._server.url).rstrip("/")

        url = self._loop.run(enter())
        cfg = kubernetes.client.Configuration()
        cfg.host = url
        cfg.connection_pool_maxsize = 32
        super().__init__(cfg, namespace)

    def requests_for(self, method: str, kind: str) -> int:
        """How many `method` requests reached the collection or objects of `kind` (e.g. POST Job)."""
        plural = {"Job": "jobs", "Service": "services"}.get(kind) or KINDS[kind].plural

        return sum(1 for m, p in self.emulator.writes if m == method and p == plural)

    def close(self) -> None:
        super().close()

        async def leave() -> None:
            await self._server.__aexit__(None, None, None)
            await self.emulator.__aexit__(None, None, None)

        try:
            self._loop.run(leave(), timeout=10)
        finally:
            self._loop.stop()


class ControlPlaneCluster(Cluster):
    """The real control plane of tests/control_plane.py, in a fresh namespace; the pod executor plays the node.

    Pods of this namespace are scripted (tests/pod_executor.py): the `job_*` methods end them with the exit
    codes and termination messages a scenario asks for, and the real Job controller turns that into Job status
    (podFailurePolicy, backoffLimit, Indexed completions), as it would on any cluster.
    """

    emulated = False

    def __init__(self, plane: Any, executor: Any) -> None:
        cfg = load_configuration(str(plane.admin_kubeconfig))
        ns = f"e2e-{uuid.uuid4().hex[:8]}"
        super().__init__(cfg, ns)
        self.plane, self.executor = plane, executor
        executor.script(ns)
        self.api.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        # The runtime's ServiceAccount, which the chart makes in each runtime namespace (the operator's default).
        self.api.create(
            f"/api/v1/namespaces/{ns}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": self.config.service_account}},
        )

    def requests_for(self, method: str, kind: str) -> int:  # not observable on a real API server
        return -1

    def _job_status(self, name: str) -> dict[str, Any]:
        return (self.job(name) or {}).get("status") or {}

    def _failures(self, name: str) -> int:
        return int(self._job_status(name).get("failed") or 0)

    def _finished(self, name: str) -> str | None:
        for cond in self._job_status(name).get("conditions") or []:
            if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
                return cond["type"]
        return None

    def _running(self, name: str, count: int = 1, timeout: float = 90) -> list[Any]:
        return wait_for(
            lambda: (r := self.executor.running(self.namespace, name)) and len(r) >= count and r,
            timeout,
            f"{count} running pod(s) of Job {name}",
        )

    def job_running(self, name: str, active: int = 1, failed: int = 0) -> None:
        """`failed` pods have failed (exit 1) and `active` run: the Job controller counts both."""
        while self._failures(name) < failed:
            before = self._failures(name)
            for c in self._running(name)[: failed - before]:
                self.executor.finish(c, 1, "")
            wait_for(lambda b=before: self._failures(name) > b, 30, f"Job {name} to count a failure")
        self._running(name, active)
        wait_for(lambda: self._job_status(name).get("ready") == active, 30, f"Job {name} ready={active}")

    def job_succeeded(self, name: str, results: list[dict[str, Any]] | None = None) -> None:
        """Every pod exits 0, index i with termination message results[i]; the Job controller completes it."""
        job = wait_for(lambda: self.job(name), what=f"Job {name}")
        results = results or []
        parallel = min(int(job["spec"].get("completions") or 1), int(job["spec"].get("parallelism") or 1))
        for c in self._running(name, parallel):
            index = c.index or 0
            self.executor.finish(c, 0, json.dumps(results[index] if index < len(results) else {}))
        wait_for(lambda: self._finished(name) == "Complete", 60, f"Job {name} Complete")

    def job_failed(
        self, name: str, reason: str, failed: int, message: str = "", error: str | None = None
    ) -> None:
        """Bad input (exit 65: podFailurePolicy), or failures until backoffLimit: the Job controller fails it."""
        if error is not None:
            self.executor.finish(self._running(name)[0], 65, json.dumps({"error": error, "exitCode": 65}))
        else:
            deadline = time.monotonic() + 180
            while self._finished(name) is None and time.monotonic() < deadline:
                for c in self.executor.running(self.namespace, name):
                    self.executor.finish(c, 1, "")
                time.sleep(0.2)
        wait_for(lambda: self._finished(name) == "Failed", 60, f"Job {name} Failed")
        cond = next(c for c in self._job_status(name)["conditions"] if c["type"] == "Failed")
        assert cond.get("reason") == reason, cond

    def add_pod(
        self,
        job: str,
        index: int,
        exit_code: int,
        message: dict[str, Any] | None = None,
        conditions: list[dict[str, Any]] | None = None,
    ) -> None:
        """The only pod a scenario adds on a real cluster is an eviction: the Eviction API evicts the running one."""
        assert any(c.get("type") == "DisruptionTarget" for c in conditions or []), "only evictions are real"
        c = next(c for c in self._running(job, index + 1) if (c.index or 0) == index)
        self.api.create(
            self.path("Pod", c.pod) + "/eviction",
            {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": c.pod, "namespace": self.namespace},
            },
        )
        wait_for(lambda: c.done.is_set(), 30, f"pod {c.pod} evicted")

    def close(self) -> None:
        self.api.delete(f"/api/v1/namespaces/{self.namespace}")
        super().close()


def wait_for(predicate: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
