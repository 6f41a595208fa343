"""The container images (docker/): static checks, since no image can be built here. Names and tags agree with
the chart's values; the operator image has no torch; both install the versions constraints.txt pins."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
VALUES = yaml.safe_load((REPO / "helm" / "freeatm" / "values.yaml").read_text())
CHART = yaml.safe_load((REPO / "helm" / "freeatm" / "Chart.yaml").read_text())
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def dockerfile(name: str) -> str:
    return (DOCKER / f"Dockerfile.{name}").read_text()


def final_stage(text: str) -> str:
    return text[text.rindex("\nFROM ") :]


def test_final_stages_run_as_a_numeric_non_root_user():
    for name in ("operator", "runtime"):
        users = re.findall(r"^USER\s+(\S+)", final_stage(dockerfile(name)), re.M)
        assert users, name
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) > 0, (name, uid)


def test_operator_image_runs_as_the_chart_user():
    uid = re.findall(r"^USER\s+(\d+)", dockerfile("operator"), re.M)[-1]
    assert int(uid) == VALUES["operator"]["podSecurityContext"]["runAsUser"]


def test_copied_sources_exist():
    for name in ("operator", "runtime"):
        for src in re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", dockerfile(name), re.M):
            for part in src.split():
                assert (REPO / part).exists(), (name, part)
        ignore = (DOCKER / f"Dockerfile.{name}.dockerignore").read_text()
        for part in ("pyproject.toml", "README.md", "api/", "operator/", "runtime/", "cli/"):
            assert f"!{part}" in ignore, (name, part)


def test_operator_image_installs_no_torch():
    text = dockerfile("operator")
    assert '".[operator]"' in text
    assert not re.search(r"pip install[^\n]*torch", text)
    extra = " ".join(PROJECT["optional-dependencies"]["operator"])
    assert not re.search(r"\btorch(vision)?\b(?!x)", extra), extra
    # torchx (the DDP conventions) does not pull torch in either.
    base = [r for r in metadata.requires("torchx") or [] if "extra ==" not in r]
    assert not [r for r in base if re.match(r"torch\b(?!x)", r)], base


def test_images_install_with_the_projects_constraints():
    for name, extras in (("operator", "operator"), ("runtime", "runtime,detection")):
        text = dockerfile(name)
        installs = re.findall(r"pip install[^\n]*", text)
        assert installs and all("-c constraints.txt" in line for line in installs), (name, installs)
        assert f'".[{extras}]"' in text, name
    assert "freeatm-runtime" in final_stage(dockerfile("runtime"))


def test_build_commands_match_the_chart_values():
    for name in ("operator", "runtime"):
        repository = VALUES[name]["image"]["repository"]
        tag = CHART["appVersion"]
        assert f"docker build -f docker/Dockerfile.{name} -t {repository}:{tag} ." in dockerfile(name)
    install = (REPO / "docs" / "install.md").read_text()
    for name in ("operator", "runtime"):
        assert f"docker/Dockerfile.{name}" in install
