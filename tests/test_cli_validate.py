"""`freeatm validate` and `freeatm crds`: exit codes and one line per problem naming the field path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = (ROOT / "examples" / "quickstart.yaml").read_text()


def freeatm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freeatm.cli.main", *args], capture_output=True, text=True, cwd=ROOT
    )


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def edit_quickstart(tmp_path: Path, kind: str, edit) -> str:  # type: ignore[no-untyped-def]
    docs = list(yaml.safe_load_all(QUICKSTART))
    doc = next(d for d in docs if d["kind"] == kind)
    edit(doc["spec"])
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def test_examples_are_valid() -> None:
    out = freeatm("validate", "-f", "examples/quickstart.yaml", "-f", "examples/gpu-cluster.yaml")
    assert out.returncode == 0, out.stderr
    assert "8 resource(s) valid" in out.stdout


@pytest.mark.parametrize(
    ("kind", "edit", "path", "says"),
    [
        ("SyntheticDataset", lambda s: s.update(colour="red"), "spec.colour", "unknown field"),
        (
            "SyntheticDataset",
            lambda s: s["output"].update(uri="ftp://host/shapes"),
            "spec.output.uri",
            "ftp://",
        ),
        (
            "MaskPretrainJob",
            lambda s: s["training"].update(epochs=-1),
            "spec.training.epochs",
            "greater than or equal to 1",
        ),
        (
            "MaskPretrainJob",
            lambda s: s["dataset"].update(uri="file:///d"),
            "spec.dataset",
            "exactly one of ref",
        ),
        (
            "MaskPretrainJob",
            lambda s: s["output"].update(secretAccessKey="abc123"),
            "spec",
            "spec.output.secretAccessKey",
        ),
    ],
)
def test_each_bad_input_exits_1_and_names_the_path(
    tmp_path: Path, kind: str, edit, path: str, says: str
) -> None:  # type: ignore[no-untyped-def]
    out = freeatm("validate", "-f", edit_quickstart(tmp_path, kind, edit))
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr
    assert f": {path}: " in lines[0] and says in lines[0], lines[0]
    assert "q.yaml" in lines[0] and f"{kind}/" in lines[0]


def test_cycle_is_an_error_naming_the_cycle(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        apiVersion: freeatm.io/v1alpha1
        kind: SyntheticDataset
        metadata: {name: a}
        spec:
          model: {uri: "toy://shapes"}
          prompts: {preset: shapes}
          dependsOn: [{kind: MaskPretrainJob, name: b}]
          output: {uri: "file:///tmp/a"}
        ---
        apiVersion: freeatm.io/v1alpha1
        kind: MaskPretrainJob
        metadata: {name: b}
        spec:
          dataset: {ref: a}
          output: {uri: "file:///tmp/b"}
        """,
    )
    out = freeatm("validate", "-f", path)
    assert out.returncode == 1
    assert (
        "dependency cycle" in out.stderr
        and "SyntheticDataset/a" in out.stderr
        and "MaskPretrainJob/b" in out.stderr
    )


def test_missing_reference_is_a_warning_wrong_kind_an_error(tmp_path: Path) -> None:
    missing = write(
        tmp_path,
        """
        apiVersion: freeatm.io/v1alpha1
        kind: MaskPretrainJob
        metadata: {name: b}
        spec:
          dataset: {ref: elsewhere}
          output: {uri: "file:///tmp/b"}
        """,
    )
    out = freeatm("validate", "-f", missing)
    assert out.returncode == 0 and "warning" in out.stderr and "spec.dataset.ref" in out.stderr
    docs = list(yaml.safe_load_all(QUICKSTART))
    docs[1]["spec"]["dataset"]["ref"] = "shapes-freeatm"  # a MaskPretrainJob, not a SyntheticDataset
    wrong = tmp_path / "w.yaml"
    wrong.write_text(yaml.safe_dump_all(docs))
    out = freeatm("validate", "-f", str(wrong))
    assert out.returncode == 1 and "spec.dataset.ref" in out.stderr and "MaskPretrainJob" in out.stderr


def test_other_kinds_are_skipped_but_a_misspelt_freeatm_kind_is_an_error(tmp_path: Path) -> None:
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s3}\nstringData: {AWS_REGION: x}\n"
    assert freeatm("validate", "-f", write(tmp_path, secret)).returncode == 0
    typo = QUICKSTART.replace("kind: EvalJob", "kind: EvalJobs")
    out = freeatm("validate", "-f", write(tmp_path, typo))
    assert out.returncode == 1 and "apiVersion/kind" in out.stderr


def test_crds_command_writes_what_is_committed(tmp_path: Path) -> None:
    out = freeatm("crds", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    for f in (ROOT / "crds").glob("*.yaml"):
        assert (tmp_path / f.name).read_text() == f.read_text()
    printed = list(yaml.safe_load_all(freeatm("crds").stdout))
    assert {c["spec"]["names"]["shortNames"][0] for c in printed} == {"sds", "mpj", "evj"}


def test_what_the_api_server_would_refuse_is_refused_here(tmp_path: Path) -> None:
    """Each input the API server would reject in the Job gets one line naming the field."""
    path = edit_quickstart(
        tmp_path,
        "SyntheticDataset",
        lambda s: s.update(
            tolerations=[{"key": "gpu", "operator": "Exists", "value": "yes"}],
            nodeSelector={"bad key": "x"},
            queueName="q" * 64,
            resources={"requests": {"cpu": "lots"}},
            podTemplate={"spec": {"restartPolicy": "OnFailure"}},
        ),
    )
    out = freeatm("validate", "-f", path)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    for field, says in [
        ("spec.tolerations[0]", "operator Exists"),
        ("spec.nodeSelector", "'bad key' is not a valid label key"),
        ("spec.queueName", "kueue.x-k8s.io/queue-name"),
        ("spec.resources.requests", "cpu: 'lots' is not a quantity"),
        ("spec.podTemplate", "restartPolicy 'OnFailure'"),
    ]:
        assert any(field in line and says in line for line in text.splitlines()), (field, text)
