"""One storage module for every URI the runtime reads or writes: file://, pvc:// and s3://
(docs/architecture.md#the-runtime-contract).

Writes are atomic: a local file is written under a temporary name in the same directory and renamed; an S3
object only becomes visible once its upload completed. Credentials and endpoint come from the environment, as
a Secret referenced by the resource sets them (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
AWS_REGION), so MinIO, Ceph and SeaweedFS work like AWS. boto3 retries throttling and connection errors with
exponential backoff ("standard" mode, FREEATM_S3_MAX_ATTEMPTS attempts); each attempt waits at most
FREEATM_S3_TIMEOUT seconds (default 60) for the server to answer, so a server that hangs fails as surely as
one that is gone. What still fails becomes a TransientError (network) or InvalidInput (missing bucket,
denied access) with the URI in the message.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

from .errors import InvalidInput, TransientError

_UMASK = os.umask(0)
os.umask(_UMASK)
# Write failures that retrying cannot fix (a full disk or a stale mount may pass: those stay transient).
_PERMANENT_WRITE_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
PVC_ROOT_ENV = "FREEATM_PVC_ROOT"  # where the operator mounts claims: <root>/<claim>/
DEFAULT_PVC_ROOT = "/mnt/pvc"


class MissingKey(InvalidInput):
    """The object or file does not exist."""


class Store(Protocol):
    """A prefix in some storage, addressed by relative keys such as 'shards/shard-00000.tar'."""

    uri: str

    def read_bytes(self, key: str) -> bytes: ...
    def open_read(self, key: str) -> IO[bytes]:
        """A stream of the object's bytes, read as they are asked for (close it, or use it in a with block)."""
        ...

    def write_bytes(self, key: str, data: bytes) -> None: ...
    def upload(self, local: Path, key: str) -> None: ...
    def download(self, key: str, local: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def url(self, key: str) -> str: ...


def local_path(uri: str) -> Path | None:
    """The filesystem path of a file:// or pvc:// URI, None for others."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(parts.path)
    if parts.scheme == "pvc":
        root = Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT))
        return root / parts.netloc / parts.path.lstrip("/")
    return None


def open_store(uri: str) -> Store:
    """The Store for `uri`; raises InvalidInput for a scheme that is not storage."""
    parts = urlsplit(uri)
    if parts.scheme in ("file", "pvc"):
        return LocalStore(uri, local_path(uri))  # type: ignore[arg-type]
    if parts.scheme == "s3":
        return S3Store(uri, parts.netloc, parts.path.strip("/"))
    raise InvalidInput(
        f"{uri!r}: unsupported storage scheme {parts.scheme or '(none)'!r}; use file://, pvc:// or s3://"
    )


def join(uri: str, key: str) -> str:
    return uri.rstrip("/") + "/" + key.lstrip("/")


def _temp_beside(target: Path) -> tuple[int, str]:
    """A hidden temporary file next to `target`, with the permissions a plain open() would give it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600: other pods and users must read what we publish
    return fd, tmp


class LocalStore:
    """file:// and pvc:// (a mounted claim)."""

    def __init__(self, uri: str, root: Path) -> None:
        self.uri, self.root = uri.rstrip("/"), root

    def _path(self, key: str) -> Path:
        return self.root / key

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as e:
            raise MissingKey(f"{self.url(key)} does not exist") from e

    def open_read(self, key: str) -> IO[bytes]:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError as e:
            raise MissingKey(f"{self.url(key)} does not exist") from e

    def _publish(self, key: str, write: Callable[[IO[bytes]], object]) -> None:
        """Write under a temporary name beside the target, then rename: readers never see a partial file."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _temp_beside(target)
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, target)
        except OSError as e:
            if e.errno in _PERMANENT_WRITE_ERRORS:
                raise InvalidInput(
                    f"cannot write {self.url(key)}: {e.strerror}; check the output location"
                ) from e
            raise TransientError(f"cannot write {self.url(key)}: {e}") from e

    def write_bytes(self, key: str, data: bytes) -> None:
        self._publish(key, lambda f: f.write(data))

    def upload(self, local: Path, key: str) -> None:
        def copy(dst: IO[bytes]) -> None:
            with local.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)

        self._publish(key, copy)

    def download(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(self.read_bytes(key))

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()]
        return sorted(
            str(p.relative_to(self.root))
            for p in files
            if not p.name.startswith(".")  # skip temp files
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def url(self, key: str) -> str:
        return join(self.uri, key)


def _positive_setting(name: str, default: float) -> float:
    """A positive number from the environment (the pod template or the shell sets these)."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InvalidInput(f"environment variable {name}={text!r} must be a positive number")
    return value


class S3Store:
    """s3://bucket/prefix through boto3."""

    def __init__(self, uri: str, bucket: str, prefix: str) -> None:
        import boto3
        from botocore.config import Config

        self.uri, self.bucket, self.prefix = uri.rstrip("/"), bucket, prefix
        attempts = int(_positive_setting("FREEATM_S3_MAX_ATTEMPTS", 5))
        timeout = _positive_setting("FREEATM_S3_TIMEOUT", 60)
        retries = {"max_attempts": attempts, "mode": "standard"}
        self.client = boto3.client(
            "s3", config=Config(retries=retries, connect_timeout=min(timeout, 10), read_timeout=timeout)
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            url = self.url(key)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise MissingKey(f"{url} does not exist") from e
            if code == "NoSuchBucket":
                raise InvalidInput(f"{url}: bucket {self.bucket!r} does not exist") from e
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise InvalidInput(
                    f"{url}: access denied ({code}); check the Secret named in secretRef"
                ) from e
            raise TransientError(f"{what} {url} failed after retries: {code or e}") from e
        except BotoCoreError as e:
            raise TransientError(f"{what} {self.url(key)} failed after retries: {e}") from e

    def read_bytes(self, key: str) -> bytes:
        out = self._call("reading", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return out["Body"].read()

    def open_read(self, key: str) -> IO[bytes]:
        out = self._call("reading", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return io.BufferedReader(_S3Body(out["Body"], self.url(key)), 1 << 20)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._call("writing", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def upload(self, local: Path, key: str) -> None:
        self._call("uploading", key, self.client.upload_file, str(local), self.bucket, self._key(key))

    def download(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part")
        self._call("downloading", key, self.client.download_file, self.bucket, self._key(key), str(tmp))
        os.replace(tmp, local)

    def exists(self, key: str) -> bool:
        try:
            self._call("checking", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except MissingKey:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        pages = self._call(
            "listing", prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full))
        )
        for page in pages:
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._call("deleting", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def url(self, key: str) -> str:
        return join(self.uri, key)


class _S3Body(io.RawIOBase):
    """An S3 object's streaming body, its read failures TransientErrors: the request was retried by boto3, a
    connection that breaks or times out (FREEATM_S3_TIMEOUT) while the body streams is not."""

    def __init__(self, body: Any, url: str) -> None:
        super().__init__()
        self.body, self.url = body, url

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from botocore.exceptions import BotoCoreError

        try:
            data = self.body.read(len(buffer))
        except (BotoCoreError, OSError) as e:
            raise TransientError(f"reading {self.url} failed: {type(e).__name__}: {e}") from e
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.body.close()
        super().close()


_STORES: dict[tuple[int, str], Store] = {}


def cached_store(uri: str) -> Store:
    """open_store(uri), reused within this process: an S3 client is costly to build (never shared across a fork)."""
    key = (os.getpid(), uri)
    if key not in _STORES:
        _STORES[key] = open_store(uri)
    return _STORES[key]


def cache_root() -> Path:
    """Where the runtime keeps local copies (models, datasets): FREEATM_CACHE_DIR, default ~/.cache/freeatm."""
    return Path(os.environ.get("FREEATM_CACHE_DIR", Path.home() / ".cache" / "freeatm"))


def sync_to_cache(uri: str, cache_dir: Path | None = None) -> Path:
    """A local directory holding everything under `uri`: the path itself for file:// and pvc://, otherwise a
    copy under `cache_dir` (default: cache_root()), downloading only missing files."""
    path = local_path(uri)
    if path is not None:
        if not path.exists():
            raise InvalidInput(f"{uri} does not exist")
        return path
    store = open_store(uri)
    parts = urlsplit(uri)
    root = cache_dir or cache_root()
    target = root / parts.scheme / parts.netloc / parts.path.strip("/")
    keys = store.list()
    if not keys:
        raise InvalidInput(f"{uri} is empty or does not exist")
    for key in keys:
        if not (target / key).exists():
            store.download(key, target / key)
    return target
