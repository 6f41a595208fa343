"""The storage module against a real S3 server (SeaweedFS or moto in server mode) started by the test."""

from __future__ import annotations

import uuid

import pytest

from freeatm.runtime.errors import InvalidInput, TransientError
from freeatm.runtime.storage import MissingKey, open_store, sync_to_cache


@pytest.fixture
def bucket(s3_env) -> str:  # type: ignore[no-untyped-def]
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3_env.create_bucket(name)
    return name


def test_round_trip(bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(f"s3://{bucket}/some/prefix")
    store.write_bytes("a.txt", b"hello")
    store.write_bytes("dir/b.bin", bytes(range(256)) * 1000)
    local = tmp_path / "up.bin"
    local.write_bytes(b"x" * (6 << 20))  # above boto3's multipart threshold
    store.upload(local, "dir/big.bin")

    assert store.read_bytes("a.txt") == b"hello"
    with store.open_read("dir/b.bin") as stream:  # streamed, in pieces
        assert stream.read(3) == bytes(range(3)) and stream.read() == (bytes(range(256)) * 1000)[3:]
    with pytest.raises(MissingKey, match="nope does not exist"):
        store.open_read("nope")
    assert store.exists("dir/b.bin") and not store.exists("nope")
    assert store.list() == ["a.txt", "dir/b.bin", "dir/big.bin"]
    assert store.list("dir/") == ["dir/b.bin", "dir/big.bin"]
    store.download("dir/big.bin", tmp_path / "down.bin")
    assert (tmp_path / "down.bin").read_bytes() == local.read_bytes()
    assert store.url("a.txt") == f"s3://{bucket}/some/prefix/a.txt"

    store.delete("a.txt")
    assert not store.exists("a.txt")
    with pytest.raises(MissingKey, match="a.txt does not exist"):
        store.read_bytes("a.txt")


def test_sync_to_cache(bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(f"s3://{bucket}/model")
    store.write_bytes("model_index.json", b"{}")
    store.write_bytes("unet/config.json", b'{"a": 1}')
    path = sync_to_cache(f"s3://{bucket}/model", tmp_path / "cache")
    assert (path / "model_index.json").read_bytes() == b"{}"
    assert (path / "unet/config.json").read_bytes() == b'{"a": 1}'
    with pytest.raises(InvalidInput, match="empty or does not exist"):
        sync_to_cache(f"s3://{bucket}/nothing-here", tmp_path / "cache")


def test_missing_bucket_is_invalid_input(s3_env) -> None:  # type: ignore[no-untyped-def]
    store = open_store(f"s3://missing-{uuid.uuid4().hex[:8]}/x")
    with pytest.raises(InvalidInput):
        store.write_bytes("k", b"v")


def test_unreachable_endpoint_is_transient(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with-block ends: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("FREEATM_S3_MAX_ATTEMPTS", "2")
    store = open_store("s3://bucket/prefix")
    with pytest.raises(TransientError, match="failed after retries"):
        store.write_bytes("k", b"v")


def test_a_stream_that_breaks_while_read_is_transient(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from botocore.exceptions import ReadTimeoutError

    class Breaking:
        def read(self, n: int) -> bytes:
            raise ReadTimeoutError(endpoint_url="http://s3")

        def close(self) -> None:
            pass

    monkeypatch.setenv("AWS_REGION", "us-east-1")
    store = open_store("s3://bucket/prefix")
    monkeypatch.setattr(store.client, "get_object", lambda **_: {"Body": Breaking()})
    with (
        store.open_read("shard.tar") as stream,
        pytest.raises(TransientError, match="reading s3://bucket/prefix/shard.tar failed"),
    ):
        stream.read()


@pytest.mark.parametrize("name", ["FREEATM_S3_TIMEOUT", "FREEATM_S3_MAX_ATTEMPTS"])
@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan", "inf", ""])
def test_a_bad_retry_setting_is_invalid_input_naming_it(monkeypatch, name: str, value: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidInput, match=f"{name}=.* must be a positive number"):
        open_store("s3://bucket/prefix")
