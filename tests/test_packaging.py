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
    # From the repository root (where ./operator exists) `import operator` must still be the stdlib module.
    out = python("import operator, freeatm.operator as o; print(operator.__file__); print(o.__file__)")
    assert out.returncode == 0, out.stderr
    stdlib, ours = out.stdout.split()
    assert (
        Path(stdlib).parent != ROOT / "operator"
        and "site-packages" not in stdlib
        and stdlib.endswith("operator.py")
    )
    assert Path(ours).parent == ROOT / "operator"


def test_every_subpackage_is_in_the_distribution() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([name, *rel]))
    assert found <= declared, f"add to [tool.setuptools] packages: {sorted(found - declared)}"


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    out = subprocess.run([ruff, "check", "."], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
