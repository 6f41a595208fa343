"""The dataset format's one writer and reader (runtime/dataset_format.py)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from freeatm.runtime.dataset_format import FORMAT, parse_manifest, verified_samples, write_shard
from freeatm.runtime.errors import InvalidInput

SAMPLES = [(f"{i:08d}", {"png": b"image %d" % i, "mask.png": b"mask", "json": b"{}"}) for i in range(3)]


def test_write_shard_is_deterministic_and_reports_its_digest() -> None:
    first, second = io.BytesIO(), io.BytesIO()
    sha256, size = write_shard(first, SAMPLES)
    assert write_shard(second, SAMPLES) == (sha256, size)
    data = first.getvalue()
    assert data == second.getvalue() and (hashlib.sha256(data).hexdigest(), len(data)) == (sha256, size)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == ["00000000.png", "00000000.mask.png", "00000000.json"]
    assert {(m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0o644, 0, 0, "", "")}


def test_what_write_shard_writes_verified_samples_reads_back() -> None:
    stream = io.BytesIO()
    sha256, size = write_shard(stream, SAMPLES)
    entry = {"name": "shards/shard-00000.tar", "samples": 3, "sha256": sha256, "bytes": size}
    stream.seek(0)
    samples = verified_samples(stream, entry, "file:///ds/shards/shard-00000.tar", "file:///ds")
    assert [(s["__key__"], s["png"]) for s in samples] == [(k, m["png"]) for k, m in SAMPLES]


def test_parse_manifest_accepts_only_this_format() -> None:
    assert parse_manifest(json.dumps({"format": FORMAT}).encode(), "m.json") == {"format": FORMAT}
    with pytest.raises(InvalidInput, match="m.json: not a synthetic dataset: format 'other/v1'"):
        parse_manifest(b'{"format": "other/v1"}', "m.json")
    with pytest.raises(InvalidInput, match="m.json is not valid JSON"):
        parse_manifest(b"{", "m.json")
