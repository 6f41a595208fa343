"""A test-harness node: it plays the kubelet and the container runtime, which cannot run on these machines.

`PodExecutor` registers a Node (CPU and memory capacity, no GPU) with the real API server, keeps it Ready with
node-lease heartbeats and, for every pod the real scheduler binds to it, does what a kubelet would do:

- by default: starts the pod's container command as a local process (the image is not pulled: the command
  must exist on this machine, e.g. the venv's `freeatm-runtime`; it runs as this user, securityContext and
  probes are not applied), in network and mount namespaces of its own, with the container's environment resolved as
  the kubelet resolves it (`value`, `fieldRef` incl. the Job controller's completion-index annotation,
  `secretKeyRef`, `configMapKeyRef`, `envFrom`, `$(VAR)` expansion), `KUBERNETES_SERVICE_HOST/PORT`, and in a
  private mount namespace a real bound service-account token of the pod's ServiceAccount (TokenRequest) at
  /var/run/secrets/kubernetes.io/serviceaccount, the termination-message file at the container's
  terminationMessagePath, a memory /dev/shm and a directory per emptyDir and persistentVolumeClaim volume
  (except one mounted over the venv or the executor's own directory, e.g. an emptyDir at /tmp when they live
  under /tmp: the pod then sees the host's directory there);
  the API server is reached at KUBERNETES_SERVICE_HOST:PORT through tests/loopback_relay.py;
- for an image on a registry of the `.invalid` domain: what a kubelet does with an image it cannot pull (the
  pod stays Pending, its container waiting in ImagePullBackOff);
- in a namespace given to `script` (the operator's scenario tests): the container "runs" until the test calls
  `finish`, which ends it with the exit code and termination message the test chose;

and writes the pod status as a kubelet would: phase, Ready conditions, container state running, then
terminated with exit code, reason and message (FallbackToLogsOnError reads the log tail). A pod being deleted
(or evicted) is stopped with SIGTERM, then SIGKILL after its grace period, reported Failed, and finally removed
from the API. The real Job controller does everything above the pod: podFailurePolicy, backoffLimit, Indexed
completions, suspend and TTL.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

sys.path.insert(0, str(Path(__file__).parent))
from control_plane import die_with_parent  # noqa: E402
from loopback_relay import serve  # noqa: E402

log = logging.getLogger("freeatm.test.pod-executor")
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
RELAY = Path(__file__).with_name("loopback_relay.py")
# What a pod's process runs in: a network namespace of its own (its own loopback; the API server through the
# relay), and a mount namespace with a /dev of its own (so that the termination-message file can sit where the
# container says), the token directory, /dev/shm, and the volumes' directories.
_POD = r"""
set -e
P="$1"; PY="$2"; RELAY="$3"; PORT="$4"; shift 4
ip link set lo up
"$PY" "$RELAY" "$P/../../api.sock" "$PORT" "$P/relay.ready" &
while [ ! -e "$P/relay.ready" ]; do sleep 0.02; done
mount --make-rprivate /
mkdir -p "$P/hostdev"
mount --rbind /dev "$P/hostdev"
mount -t tmpfs -o mode=755 tmpfs /dev
for d in null zero full random urandom tty; do touch "/dev/$d"; mount --bind "$P/hostdev/$d" "/dev/$d"; done
mkdir /dev/pts /dev/shm
mount --rbind "$P/hostdev/pts" /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd; ln -s fd/0 /dev/stdin; ln -s fd/1 /dev/stdout; ln -s fd/2 /dev/stderr
while read -r src dst; do
  [ -n "$dst" ] || continue
  if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")"; touch "$dst"; fi
  mount --bind "$src" "$dst"
done < "$P/mounts"
cd /
exec "$@"
"""


Outcome = Callable[["Container"], tuple[int, str]]
"""How a scripted container ends at once: (exit code, termination message)."""


@dataclass
class Container:
    """One pod's container as this node runs it."""

    namespace: str
    pod: str
    uid: str
    job: str | None
    index: int | None
    started: str
    name: str
    image: str
    process: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    result: tuple[int, str, str] | None = None
    """(exit code, reason, message) once it ended."""
    stopping: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class PodExecutor:
    """The Node `node` of the cluster behind `kubeconfig`; `start()` registers it, `stop()` ends its pods."""

    def __init__(
        self,
        kubeconfig: Path,
        server: str,
        ca_file: Path,
        node: str = "freeatm-test-node",
        cpu: str = "8",
        memory: str = "32Gi",
        pods: int = 110,
        workdir: Path | None = None,
        extra_path: str | None = None,
    ) -> None:
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        self.api = kubernetes.client.ApiClient(cfg)
        self.server, self.ca_file = server, ca_file
        self.node, self.cpu, self.memory, self.pods = node, cpu, memory, pods
        self.scripted: dict[str, Outcome | None] = {}
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="freeatm-node-"))
        self.extra_path = extra_path
        self.containers: dict[str, Container] = {}  # pod uid → its container
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- the API, raw ----------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        resp = self.api.call_api(
            path,
            method,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=15,
        )
        return json.loads(resp.data) if resp.data else None

    def _patch_status(self, c: Container, status: dict[str, Any]) -> None:
        path = f"/api/v1/namespaces/{quote(c.namespace)}/pods/{quote(c.pod)}/status"
        try:
            self._call("PATCH", path, {"status": status}, "application/strategic-merge-patch+json")
        except ApiException as e:
            if e.status != 404:
                log.warning("status of %s/%s: %s", c.namespace, c.pod, e)

    # -- the node ----------------------------------------------------------------------------------------------
    def _node_status(self) -> dict[str, Any]:
        now = _now()
        capacity = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "100Gi",
        }
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "freeatm test pod executor is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [ready],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": "",
                "containerRuntimeVersion": "freeatm-test://0",
                "kernelVersion": os.uname().release,
                "kubeProxyVersion": "",
                "kubeletVersion": "v1.35.4",
                "machineID": "",
                "operatingSystem": "linux",
                "osImage": "freeatm test pod executor",
                "systemUUID": "",
            },
        }

    def _register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
        }
        try:
            self._call("POST", "/api/v1/nodes", node)
        except ApiException as e:
            if e.status != 409:
                raise
        self._call(
            "PATCH",
            f"/api/v1/nodes/{self.node}/status",
            {"status": self._node_status()},
            "application/strategic-merge-patch+json",
        )

    def _heartbeat(self) -> None:
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        while not self._stop.wait(5):
            try:
                self._call(
                    "PATCH",
                    f"/api/v1/nodes/{self.node}/status",
                    {"status": self._node_status()},
                    "application/strategic-merge-patch+json",
                )
                renew = _now(micro=True)
                try:
                    self._call(
                        "PATCH", lease_path, {"spec": {"renewTime": renew}}, "application/merge-patch+json"
                    )
                except ApiException as e:
                    if e.status != 404:
                        raise
                    self._call(
                        "POST",
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                        {
                            "apiVersion": "coordination.k8s.io/v1",
                            "kind": "Lease",
                            "metadata": {"name": self.node},
                            "spec": {
                                "holderIdentity": self.node,
                                "leaseDurationSeconds": 40,
                                "renewTime": renew,
                            },
                        },
                    )
            except Exception as e:  # the next beat tries again
                log.warning("node heartbeat: %s", e)

    def _relay_api(self) -> None:
        host, port = self.server.removeprefix("https://").rsplit(":", 1)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.workdir / "api.sock"))
        listener.listen(64)
        serve(listener, lambda: socket.create_connection((host, int(port))), self._stop)

    def start(self) -> PodExecutor:
        self._register()
        self.workdir.mkdir(parents=True, exist_ok=True)
        relay = threading.Thread(target=self._relay_api, name="pod-executor-api-relay", daemon=True)
        relay.start()
        self._threads.append(relay)
        for target in (self._heartbeat, self._watch):
            t = threading.Thread(target=target, name=f"pod-executor-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            running = [c for c in self.containers.values() if c.process is not None and c.result is None]
        for c in running:
            _signal(c.process, signal.SIGKILL)
        for t in self._threads:
            t.join(10)
        self.api.close()

    # -- pods --------------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        selector = f"spec.nodeName={self.node}"
        version = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listing = self._call("GET", f"/api/v1/pods?{urlencode({'fieldSelector': selector})}")
                    version = listing["metadata"]["resourceVersion"]
                    for pod in listing["items"]:
                        self._on_pod(pod)
                query = {"fieldSelector": selector, "resourceVersion": version, "allowWatchBookmarks": "true"}
                for event in watch_events(self.api, "/api/v1/pods", query):
                    if self._stop.is_set():
                        break
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = None  # the watch expired (410 Gone): list again
                        break
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._on_pod(obj)
            except Exception as e:
                log.warning("pod watch: %s", e)
                time.sleep(0.5)

    def _on_pod(self, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        uid = meta["uid"]
        with self.lock:
            c = self.containers.get(uid)
            if c is None:
                if status.get("phase") in ("Succeeded", "Failed"):
                    return
                labels = meta.get("labels") or {}
                index = (meta.get("annotations") or {}).get(INDEX_ANNOTATION)
                c = Container(
                    namespace=meta["namespace"],
                    pod=meta["name"],
                    uid=uid,
                    job=labels.get("batch.kubernetes.io/job-name") or labels.get("job-name"),
                    index=int(index) if index is not None else None,
                    started=_now(),
                    name=pod["spec"]["containers"][0]["name"],
                    image=pod["spec"]["containers"][0].get("image", ""),
                )
                self.containers[uid] = c
                threading.Thread(
                    target=self._run_pod, args=(c, pod), name=f"pod-{c.pod}", daemon=True
                ).start()
        if meta.get("deletionTimestamp"):
            grace = int(meta.get("deletionGracePeriodSeconds") or 0)
            threading.Thread(target=self._delete_pod, args=(c, min(grace, 5)), daemon=True).start()

    def _run_pod(self, c: Container, pod: dict[str, Any]) -> None:
        spec = pod["spec"]
        container = spec["containers"][0]
        if _unreachable_registry(c.image):
            self._back_off_pulling(c)
            return
        try:
            if c.namespace not in self.scripted:
                self._start_process(c, pod)
        except Exception as e:
            log.warning("pod %s/%s could not start: %s", c.namespace, c.pod, e)
            self._terminate(c, 128, "StartError", str(e)[:4000])
            return
        self._patch_status(
            c,
            {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": c.started,
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": c.started}
                    for t in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
                ],
                "containerStatuses": [
                    _container_status(c, {"running": {"startedAt": c.started}}, ready=True)
                ],
            },
        )
        outcome = self.scripted.get(c.namespace)
        if outcome is not None:
            self.finish(c, *outcome(c))
        if c.process is not None:
            code = c.process.wait()
            _signal(c.process, signal.SIGKILL)  # what it left behind in its process group: the relay
            if not c.stopping:
                self._terminate(
                    c, code, "Completed" if code == 0 else "Error", self._message(c, container, code)
                )

    def _back_off_pulling(self, c: Container) -> None:
        """What a kubelet reports for an image it cannot pull: the pod stays Pending, its container waiting."""
        waiting = {
            "reason": "ImagePullBackOff",
            "message": f'Back-off pulling image "{c.image}": ErrImagePull: dial tcp: lookup '
            f"{c.image.split('/')[0]}: no such host",
        }
        self._patch_status(
            c,
            {
                "phase": "Pending",
                "hostIP": "127.0.0.1",
                "startTime": c.started,
                "conditions": [
                    {
                        "type": t,
                        "status": "False",
                        "reason": "ContainersNotReady",
                        "lastTransitionTime": c.started,
                    }
                    for t in ("ContainersReady", "Ready")
                ],
                "containerStatuses": [_container_status(c, {"waiting": waiting}, ready=False)],
            },
        )

    def _start_process(self, c: Container, pod: dict[str, Any]) -> None:
        spec = pod["spec"]
        container = spec["containers"][0]
        c.workdir = self.workdir / "pods" / f"{c.namespace}_{c.pod}"
        (c.workdir / "serviceaccount").mkdir(parents=True, exist_ok=True)
        token = self._token(c, spec.get("serviceAccountName") or "default")
        (c.workdir / "serviceaccount/token").write_text(token)
        (c.workdir / "serviceaccount/ca.crt").write_bytes(self.ca_file.read_bytes())
        (c.workdir / "serviceaccount/namespace").write_text(c.namespace)
        (c.workdir / "termination-log").write_text("")
        mounts = [(c.workdir / "serviceaccount", SA_DIR)]
        mounts.append(
            (
                c.workdir / "termination-log",
                Path(container.get("terminationMessagePath") or "/dev/termination-log"),
            )
        )
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for m in container.get("volumeMounts") or []:
            volume = volumes.get(m["name"]) or {}
            if "persistentVolumeClaim" in volume:
                src = self.workdir / "claims" / c.namespace / volume["persistentVolumeClaim"]["claimName"]
            elif "emptyDir" in volume and m["mountPath"] != "/dev/shm":  # /dev/shm is a tmpfs already
                src = c.workdir / "volumes" / m["name"]
            else:
                continue
            target = Path(m["mountPath"])
            if any(p == target or target in p.parents for p in (Path(sys.prefix), self.workdir.resolve())):
                continue  # it would hide this node's own programs (the venv) or the pod's files: the host's it is
            src.mkdir(parents=True, exist_ok=True)
            mounts.append((src, target))
        (c.workdir / "mounts").write_text("".join(f"{s} {d}\n" for s, d in mounts))
        SA_DIR.parent.mkdir(parents=True, exist_ok=True)  # an empty mount point, as on every node

        env = self._environment(c, pod, container)
        argv = _expand(list(container.get("command") or []), env) + _expand(
            list(container.get("args") or []), env
        )
        if not argv:
            raise ValueError("the executor runs only containers with a command (it has no images)")
        log_file = open(c.workdir / "container.log", "wb")  # noqa: SIM115 - the process keeps it
        c.process = subprocess.Popen(
            [
                *("unshare", "--net", "--mount", "--propagation", "private", "/bin/sh", "-c", _POD, "sh"),
                *(str(c.workdir), sys.executable, str(RELAY), env["KUBERNETES_SERVICE_PORT"], *argv),
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def _token(self, c: Container, account: str) -> str:
        review = self._call(
            "POST",
            f"/api/v1/namespaces/{quote(c.namespace)}/serviceaccounts/{quote(account)}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": ["https://kubernetes.default.svc.cluster.local"],
                    "expirationSeconds": 3600,
                    "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": c.pod, "uid": c.uid},
                },
            },
        )
        return review["status"]["token"]

    def _environment(self, c: Container, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        host, port = self.server.removeprefix("https://").rsplit(":", 1)
        env = {
            "PATH": ":".join(p for p in (self.extra_path, os.environ.get("PATH", "")) if p),
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": c.pod,
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
        }
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix") or ""
            if "secretRef" in source:
                data = self._secret(c.namespace, source["secretRef"]["name"])
            else:
                data = self._config_map(c.namespace, source["configMapRef"]["name"])
            env.update({prefix + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = _expand([var["value"]], env)[0]
                continue
            ref = var.get("valueFrom") or {}
            if "fieldRef" in ref:
                env[var["name"]] = _field(pod, ref["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in ref:
                env[var["name"]] = self._secret(c.namespace, ref["secretKeyRef"]["name"])[
                    ref["secretKeyRef"]["key"]
                ]
            elif "configMapKeyRef" in ref:
                key = ref["configMapKeyRef"]
                env[var["name"]] = self._config_map(c.namespace, key["name"])[key["key"]]
            elif "resourceFieldRef" in ref:
                resources = container.get("resources") or {}
                kind, _, res = ref["resourceFieldRef"]["resource"].partition(".")
                env[var["name"]] = str(
                    (resources.get(kind) or {}).get(res, self.cpu if res == "cpu" else "0")
                )
        return env

    def _secret(self, namespace: str, name: str) -> dict[str, str]:
        data = (self._call("GET", f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}") or {}).get(
            "data"
        ) or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def _config_map(self, namespace: str, name: str) -> dict[str, str]:
        return (
            self._call("GET", f"/api/v1/namespaces/{quote(namespace)}/configmaps/{quote(name)}") or {}
        ).get("data") or {}

    def _message(self, c: Container, container: dict[str, Any], code: int) -> str:
        assert c.workdir is not None
        message = (c.workdir / "termination-log").read_text(errors="replace")[:4096]
        if not message and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = (c.workdir / "container.log").read_text(errors="replace").splitlines()[-80:]
            message = "\n".join(lines)[-2048:]
        return message

    def _terminate(
        self,
        c: Container,
        code: int,
        reason: str,
        message: str,
        conditions: list[dict[str, Any]] | None = None,
    ) -> None:
        with self.lock:
            if c.result is not None:
                return
            c.result = (code, reason, message)
        finished = _now()
        terminated = {
            "exitCode": code,
            "reason": reason,
            "message": message,
            "startedAt": c.started,
            "finishedAt": finished,
        }
        status: dict[str, Any] = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [
                {
                    "type": t,
                    "status": "False",
                    "reason": "PodCompleted" if code == 0 else "PodFailed",
                    "lastTransitionTime": finished,
                }
                for t in ("ContainersReady", "Ready")
            ]
            + (conditions or []),
            "containerStatuses": [_container_status(c, {"terminated": terminated}, ready=False)],
        }
        self._patch_status(c, status)
        c.done.set()

    def _delete_pod(self, c: Container, grace: int) -> None:
        """The kubelet's part of a deletion: stop the container, report it, then remove the pod for good."""
        with self.lock:
            if c.stopping:
                return
            c.stopping = True
        if c.process is not None and c.result is None:
            _signal(c.process, signal.SIGTERM)
            try:
                code = c.process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal(c.process, signal.SIGKILL)
                code = c.process.wait()
            self._terminate(c, 128 - code if code < 0 else code, "Error", "")
        elif c.result is None:
            self._terminate(c, 137, "Error", "")
        path = f"/api/v1/namespaces/{quote(c.namespace)}/pods/{quote(c.pod)}"
        try:
            self._call(
                "DELETE",
                path,
                {
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": c.uid},
                },
            )
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("delete %s/%s: %s", c.namespace, c.pod, e)

    # -- what the scenario tests do in scripted namespaces --------------------------------------------------
    def script(self, namespace: str, outcome: Outcome | None = None) -> None:
        """Pods of `namespace` run no process: each waits for `finish`, or ends at once with `outcome(container)`."""
        self.scripted[namespace] = outcome

    def running(self, namespace: str, job: str) -> list[Container]:
        """Containers of `job`'s pods that are running now, by completion index."""
        with self.lock:
            found = [
                c
                for c in self.containers.values()
                if c.namespace == namespace and c.job == job and c.result is None and not c.stopping
            ]
        return sorted(found, key=lambda c: (c.index or 0, c.started))

    def finish(self, c: Container, exit_code: int, message: str = "") -> None:
        """End a scripted container with this exit code and termination message."""
        assert c.namespace in self.scripted
        self._terminate(c, exit_code, "Completed" if exit_code == 0 else "Error", message)

    def log_of(self, namespace: str, pod: str) -> str:
        path = self.workdir / "pods" / f"{namespace}_{pod}" / "container.log"
        return path.read_text(errors="replace") if path.exists() else ""


def watch_events(
    api: kubernetes.client.ApiClient, path: str, query: dict[str, str], seconds: int = 30
) -> Iterator[dict[str, Any]]:
    """The watch events of `path` as plain JSON: the client's model deserialization costs milliseconds an event,
    which this process (the node, and the scale benchmark beside it) cannot spare."""
    resp = api.call_api(
        f"{path}?{urlencode({**query, 'watch': 'true', 'timeoutSeconds': str(seconds)})}",
        "GET",
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=seconds + 15,
    )
    try:
        for line in iter_resp_lines(resp):
            if line.strip():
                yield json.loads(line)
    finally:
        resp.release_conn()


def _container_status(c: Container, state: dict[str, Any], ready: bool) -> dict[str, Any]:
    return {
        "name": c.name,
        "image": c.image,
        "imageID": "",
        "containerID": "",
        "ready": ready,
        "started": ready,
        "restartCount": 0,
        "state": state,
    }


def _unreachable_registry(image: str) -> bool:
    """An image on a registry of the reserved `.invalid` domain (RFC 2606), which no kubelet can ever pull."""
    host = image.split("/")[0] if "/" in image else ""
    return host.split(":")[0].endswith(".invalid")


def _signal(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Signal the container's whole process group (which outlives its leader while anything in it runs)."""
    if proc is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    match = re.fullmatch(r"metadata\.(annotations|labels)\['(.+)'\]", path)
    if match:
        return str((meta.get(match[1]) or {}).get(match[2], ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName"),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    if path not in simple:
        raise ValueError(f"fieldRef {path} is not supported by the test executor")
    return str(simple[path] or "")


def _expand(values: list[str], env: dict[str, str]) -> list[str]:
    """The kubelet's $(VAR) expansion ($$ escapes); unknown variables stay as written."""

    def one(text: str) -> str:
        return re.sub(
            r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
            lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]),
            text,
        )

    return [one(v) for v in values]


def _now(micro: bool = False) -> str:
    t = time.time()
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
    return f"{base}.{int(t % 1 * 1e6):06d}Z" if micro else f"{base}Z"
