"""Import boundaries of the distribution (docs/architecture.md#layout) and the linter."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def python(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)


def test_operator_imports_without_torch() -> None:
    out = python("import sys, freeatm.operator, freeatm.api; assert 'torch' not in sys.modules, 'torch'")
    assert out.returncode == 0, out.stderr


def test_runtime_imports_without_kopf() -> None:
    out = python("import sys, freeatm.runtime, freeatm.runtime.cli; assert 'kopf' not in sys.modules, 'kopf'")
    assert out.returncode == 0, out.stderr


def test_operator_folder_never_shadows_the_standard_library() -> None:
    # operator/ has no __init__.py: with the repository root first on sys.path (Python >= 3.12 no longer
    # preloads the stdlib module) the search still ends at the standard library's operator.py.
    code = (
        "import sys; sys.modules.pop('operator', None); sys.path.insert(0, sys.argv[1]); import operator;"
        "import freeatm.operator.workload as w; print(operator.__file__); print(w.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    stdlib, ours = out.stdout.split()
    assert stdlib.endswith("operator.py") and Path(stdlib).parent != ROOT
    assert Path(ours).parent == ROOT / "operator"
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_every_subpackage_is_in_the_distribution() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for name, folder in mapping.items():
        found.add(name)
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([name, *rel]))
    assert found <= declared, f"add to [tool.setuptools] packages: {sorted(found - declared)}"


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    out = subprocess.run([ruff, "check", "."], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def requirements() -> dict[str, list[Requirement]]:
    """The distribution's requirements by extra ("" for the base ones), as pyproject.toml declares them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {"": project["dependencies"], **project["optional-dependencies"]}
    return {extra: [Requirement(r) for r in reqs] for extra, reqs in declared.items()}


def test_exact_versions_live_in_the_constraints_file_only() -> None:
    declared = {r.name: r for reqs in requirements().values() for r in reqs}
    assert not [str(r) for r in declared.values() if any(s.operator == "==" for s in r.specifier)]
    pins = [
        Requirement(line)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pins
    for pin in pins:
        (version,) = [s.version for s in pin.specifier if s.operator == "=="]
        assert pin.name in declared, f"constraints.txt pins {pin.name}, which no extra requires"
        assert declared[pin.name].specifier.contains(version), f"{pin} is outside {declared[pin.name]}"


def test_test_and_detection_libraries_are_not_runtime_requirements() -> None:
    names = {extra: {r.name for r in reqs} for extra, reqs in requirements().items()}
    assert "torchmetrics" in names["dev"] and "pycocotools" in names["detection"]
    assert not {"torchmetrics", "pycocotools"} & (names[""] | names["runtime"] | names["operator"])
    shipped = [p for folder in ("api", "cli", "operator", "runtime") for p in (ROOT / folder).rglob("*.py")]
    assert not [p for p in shipped if re.search(r"^\s*(from|import) torchmetrics\b", p.read_text(), re.M)]


def test_every_command_line_parses_its_arguments_with_argparse() -> None:
    # One framework: argparse returns control to main(), which returns the exit code (the pod contract).
    imports = re.compile(r"^\s*(from|import) (typer|click)\b", re.M)
    sources = [
        p
        for folder in ("api", "cli", "operator", "runtime", "benchmarks")
        for p in (ROOT / folder).rglob("*.py")
    ]
    assert not [p for p in sources if imports.search(p.read_text())]
    assert not {"typer", "click"} & {r.name for reqs in requirements().values() for r in reqs}


def test_the_wheel_builds_quietly_and_ships_the_toy_weights(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "README.md", "api", "cli", "operator", "runtime"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", "dist", "."],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "would be ignored" not in out.stdout + out.stderr, out.stdout + out.stderr
    (wheel,) = (tmp_path / "dist").glob("freeatm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    weights = {
        f"freeatm/runtime/toy/{p.relative_to(ROOT / 'runtime' / 'toy').as_posix()}"
        for model in ("weights", "weights-clutter")
        for p in (ROOT / "runtime" / "toy" / model).rglob("*")
        if p.is_file()
    }
    assert any("/weights-clutter/" in w for w in weights) and weights <= names, sorted(weights - names)
