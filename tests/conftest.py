"""Shared pytest fixtures (keep this small: helpers live in their own modules under tests/)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.control_plane import ControlPlane, kube_bin
from tests.pod_executor import PodExecutor
from tests.s3_server import S3Server, S3Unavailable, s3_server

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server on loopback (SeaweedFS, else moto in server mode); `s3.env` holds the AWS_* variables."""
    try:
        with s3_server(tmp_path_factory.mktemp("s3")) as server:
            yield server
    except S3Unavailable as e:
        pytest.skip(f"no S3 server: {e}")


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server with its endpoint and keys set in the environment, as a referenced Secret would set them."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The real control plane (tests/control_plane.py) with the freeatm CRDs of crds/ applied by kubectl.

    Without the binaries (no Go on this machine) the real tier is skipped, saying so; where
    FREEATM_REQUIRE_CONTROL_PLANE is set (`make test` with Go, so CI) it fails instead.
    """
    binaries = kube_bin()
    if binaries is None:
        why = "no control-plane binaries: run `bash .ci/build-control-plane.sh` (needs Go)"
        if os.environ.get("FREEATM_REQUIRE_CONTROL_PLANE"):
            pytest.fail(why)
        pytest.skip(why)
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"), binaries)
    try:
        plane.start()
        plane.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        # Established is not served yet: the kinds' watch caches answer 429 until they are initialised.
        deadline = time.monotonic() + 60
        while plane.kubectl("get", "freeatm", "-A", check=False).returncode != 0:
            assert time.monotonic() < deadline, "the freeatm kinds were never served"
            time.sleep(0.2)
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def node(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodExecutor]:
    """The test-harness node that runs the pods the real scheduler binds (tests/pod_executor.py)."""
    executor = PodExecutor(
        control_plane.admin_kubeconfig,
        control_plane.server,
        control_plane.ca_file,
        workdir=tmp_path_factory.mktemp("node"),
        extra_path=str(Path(sys.executable).parent),
    ).start()
    try:
        yield executor
    finally:
        executor.stop()
