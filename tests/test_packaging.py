"""Import boundaries of the distribution (DESIGN §3) and the linter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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
    import tomllib

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
