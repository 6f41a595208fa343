"""The runtime contract on every input: one `error:` line and a documented exit code, never a traceback.

A spec that cannot be read or parsed, or bad data, is exit 65 (the Job fails at once); I/O trouble that may
pass is 75 (retried); a genuine bug is 1, its traceback in the log. Each case runs the real entry point in a
subprocess, as a pod does.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from freeatm.api.vocabulary import EXIT_BUG, EXIT_INVALID, EXIT_TRANSIENT
from freeatm.runtime import cli
from freeatm.runtime.errors import InvalidInput, TransientError, as_failure

DATASET = {
    "apiVersion": "freeatm.io/v1alpha1",
    "kind": "SyntheticDataset",
    "metadata": {"name": "d"},
    "spec": {
        "model": {"uri": "toy://shapes"},
        "prompts": {"preset": "shapes"},
        "output": {"uri": "file:///x"},
    },
}

# Each line refers to the one above four times: 9 × 4¹² nodes once expanded, from 500 bytes.
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{new}: &{new} [*{old}, *{old}, *{old}, *{old}]\n" for old, new in itertools.pairwise("abcdefghijklm")
)


def runtime(tmp_path: Path, *args: str, spec_env: str | None = None) -> tuple[int, str, dict]:
    env = {k: v for k, v in os.environ.items() if k != "FREEATM_SPEC"}
    env["FREEATM_RESULT_FILE"] = str(tmp_path / "result.json")
    if spec_env is not None:
        env["FREEATM_SPEC"] = spec_env
    proc = subprocess.run(
        [sys.executable, "-m", "freeatm.runtime.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    result = tmp_path / "result.json"
    return proc.returncode, proc.stderr, json.loads(result.read_text()) if result.exists() else {}


def spec_file(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


CASES = {
    "missing spec file": lambda t: ["--spec", str(t / "no-such.json")],
    "spec path is a directory": lambda t: ["--spec", str(t)],
    "spec path under a file": lambda t: ["--spec", spec_file(t, "f", b"x") + "/spec.json"],
    "spec not UTF-8": lambda t: ["--spec", spec_file(t, "s.yaml", b"kind: \xff\xfe\n")],
    "spec is a list": lambda t: ["--spec", spec_file(t, "s.json", b"[1, 2]")],
    "spec is a scalar": lambda t: ["--spec", spec_file(t, "s.json", b"3")],
    "spec is empty": lambda t: ["--spec", spec_file(t, "s.json", b"")],
    "spec is not YAML": lambda t: ["--spec", spec_file(t, "s.yaml", b"a: [1,\n b: }")],
    "spec nested too deeply": lambda t: ["--spec", spec_file(t, "s.json", b"[" * 20000 + b"]" * 20000)],
    "spec with an alias bomb": lambda t: ["--spec", spec_file(t, "s.yaml", BOMB.encode())],
    "spec with two documents": lambda t: ["--spec", spec_file(t, "s.yaml", b"a: 1\n---\nb: 2\n")],
    "spec of another kind": lambda t: ["--spec", spec_file(t, "s.json", json.dumps(DATASET).encode())],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unreadable_or_unparsable_spec_file_is_invalid_input(tmp_path: Path, case: str) -> None:
    command = "pretrain" if case == "spec of another kind" else "generate"
    code, stderr, result = runtime(tmp_path, command, *CASES[case](tmp_path))
    assert code == EXIT_INVALID, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().count("\n") == 0 and stderr.startswith("error: "), stderr
    assert result["exitCode"] == EXIT_INVALID and result["error"] in stderr


@pytest.mark.parametrize(
    "value", ["[1, 2]", "- kind: SyntheticDataset", "3", "true", "just text", "null", " "]
)
def test_freeatm_spec_that_is_not_a_resource_is_invalid_input(tmp_path: Path, value: str) -> None:
    code, stderr, result = runtime(tmp_path, "generate", spec_env=value)
    assert code == EXIT_INVALID, stderr
    assert "Traceback" not in stderr and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "FREEATM_SPEC" in stderr
    assert result["exitCode"] == EXIT_INVALID


def test_transient_io_error_reading_the_spec_is_exit_75(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unwell(path: Path) -> list:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(cli, "read_documents", unwell)
    monkeypatch.setenv("FREEATM_RESULT_FILE", str(tmp_path / "result.json"))
    assert cli.main(["generate", "--spec", str(tmp_path / "spec.json")]) == EXIT_TRANSIENT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "EIO" in err, err


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (OSError(errno.EIO, "Input/output error", "/data/shard-00000.tar"), EXIT_TRANSIENT),
        (OSError(errno.ENOSPC, "No space left on device", "/out/x"), EXIT_TRANSIENT),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/missing"), EXIT_INVALID),
        (tarfile.ReadError("unexpected end of data"), EXIT_INVALID),
        (json.JSONDecodeError("Expecting value", "{", 1), EXIT_INVALID),
        (KeyError("a bug"), EXIT_BUG),
    ],
)
def test_errors_escaping_a_command_get_their_documented_code(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    raised: BaseException,
    code: int,
) -> None:
    def command(name: str, resource: object) -> dict:
        raise raised

    monkeypatch.setattr(cli, "run", command)
    monkeypatch.setenv("FREEATM_RESULT_FILE", str(tmp_path / "result.json"))
    monkeypatch.setenv("FREEATM_SPEC", json.dumps(DATASET))
    assert cli.main(["generate"]) == code
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    assert "Traceback" not in err
    assert ("Traceback" in caplog.text) == (code == EXIT_BUG), caplog.text  # in the log, and only for a bug
    assert json.loads((tmp_path / "result.json").read_text()) == {
        "error": last.removeprefix("error: "),
        "exitCode": code,
    }


class _FailingStream(torch.utils.data.IterableDataset):
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise self.error


@pytest.mark.parametrize(
    "raised, code",
    [
        (TransientError("reading s3://b/shard.tar failed after retries: boom"), EXIT_TRANSIENT),
        (InvalidInput("shard s3://b/shard.tar is corrupt:\nsee the manifest"), EXIT_INVALID),
        (tarfile.ReadError("bad tar"), EXIT_INVALID),
    ],
)
def test_an_error_in_a_loader_process_keeps_its_message(raised: BaseException, code: int) -> None:
    """torch's DataLoader raises a loader process's error again with that process's traceback for a message:
    the one error line gives the original message, naming the loader process, and no traceback."""
    with pytest.raises(type(raised)) as info:
        next(iter(torch.utils.data.DataLoader(_FailingStream(raised), batch_size=None, num_workers=1)))
    assert "Traceback" in str(info.value)
    failure = as_failure(info.value)
    assert failure is not None and failure.exit_code == code
    assert str(failure).endswith(f"{raised} (in DataLoader worker process 0)")
    assert "Traceback" not in str(failure)


@pytest.mark.parametrize(
    "raised, code",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/cache/shard-00001.tar"), EXIT_TRANSIENT),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/shard-00001.tar"), EXIT_INVALID),
    ],
)
def test_an_os_error_in_a_loader_process_keeps_its_errno(raised: OSError, code: int) -> None:
    """The DataLoader rebuilds a loader process's OSError from its traceback text, without its errno: the
    errno is read back from that text, so the exit code is the documented one, not a bug's."""
    with pytest.raises(OSError) as info:
        next(iter(torch.utils.data.DataLoader(_FailingStream(raised), batch_size=None, num_workers=1)))
    assert info.value.errno is None
    failure = as_failure(info.value)
    assert failure is not None and failure.exit_code == code
    assert str(failure).startswith(f"{raised.filename} (in DataLoader worker process 0): {raised.strerror}")
    assert "Traceback" not in str(failure)
