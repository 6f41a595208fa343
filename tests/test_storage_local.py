"""file:// and pvc:// storage: atomic publication, readable files, specific errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from freeatm.runtime.errors import InvalidInput
from freeatm.runtime.storage import MissingKey, local_path, open_store


def test_write_is_atomic_and_readable_by_others(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    store.write_bytes("shards/a.json", b"{}")
    (tmp_path / "src.bin").write_bytes(b"x" * 10)
    store.upload(tmp_path / "src.bin", "shards/b.bin")
    with store.open_read("shards/b.bin") as stream:
        assert stream.read() == b"x" * 10
    assert store.list("shards") == ["shards/a.json", "shards/b.bin"]
    assert not [p for p in (tmp_path / "shards").iterdir() if p.name.startswith(".")]  # no temp files left
    mode = stat.S_IMODE(os.stat(tmp_path / "shards" / "a.json").st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH  # mkstemp's 0600 would hide results from other pods


def test_hidden_temporary_files_are_not_listed(tmp_path: Path) -> None:
    (tmp_path / ".shard-00000.tar.abc.tmp").write_bytes(b"partial")
    assert open_store(tmp_path.as_uri()).list() == []


def test_missing_key_and_bad_scheme_are_specific(tmp_path: Path) -> None:
    with pytest.raises(MissingKey, match="manifest.json does not exist"):
        open_store(tmp_path.as_uri()).read_bytes("manifest.json")
    with pytest.raises(MissingKey, match="manifest.json does not exist"):
        open_store(tmp_path.as_uri()).open_read("manifest.json")
    with pytest.raises(InvalidInput, match="unsupported storage scheme 'ftp'"):
        open_store("ftp://host/x")


def test_pvc_uris_resolve_under_the_mount_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FREEATM_PVC_ROOT", str(tmp_path))
    assert local_path("pvc://datasets/voc/2012") == tmp_path / "datasets" / "voc" / "2012"


def test_unwritable_output_is_permanent(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(InvalidInput, match="check the output location"):
        open_store((tmp_path / "file").as_uri()).write_bytes("manifest.json", b"{}")
