"""Shared pytest fixtures (keep this small: helpers live in their own modules under tests/)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3_server import S3Server, S3Unavailable, s3_server


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
