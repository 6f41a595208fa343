"""A real Kubernetes control plane on loopback, for the tests' real tier.

etcd, kube-apiserver (client-certificate and service-account-token authentication, RBAC authorization, the
default admission plugins, an audit log of the writes to freeatm status), kube-controller-manager (the Job,
TTL-after-finished, garbage-collector, Deployment, ReplicaSet, service-account, namespace and node-lifecycle
controllers) and kube-scheduler, all built from pinned Go modules by `.ci/build-control-plane.sh`. Certificates are generated per run. Nothing listens beyond 127.0.0.1, and every
process is stopped by its PID.

There is no kubelet and no container runtime: `tests/pod_executor.py` plays the node.
"""

from __future__ import annotations

import ctypes
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

TOOLS_ENV = Path(os.environ.get("FREEATM_TOOLS_ENV", Path.home() / ".cache/freeatm/tools.env"))
CONTROLLERS = (
    "job-controller",
    "deployment-controller",
    "replicaset-controller",
    "ttl-after-finished-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "namespace-controller",
    "node-lifecycle-controller",
)
"""The controllers a freeatm workload meets on a cluster (the rest need nodes, clouds or volumes)."""
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [patch, update]
  resources:
  - group: freeatm.io
    resources: [syntheticdatasets/status, maskpretrainjobs/status, evaljobs/status]
- level: None
"""
"""Who wrote the status of which resource (a pod's bound token names the pod): the tests read it."""


def kube_bin() -> Path | None:
    """Where .ci/build-control-plane.sh put the binaries (FREEATM_KUBE_BIN, or its line in the tools env file)."""
    value = os.environ.get("FREEATM_KUBE_BIN")
    if not value and TOOLS_ENV.exists():
        for line in TOOLS_ENV.read_text().splitlines():
            if line.startswith("FREEATM_KUBE_BIN="):
                value = line.split("=", 1)[1]
    if value and all((Path(value) / b).exists() for b in ("etcd", "kube-apiserver", "kubectl")):
        return Path(value)
    return None


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the thread that started it ends (a killed test run leaks nothing)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _Pki:
    """A CA and the certificates signed by it, written as PEM files into `root`."""

    root: Path
    key: rsa.RSAPrivateKey = field(init=False)
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "freeatm-test-ca")])
        self.cert = (
            self._builder(name, name, self.key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self._write("ca", self.key, self.cert)

    @staticmethod
    def _builder(subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
        )

    def _write(self, stem: str, key: rsa.RSAPrivateKey, cert: x509.Certificate | None) -> None:
        (self.root / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        if cert is not None:
            (self.root / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, common_name: str, groups: tuple[str, ...] = (), server: bool = False) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
            + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        )
        builder = self._builder(subject, self.cert.subject, key)
        usage = x509.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes.default.svc"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        self._write(stem, key, builder.sign(self.key, hashes.SHA256()))

    def signing_key(self, stem: str) -> None:
        """An RSA key pair for service-account tokens (stem.key private, stem.pub public)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._write(stem, key, None)
        (self.root / f"{stem}.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler in `workdir`; `admin_kubeconfig` for clients."""

    def __init__(self, workdir: Path, binaries: Path) -> None:
        self.workdir, self.bin = Path(workdir), Path(binaries)
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.audit_log = self.logs / "audit.log"

    # -- credentials -----------------------------------------------------------------------------------------
    def kubeconfig(self, user: str) -> Path:
        """A kubeconfig for a client certificate made by `start` (admin, controller-manager, scheduler)."""
        return self.workdir / f"{user}.kubeconfig"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfig("admin")

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    def _write_kubeconfig(self, user: str) -> None:
        self.kubeconfig(user).write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: test\n  cluster:\n    server: {self.server}\n"
            f"    certificate-authority: {self.ca_file}\n"
            f"users:\n- name: {user}\n  user:\n    client-certificate: {self.pki / user}.crt\n"
            f"    client-key: {self.pki / user}.key\n"
            f"contexts:\n- name: {user}\n  context:\n    cluster: test\n    user: {user}\n"
            f"current-context: {user}\n"
        )

    def kubeconfig_for_token(self, name: str, token: str) -> Path:
        """A kubeconfig that authenticates with a bearer token (a ServiceAccount's, say)."""
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: test\n  cluster:\n    server: {self.server}\n"
            f"    certificate-authority: {self.ca_file}\n"
            f"users:\n- name: {name}\n  user:\n    token: {token}\n"
            f"contexts:\n- name: {name}\n  context:\n    cluster: test\n    user: {name}\n"
            f"current-context: {name}\n"
        )
        return path

    # -- processes -------------------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - the process keeps it
        self.processes[name] = subprocess.Popen(
            [str(self.bin / args[0]), *args[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def _wait(self, what: str, ready: callable, timeout: float = 90) -> None:  # type: ignore[valid-type]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout}s (logs in {self.logs})")

    def _healthy(self, path: str) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        try:
            with urllib.request.urlopen(f"{self.server}{path}", context=ctx, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def start(self) -> ControlPlane:
        for d in (self.pki, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        pki = _Pki(self.pki)
        pki.issue("apiserver", "kube-apiserver", server=True)
        pki.issue("admin", "freeatm-test-admin", groups=("system:masters",))
        pki.issue("controller-manager", "system:kube-controller-manager")
        pki.issue("scheduler", "system:kube-scheduler")
        pki.signing_key("service-account")
        for user in ("admin", "controller-manager", "scheduler"):
            self._write_kubeconfig(user)

        etcd_port, peer_port = free_port(), free_port()
        self._spawn(
            "etcd",
            [
                "etcd",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",  # a throw-away store: durability is not what the tests check
                "--log-level=warn",
            ],
        )
        p = self.pki
        audit_policy = self.workdir / "audit-policy.yaml"
        audit_policy.write_text(AUDIT_POLICY)
        self._spawn(
            "kube-apiserver",
            [
                "kube-apiserver",
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                # What the controller-manager and scheduler look up for delegated authentication (kubeadm's).
                f"--requestheader-client-ca-file={p / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p / 'service-account.pub'}",
                f"--service-account-signing-key-file={p / 'service-account.key'}",
                "--service-cluster-ip-range=10.96.0.0/24",
                # The `kubernetes` Service's endpoint would be 127.0.0.1, which Endpoints refuse.
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                "-v=1",
            ],
        )
        self._wait("kube-apiserver", lambda: self._healthy("/readyz"))
        self._spawn(
            "kube-controller-manager",
            [
                "kube-controller-manager",
                f"--kubeconfig={self.kubeconfig('controller-manager')}",
                f"--authentication-kubeconfig={self.kubeconfig('controller-manager')}",
                f"--authorization-kubeconfig={self.kubeconfig('controller-manager')}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={p / 'service-account.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                # Each controller acts as its own ServiceAccount with its bootstrap RBAC role, as kubeadm sets up.
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--concurrent-gc-syncs=5",
                "-v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                "kube-scheduler",
                f"--kubeconfig={self.kubeconfig('scheduler')}",
                f"--authentication-kubeconfig={self.kubeconfig('scheduler')}",
                f"--authorization-kubeconfig={self.kubeconfig('scheduler')}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "-v=1",
            ],
        )
        # The service-account controller makes each namespace's `default` ServiceAccount: proof it runs.
        self._wait(
            "kube-controller-manager",
            lambda: self.kubectl("get", "sa", "default", check=False).returncode == 0,
        )
        return self

    def kubectl(
        self, *args: str, check: bool = True, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.processes.clear()

    def status_writes(self, namespace: str, plural: str, name: str) -> list[dict]:
        """The audit events of writes to `plural`/`name`'s status, oldest first (user, pod, response code)."""
        events = (json.loads(line) for line in self.audit_log.read_text().splitlines())
        return [
            e
            for e in events
            if (ref := e.get("objectRef") or {}).get("namespace") == namespace
            and ref.get("resource") == plural
            and ref.get("name") == name
            and ref.get("subresource") == "status"
        ]

    def remove(self) -> None:
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
