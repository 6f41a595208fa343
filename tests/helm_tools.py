"""Test support for the chart and monitoring checks: find the tools, render the chart into kmock.

The tools come from `.ci/helm-setup.sh`, which writes their paths to ~/.cache/freeatm/tools.env
($FREEATM_TOOLS_ENV): FREEATM_HELM_PYTHON (a Python >= 3.12 with helm-sdkpy) and FREEATM_PROMTOOL. Environment
variables of the same names win. A missing tool fails the test in CI (CI=true) and skips it elsewhere.

Rendering goes through the Helm library, as `helm install` would: helm-sdkpy installs the chart with
HELM_DRIVER=memory into a kmock KubernetesEmulator served on loopback and returns the release's manifest.
helm-sdkpy needs Python >= 3.12 and the project runs 3.11, so the Helm calls run in a subprocess of that
interpreter (`_DRIVER` below) while kmock runs in this process, one emulator per install.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "freeatm"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def tools_env() -> dict[str, str]:
    """FREEATM_HELM_PYTHON / FREEATM_PROMTOOL from the environment, else from the file helm-setup.sh wrote."""
    found: dict[str, str] = {}
    env_file = Path(os.environ.get("FREEATM_TOOLS_ENV", Path.home() / ".cache" / "freeatm" / "tools.env"))
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip():
                found[key.strip()] = value.strip()
    for key in ("FREEATM_HELM_PYTHON", "FREEATM_PROMTOOL"):
        if os.environ.get(key):
            found[key] = os.environ[key]
    return found


def _missing(what: str) -> None:
    message = f"{what} is missing: run `bash .ci/helm-setup.sh` (CI runs it from .ci/setup-tools.sh)"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def helm_python() -> str:
    """The Python >= 3.12 interpreter with helm-sdkpy (fails in CI, skips locally when absent)."""
    python = tools_env().get("FREEATM_HELM_PYTHON", "")
    if not python or not Path(python).exists():
        _missing("the Python >= 3.12 venv with helm-sdkpy")
    probe = subprocess.run([python, "-I", "-c", "import helm_sdkpy"], capture_output=True, text=True, cwd="/")
    if probe.returncode:
        _missing(f"helm-sdkpy in {python} ({probe.stderr.strip().splitlines()[-1:]})")
    return python


def promtool() -> str:
    """promtool from Debian's prometheus package (fails in CI, skips locally when absent)."""
    path = tools_env().get("FREEATM_PROMTOOL") or shutil.which("promtool") or ""
    if not path or not Path(path).exists():
        _missing("promtool")
    return path


# --- kmock: a Kubernetes API emulator per Helm install ---------------------------------------------------

# Kinds of the Prometheus Operator that kmock's bundled (built-in only) resource list lacks.
EXTRA_RESOURCES = {
    "monitoring.coreos.com/v1/servicemonitors": ("ServiceMonitor", True),
    "monitoring.coreos.com/v1/podmonitors": ("PodMonitor", True),
    "monitoring.coreos.com/v1/prometheusrules": ("PrometheusRule", True),
}
SERVER_VERSION = {"major": "1", "minor": "29", "gitVersion": "v1.29.0"}
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


def _emulator_class() -> type:
    import kmock

    class Emulator(kmock.KubernetesEmulator):
        """kmock 0.8 answers /api/v1 discovery with groupVersion "/v1"; client-go (Helm) then maps no core kind."""

        async def _serve_version(self, request: Any) -> Any:
            doc = await super()._serve_version(request)
            doc["groupVersion"] = doc["groupVersion"].lstrip("/")
            return doc

        async def _serve_server_version(self, request: Any) -> Any:
            """Kubernetes 1.29: the version the rendered manifests are validated against."""
            return {**await super()._serve_server_version(request), **SERVER_VERSION}

    return Emulator


class KmockClusters:
    """Kubernetes API emulators on loopback, served from a background event loop; one kubeconfig each."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kmock", daemon=True)
        self.stack = contextlib.AsyncExitStack()
        self.emulators: list[Any] = []

    def __enter__(self) -> KmockClusters:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.stack.aclose(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def new(self) -> tuple[Any, Path]:
        """Start one emulator; return it and the path of a kubeconfig that points to it."""
        return asyncio.run_coroutine_threadsafe(self._new(), self.loop).result(30)

    async def _new(self) -> tuple[Any, Path]:
        import kmock

        emulator = await self.stack.enter_async_context(_emulator_class()())
        server = await self.stack.enter_async_context(kmock.Server(emulator))
        with warnings.catch_warnings():  # kmock 0.8 reads its bundled list with a deprecated importlib call
            warnings.simplefilter("ignore", DeprecationWarning)
            emulator.resources.load_bundled()
        for name, (kind, namespaced) in EXTRA_RESOURCES.items():
            emulator.resources[name] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=VERBS)
        self.emulators.append(emulator)
        url = str(server.url).rstrip("/")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": url}}],
            "users": [{"name": "kmock", "user": {"token": "kmock"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
            "current-context": "kmock",
        }
        path = self.workdir / f"kubeconfig-{len(self.emulators)}.yaml"
        path.write_text(yaml.safe_dump(config))
        return emulator, path

    def objects(self, emulator: Any) -> list[tuple[str, str | None, str]]:
        """(resource, namespace, name) of every live object the emulator holds."""

        async def collect() -> list[tuple[str, str | None, str]]:
            out = []
            for key in list(emulator.objects):
                resource, namespace, name = key
                if not emulator.objects[key].deleted:
                    group = f"{resource.group}/" if resource.group else ""
                    out.append((f"{group}{resource.version}/{resource.plural}", namespace, name))
            return out

        return asyncio.run_coroutine_threadsafe(collect(), self.loop).result(30)


# --- the Helm driver, run by the Python >= 3.12 interpreter ------------------------------------------------

_DRIVER = r"""
import asyncio, json, os, sys
import helm_sdkpy

async def one(action):
    try:
        cfg = helm_sdkpy.Configuration(namespace=action.get("namespace", "default"), kubeconfig=action.get("kubeconfig"))
        if action["op"] == "lint":
            return {"ok": True, "result": await helm_sdkpy.Lint(cfg).run(action["chart"])}
        if action["op"] == "install":
            result = await helm_sdkpy.Install(cfg).run(
                action["release"], action["chart"], values=action.get("values") or None,
                wait=False, timeout=120, server_side_apply=False,
            )
            return {"ok": True, "manifest": result.get("manifest", ""), "status": result.get("info", {}).get("status")}
        return {"ok": False, "error": "unknown op " + action["op"]}
    except helm_sdkpy.HelmError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}

async def main():
    actions = json.load(sys.stdin)
    results = [await one(a) for a in actions]
    sys.stdout.write(json.dumps(results))

asyncio.run(main())
"""


def run_helm(actions: list[dict[str, Any]], python: str | None = None) -> list[dict[str, Any]]:
    """Run Helm actions ({"op": "lint"|"install", …}) through helm-sdkpy; one result dict per action."""
    python = python or helm_python()
    env = {**os.environ, "HELM_DRIVER": "memory"}
    with tempfile.TemporaryDirectory(prefix="freeatm-helm-") as home:
        # Helm's cache/config/data dirs: keep them out of the user's home and the repo.
        env.update(
            HELM_CACHE_HOME=f"{home}/cache", HELM_CONFIG_HOME=f"{home}/config", HELM_DATA_HOME=f"{home}/data"
        )
        proc = subprocess.run(
            [python, "-I", "-c", _DRIVER],
            input=json.dumps(actions),
            capture_output=True,
            text=True,
            env=env,
            cwd=home,
            timeout=300,
        )
    if proc.returncode:
        raise RuntimeError(f"helm driver failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def manifest_docs(manifest: str) -> list[dict[str, Any]]:
    """The objects of a rendered manifest (empty documents dropped)."""
    return [d for d in yaml.safe_load_all(manifest) if d]


@contextlib.contextmanager
def kmock_clusters() -> Iterator[KmockClusters]:
    with tempfile.TemporaryDirectory(prefix="freeatm-kmock-") as tmp, KmockClusters(Path(tmp)) as clusters:
        yield clusters


def render(
    scenarios: dict[str, dict[str, Any]], namespace: str = "freeatm", release: str = "freeatm"
) -> dict[str, dict[str, Any]]:
    """Install the chart once per scenario (name → values), each into a fresh kmock; plus a lint.

    Returns name → {"ok", "error" | "docs" (the rendered objects), "objects" (what reached the emulator)}, and
    "__lint__" → the lint result.
    """
    python = helm_python()
    with kmock_clusters() as clusters:
        targets = {name: clusters.new() for name in scenarios}
        actions: list[dict[str, Any]] = [{"op": "lint", "chart": str(CHART)}]
        for name, values in scenarios.items():
            actions.append(
                {
                    "op": "install",
                    "chart": str(CHART),
                    "release": release,
                    "namespace": namespace,
                    "values": values,
                    "kubeconfig": str(targets[name][1]),
                }
            )
        results = run_helm(actions, python)
        out: dict[str, dict[str, Any]] = {"__lint__": results[0]}
        for (name, (emulator, _)), result in zip(targets.items(), results[1:], strict=True):
            if result["ok"]:
                result["docs"] = manifest_docs(result["manifest"])
                result["objects"] = clusters.objects(emulator)
            out[name] = result
    return out
