"""Hostile inputs to `freeatm validate`, `render` and `run`: each exits 1 (the documented code of invalid input)
with one error line naming the file, the resource and the field (or the line of a file that is not YAML), in
bounded time and memory, and never with a traceback.

Each case runs in a forked child whose address space may grow by MEMORY_BUDGET at most and which is killed
after SECONDS: a regression that expands an alias bomb or loops fails its case instead of eating the machine.
"""

from __future__ import annotations

import contextlib
import copy
import io
import multiprocessing
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import freeatm.cli.local_run  # noqa: F401  imported once here, not by every forked case (the commands import
import freeatm.cli.report  # noqa: F401  them when they run)
import freeatm.operator.workload  # noqa: F401
from freeatm.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = (ROOT / "examples" / "quickstart.yaml").read_text()
DOCS = [d for d in yaml.safe_load_all(QUICKSTART) if d]
INVALID_INPUT = 1  # README: `freeatm validate` exits 1 on errors; `render` and `run` validate the same way
SDS, MPJ, EVJ = "SyntheticDataset/shapes", "MaskPretrainJob/shapes-baseline", "EvalJob/shapes-eval"
SECRET = "AKIAIOSFODNN7EXAMPLE"
SECONDS = 20  # per case, the three commands together
MEMORY_BUDGET = 1 << 30  # bytes a case may add to the test process's address space


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    resource: str  # Kind/name, "document N", or "-" when the file as a whole is refused
    field: str  # field path, or the line the YAML error is on
    says: str = ""


def text(case_id: str, old: str, new: str, resource: str, field: str, says: str = "", count: int = 1) -> Case:
    """The quickstart with `old` replaced by `new`."""
    assert old in QUICKSTART, old
    return Case(case_id, QUICKSTART.replace(old, new, count).encode(), resource, field, says)


def edit(
    case_id: str, kind: str, change: Callable[[dict[str, Any]], Any], field: str, says: str = ""
) -> Case:
    """The quickstart with the first document of `kind` changed by `change(doc)`."""
    docs = copy.deepcopy(DOCS)
    index = next(i for i, d in enumerate(docs) if d["kind"] == kind)
    change(docs[index])
    name = docs[index]["metadata"].get("name") if isinstance(docs[index]["metadata"], dict) else None
    label = f"{kind}/{name}" if isinstance(name, str) else f"document {index + 1}"
    return Case(case_id, yaml.safe_dump_all(docs, sort_keys=False).encode(), label, field, says)


def spec(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set spec.<path> (dotted) to `value`."""

    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        here = doc["spec"]
        for p in parents:
            here = here.setdefault(p, {})
        here[last] = value

    return change


def raw(case_id: str, data: bytes, field: str, says: str, resource: str = "-") -> Case:
    return Case(case_id, data, resource, field, says)


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(9)
)
POD_BOMB = QUICKSTART.replace(
    "  workers: 2\n",
    "  workers: 2\n  podTemplate:\n    metadata:\n      labels: {}\n    spec:\n"
    + "".join("      " + line + "\n" for line in BOMB.splitlines()),
)
META_BOMB = QUICKSTART.replace(
    "metadata:\n  name: shapes\n",
    "metadata:\n  name: shapes\n  x:\n" + "".join("    " + line + "\n" for line in BOMB.splitlines()),
    1,
)
_first = QUICKSTART.index("kind: SyntheticDataset")

CASES = [
    # --- files that are not YAML freeatm can read
    raw("empty file", b"", "-", "holds no resources"),
    raw("only comments", b"# nothing\n", "-", "holds no resources"),
    raw("only document markers", b"---\n---\n...\n", "-", "holds no resources"),
    raw(
        "non-UTF-8 byte",
        QUICKSTART.replace("toy://shapes", "toy://shap\udce9s", 1).encode(errors="surrogateescape"),
        "line 16",
        "byte 0xe9 is not UTF-8",
    ),  # fmt: skip
    raw("UTF-16 with BOM", QUICKSTART.encode("utf-16"), "-", "UTF-16"),
    raw("UTF-32 with BOM", QUICKSTART.encode("utf-32"), "-", "UTF-32"),
    raw("Latin-1 file", "metadata: {name: café}\n".encode("latin-1"), "line 1", "not UTF-8"),
    raw("NUL byte", QUICKSTART.replace("steps: 20", "steps: 2\x000", 1).encode(), "line 18", "#x0000"),
    raw("control character", b"kind: \x07\n", "line 1", "#x0007"),
    raw("tab indentation", b"kind: EvalJob\nspec:\n\t- a\n", "line 3", "cannot start any token"),
    raw("unclosed flow sequence", b"spec: {images: [1, 2\n", "line 2", "expected"),
    raw("unclosed quote", b'kind: "EvalJob\n', "line 2", "end of stream"),
    raw("bad indentation", b"kind: EvalJob\n  spec: 1\n", "line 2", "mapping values are not allowed"),
    raw("alias bomb", BOMB.encode(), "line 2", "alias *a is not allowed"),
    raw("alias bomb in podTemplate", POD_BOMB.encode(), "line 30", "alias *a is not allowed"),
    raw("alias bomb in metadata", META_BOMB.encode(), "line 17", "alias *a is not allowed"),
    raw(
        "one harmless alias",
        QUICKSTART.replace("{ref: shapes}", "&d {ref: shapes}", 1)
        .replace(
            "{ref: shapes}\n  method: {framework: contrastive, useMasks: true}",
            "*d\n  method: {framework: contrastive, useMasks: true}",
        )
        .encode(),
        "line 43",
        "alias *d is not allowed",
    ),  # fmt: skip
    raw("merge key from an alias", b"base: &b {x: 1}\nkind: {<<: *b}\n", "line 2", "alias *b"),
    raw("deep flow nesting", b"spec: " + b"[" * 5000 + b"]" * 5000 + b"\n", "line 1", "nesting deeper"),
    raw(
        "deep block nesting",
        "".join(" " * i + f"k{i}:\n" for i in range(200)).encode(),
        "line",
        "nesting deeper",
    ),
    raw("file over 1 MiB", b"# " + b"x" * (1 << 20) + b"\n", "-", "larger than 1024 KiB"),
    raw("python object tag", b"kind: !!python/object/apply:os.system [ls]\n", "line 1", "constructor"),
    raw("binary tag", b"kind: !!binary aGVsbG8=\n", "line 1", "no JSON form"),
    raw("set tag", b"kind: !!set {a, b}\n", "line 1", "no JSON form"),
    raw("unknown local tag", b"kind: !Secret x\n", "line 1", "constructor"),
    raw("integer of 5000 digits", b"spec: {seed: " + b"9" * 5000 + b"}\n", "line 1", "out of range"),
    raw("complex key", b"? [a, b]\n: 1\n", "line 1", "not a string"),
    raw("integer key", b"1: a\n", "line 1", "not a string"),
    raw("null key", b"~: a\n", "line 1", "not a string"),
    text("duplicate key", "  workers: 2\n", "  workers: 2\n  workers: 1\n", "-", "line 25", "written twice"),
    text(
        "duplicate metadata.name",
        "  name: shapes\n",
        "  name: shapes\n  name: other\n",
        "-",
        "line 14",
        "twice",
    ),
    # --- documents that are not freeatm resources
    raw("a list document", b"- a\n- b\n", "-", "a document must be a mapping", "document 1"),
    raw("a scalar document", b"just text\n", "-", "a document must be a mapping", "document 1"),
    raw(
        "kind as a list",
        QUICKSTART.replace("kind: EvalJob", "kind: [EvalJob]").encode(),
        "apiVersion/kind",
        "not a freeatm resource",
        "document 4",
    ),  # fmt: skip
    raw(
        "kind as a mapping",
        QUICKSTART.replace("kind: EvalJob", "kind: {a: 1}").encode(),
        "apiVersion/kind",
        "not a freeatm resource",
        "document 4",
    ),  # fmt: skip
    raw(
        "no apiVersion",
        b"kind: EvalJob\nmetadata: {name: e}\nspec: {}\n",
        "apiVersion/kind",
        "freeatm.io",
        "EvalJob/e",
    ),
    text(
        "misspelt group",
        "apiVersion: freeatm.io/v1alpha1\nkind: EvalJob",
        "apiVersion: freatm.io/v1alpha1\nkind: EvalJob",
        EVJ,
        "apiVersion/kind",
        "freatm.io",
    ),  # fmt: skip
    text(
        "other project's group, freeatm kind",
        "apiVersion: freeatm.io/v1alpha1\nkind: EvalJob",
        "apiVersion: example.com/v1\nkind: EvalJob",
        EVJ,
        "apiVersion/kind",
    ),  # fmt: skip
    text(
        "wrong version",
        "apiVersion: freeatm.io/v1alpha1\nkind: EvalJob",
        "apiVersion: freeatm.io/v1\nkind: EvalJob",
        EVJ,
        "apiVersion/kind",
    ),  # fmt: skip
    text("misspelt kind", "kind: EvalJob", "kind: EvalJobs", "EvalJobs/shapes-eval", "apiVersion/kind"),
    edit("metadata as a list", "EvalJob", lambda d: d.update(metadata=["x"]), "metadata", "valid dictionary"),
    edit(
        "name as an integer",
        "EvalJob",
        lambda d: d["metadata"].update(name=7),
        "metadata.name",
        "valid string",
    ),
    edit(
        "name not a DNS label",
        "EvalJob",
        lambda d: d["metadata"].update(name="Shapes_Eval"),
        "metadata.name",
        "DNS",
    ),
    edit("spec as a string", "EvalJob", lambda d: d.update(spec="x"), "spec", "valid dictionary"),
    text(
        "same kind and name twice",
        "name: shapes-freeatm",
        "name: shapes-baseline",
        MPJ,
        "metadata.name",
        "duplicate",
    ),
    # --- types the CRD schema would refuse (no coercion)
    edit(
        "images as a string",
        "SyntheticDataset",
        spec("generation.images", "8"),
        "spec.generation.images",
        "not the string '8'",
    ),  # fmt: skip
    edit(
        "images as true",
        "SyntheticDataset",
        spec("generation.images", True),
        "spec.generation.images",
        "not the boolean true",
    ),  # fmt: skip
    edit(
        "images as 8.0",
        "SyntheticDataset",
        spec("generation.images", 8.0),
        "spec.generation.images",
        "integer",
    ),
    edit(
        "lr as a string", "MaskPretrainJob", spec("training.lr", "0.1"), "spec.training.lr", "not the string"
    ),
    edit(
        "useMasks as a string",
        "MaskPretrainJob",
        spec("method.useMasks", "yes"),
        "spec.method.useMasks",
        "valid boolean",
    ),  # fmt: skip
    edit(
        "useMasks as 1",
        "MaskPretrainJob",
        spec("method.useMasks", 1),
        "spec.method.useMasks",
        "valid boolean",
    ),
    edit("suspend as a string", "EvalJob", spec("suspend", "false"), "spec.suspend", "valid boolean"),
    edit("backbone as a number", "MaskPretrainJob", spec("backbone", 18), "spec.backbone", "Input should be"),
    edit(
        "label as a number",
        "EvalJob",
        lambda d: d["spec"]["checkpoints"][0].update(label=1),
        "spec.checkpoints[0].label",
        "valid string",
    ),  # fmt: skip
    edit(
        "nodeSelector value true",
        "EvalJob",
        spec("nodeSelector", {"gpu": True}),
        "spec.nodeSelector.gpu",
        "valid string",
    ),  # fmt: skip
    edit(
        "classes as a string",
        "SyntheticDataset",
        spec("prompts", {"classes": "cat"}),
        "spec.prompts.classes",
        "valid list",
    ),  # fmt: skip
    edit(
        "timesteps of strings",
        "SyntheticDataset",
        spec("attention.timesteps", ["0", "1"]),
        "spec.attention.timesteps",
        "valid number",
    ),  # fmt: skip
    edit(
        "annotation value a number",
        "EvalJob",
        lambda d: d["metadata"].update(annotations={"a": 1}),
        "metadata.annotations.a",
        "valid string",
    ),  # fmt: skip
    text(
        "NaN inside podTemplate",
        "  workers: 2\n",
        "  workers: 2\n  podTemplate: {spec: {x: .nan}}\n",
        SDS,
        "spec.podTemplate",
        "podTemplate.spec.x: NaN",
    ),
    text(
        "guidanceScale NaN",
        "guidanceScale: 1.0",
        "guidanceScale: .nan",
        SDS,
        "spec.generation.guidanceScale",
        "finite",
    ),
    text("lr infinite", "lr: 0.016", "lr: .inf", MPJ, "spec.training.lr", "finite"),
    text("threshold -inf", "value: 0.5}", "value: -.inf}", SDS, "spec.attention.threshold.value", "finite"),
    text(
        "huge training seed",
        "checkpointEvery: 80",
        "checkpointEvery: 80, seed: 99999999999999999999",
        MPJ,
        "spec.training.seed",
        "less than or equal",
    ),  # fmt: skip
    text(
        "huge generation seed",
        "seed: 0",
        "seed: 18446744073709551616",
        SDS,
        "spec.generation.seed",
        "less than",
    ),
    text("negative seed", "seed: 0", "seed: -1", SDS, "spec.generation.seed", "greater than"),
    text(
        "huge checkpointEvery",
        "checkpointEvery: 80",
        "checkpointEvery: 9223372036854775808",
        MPJ,
        "spec.training.checkpointEvery",
        "less than",
    ),  # fmt: skip
    # --- URIs that escape their root, mean another place, or name nothing
    text(
        "pvc path escapes its claim",
        "file:///var/freeatm/shapes-eval",
        "pvc://claim/../../etc",
        EVJ,
        "spec.output.uri",
        "'..'",
    ),  # fmt: skip
    text(
        "percent-encoded ..",
        "file:///var/freeatm/shapes-eval",
        "pvc://claim/a/%2e%2e/%2E%2E/etc",
        EVJ,
        "spec.output.uri",
        "'..'",
    ),  # fmt: skip
    text(
        "s3 prefix escapes",
        "file:///var/freeatm/shapes-eval",
        "s3://bucket/../other",
        EVJ,
        "spec.output.uri",
        "..",
    ),
    text(
        "file path with ..",
        "file:///var/freeatm/shapes-eval",
        "file:///var/../etc",
        EVJ,
        "spec.output.uri",
        "..",
    ),
    text(
        "file:// with a host",
        "file:///var/freeatm/shapes-eval",
        "file://relative/dir",
        EVJ,
        "spec.output.uri",
        "host part",
    ),  # fmt: skip
    text(
        "file:// localhost",
        "file:///var/freeatm/shapes-eval",
        "file://localhost/x",
        EVJ,
        "spec.output.uri",
        "host",
    ),
    text(
        "relative file path",
        "file:///var/freeatm/shapes-eval",
        "file:relative",
        EVJ,
        "spec.output.uri",
        "absolute",
    ),
    text(
        "pvc claim not a name",
        "file:///var/freeatm/shapes-eval",
        "pvc://Claim_1/x",
        EVJ,
        "spec.output.uri",
        "PersistentVolumeClaim",
    ),  # fmt: skip
    text(
        "URI with a newline",
        "file:///var/freeatm/shapes-eval",
        "file:///var/x\\ny",
        EVJ,
        "spec.output.uri",
        "control characters",
    ),  # fmt: skip
    text(
        "URI fragment", "file:///var/freeatm/shapes-eval", "s3://b/x#frag", EVJ, "spec.output.uri", "fragment"
    ),
    text("unknown toy model", 'toy://shapes"', 'toy://cats"', SDS, "spec.model.uri", "not a built-in model"),
    text(
        "toy model with a path", 'toy://shapes"', 'toy://shapes/x"', SDS, "spec.model.uri", "built-in model"
    ),
    text(
        "unknown ShapesBench split",
        "toy://shapesbench/val",
        "toy://shapesbench/anything",
        EVJ,
        "spec.benchmarks[0].dataset.uri",
        "not a ShapesBench split",
    ),  # fmt: skip
    text(
        "other toy dataset",
        "toy://shapesbench/val",
        "toy://imagenet/val",
        EVJ,
        "spec.benchmarks[0].dataset.uri",
        "ShapesBench",
    ),  # fmt: skip
    text(
        "unknown ShapesBench variant",
        "toy://shapesbench/val",
        "toy://shapesbench/val?variant=noise",
        EVJ,
        "spec.benchmarks[0].dataset.uri",
        "variant 'noise'",
    ),  # fmt: skip
    text(
        "ShapesBench images not a number",
        "toy://shapesbench/val",
        "toy://shapesbench/val?images=many",
        EVJ,
        "spec.benchmarks[0].dataset.uri",
        "images='many'",
    ),  # fmt: skip
    text(
        "unknown ShapesBench parameter",
        "toy://shapesbench/val",
        "toy://shapesbench/val?colour=red",
        EVJ,
        "spec.benchmarks[0].dataset.uri",
        "takes only the parameters",
    ),  # fmt: skip
    text(
        "random:// unknown backbone",
        "random://vit_test_patch4",
        "random://vit_huge",
        EVJ,
        "spec.checkpoints[2].uri",
        "not a backbone",
    ),  # fmt: skip
    text(
        "random:// bad imageSize",
        "imageSize=32",
        "imageSize=big",
        EVJ,
        "spec.checkpoints[2].uri",
        "imageSize='big'",
    ),
    # --- one location for two resources
    text(
        "two outputs in one place",
        "file:///var/freeatm/shapes-eval",
        "file:///var/freeatm/shapes",
        EVJ,
        "spec.output.uri",
        "overlaps the output of SyntheticDataset/shapes",
    ),  # fmt: skip
    text(
        "an output inside another",
        "file:///var/freeatm/shapes-eval",
        "file:///var/freeatm/shapes/eval",
        EVJ,
        "spec.output.uri",
        "overlaps",
    ),  # fmt: skip
    text(
        "same output written differently",
        "file:///var/freeatm/shapes-eval",
        "file:///var//freeatm/./shapes/",
        EVJ,
        "spec.output.uri",
        "overlaps",
    ),  # fmt: skip
    # --- credentials that would be stored in specs, Jobs and logs
    edit(
        "secret in an annotation key",
        "EvalJob",
        lambda d: d["metadata"].update(annotations={"aws-secret-access-key": "x"}),
        "metadata.annotations",
        "looks like a credential",
    ),  # fmt: skip
    edit(
        "access key in an annotation value",
        "EvalJob",
        lambda d: d["metadata"].update(annotations={"note": SECRET}),
        "metadata.annotations",
        "'note' looks like a credential",
    ),  # fmt: skip
    edit(
        "token in a label key",
        "EvalJob",
        lambda d: d["metadata"].update(labels={"example.com/token": "x"}),
        "metadata.labels",
        "credential",
    ),  # fmt: skip
    text(
        "signed URL query",
        "file:///var/freeatm/shapes-eval",
        "s3://b/x?X-Amz-Signature=0123abcd",
        EVJ,
        "spec.output.uri",
        "has a query",
    ),  # fmt: skip
    text(
        "user and password in a URI",
        "file:///var/freeatm/shapes-eval",
        "s3://me:hunter2@bucket/x",
        EVJ,
        "spec.output.uri",
        "carries credentials",
    ),  # fmt: skip
    text(
        "access key in a URI",
        "file:///var/freeatm/shapes-eval",
        f"s3://bucket/{SECRET}/x",
        EVJ,
        "spec",
        "found at spec.output.uri",
    ),
    edit(
        "HF_TOKEN in podTemplate env",
        "EvalJob",
        spec(
            "podTemplate",
            {"spec": {"containers": [{"name": "w", "env": [{"name": "HF_TOKEN", "value": "x"}]}]}},
        ),
        "spec",
        "spec.podTemplate.spec.containers[0].env[0].value",
    ),  # fmt: skip
    edit(
        "access key anywhere in podTemplate",
        "EvalJob",
        spec("podTemplate", {"spec": {"containers": [{"name": "w", "args": [SECRET]}]}}),
        "spec",
        "spec.podTemplate.spec.containers[0].args[0]",
    ),  # fmt: skip
    edit(
        "password key in the spec",
        "EvalJob",
        lambda d: d["spec"]["output"].update(dbPassword="x"),
        "spec",
        "spec.output.dbPassword",
    ),  # fmt: skip
]


def test_the_table_is_broad() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


def _address_space() -> int:
    return int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024  # type: ignore[index]


def bounded(work: Callable[[], Any]) -> Any:
    """work() in a forked child limited to SECONDS and MEMORY_BUDGET; its result, or a test failure saying
    which bound it broke (an exception in the child, MemoryError included, fails the test too)."""
    fork = multiprocessing.get_context("fork")
    receive, send = fork.Pipe(duplex=False)

    def child() -> None:
        limit = _address_space() + MEMORY_BUDGET
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            send.send((True, work()))
        except BaseException as e:
            send.send((False, f"{type(e).__name__}: {e}"))

    process = fork.Process(target=child, daemon=True)
    process.start()
    try:
        if not receive.poll(SECONDS):
            pytest.fail(f"no result in {SECONDS} s: the case hangs")
        ok, result = receive.recv()
    except EOFError:
        pytest.fail(f"the case's process died (exit {process.join(5) or process.exitcode})")
    finally:
        process.kill()
        process.join()
    if not ok:
        pytest.fail(f"the case failed in its process: {result}")
    return result


def test_a_case_that_eats_memory_fails_instead_of_eating_the_machine() -> None:
    with pytest.raises(pytest.fail.Exception, match="MemoryError"):
        bounded(lambda: len(bytearray(2 * MEMORY_BUDGET)))
    assert bounded(lambda: len(bytearray(MEMORY_BUDGET // 4))) == MEMORY_BUDGET // 4


def _invoke_all(path: Path, workdir: Path) -> list[tuple[str, object, str, str]]:
    """(command, exit code, stdout, stderr) of validate, render and run on `path`; an exception other than
    argparse's SystemExit escapes, and bounded() fails the case with it."""
    results: list[tuple[str, object, str, str]] = []
    for command in ("validate", "render", "run"):
        extra = ["--workdir", str(workdir)] if command == "run" else []
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main([command, "-f", str(path), *extra])
            except SystemExit as e:
                code = e.code
        results.append((command, code, stdout.getvalue(), stderr.getvalue()))
    return results


@pytest.mark.timeout(2 * SECONDS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_one_clear_error(tmp_path: Path, case: Case) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_bytes(case.data)
    for command, exit_code, stdout, stderr in bounded(lambda: _invoke_all(path, tmp_path / "work")):
        output = stdout + stderr
        assert exit_code == INVALID_INPUT, (command, output)
        assert "Traceback" not in output
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        wanted = f"error: {path}: {case.resource}: "
        assert any(line.startswith(wanted) and case.field in line and case.says in line for line in errors), (
            command,
            wanted,
            case.field,
            case.says,
            output,
        )
        assert SECRET not in output and "hunter2" not in output and "0123abcd" not in output, (
            "a credential was echoed"
        )
    assert not (tmp_path / "work").exists(), "local mode started on invalid input"
