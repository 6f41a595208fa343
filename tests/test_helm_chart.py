"""The Helm chart: lint, install into kmock through the Helm library, validate every rendered manifest, RBAC.

Needs `.ci/helm-setup.sh` (a Python >= 3.12 with helm-sdkpy): fails in CI when missing, skips elsewhere.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm_tools import CHART, render

RUNTIME_STATUS = ["syntheticdatasets/status", "maskpretrainjobs/status", "evaljobs/status"]
KINDS = ["syntheticdatasets", "maskpretrainjobs", "evaljobs"]
MONITORING_ON = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "podMonitor": {"enabled": True},
    },
    "prometheusRule": {"enabled": True},
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    },
    "dashboards": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "freeatm"}},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["a", "b"], **MONITORING_ON},
    "cluster-full": {
        **MONITORING_ON,
        "runtime": {
            "namespaces": ["ml", "research"],
            "image": {"digest": "sha256:" + "0" * 64},
            "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
        },
        "image": {"registry": "registry.example.com/mirror"},
        "operator": {
            "extraArgs": ["--verbose"],
            "extraEnv": [{"name": "X", "value": "1"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "system-cluster-critical",
            "imagePullSecrets": [{"name": "regcred"}],
            "podAnnotations": {"a": "b"},
        },
        "metrics_": None,
    },
    "minimal": {
        "crds": {"install": False},
        "rbac": {"create": False},
        "serviceAccount": {"create": False},
        "runtime": {"serviceAccount": {"create": False}},
        "metrics": {"service": {"enabled": False}},
        "dashboards": {"enabled": False},
    },
    "crds-not-kept": {"crds": {"keep": False}},
    "typo": {"watchNamespace": ["a"]},
    "bad-namespace": {"watchNamespaces": ["Not_A_Namespace"]},
    "servicemonitor-without-service": {
        "metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}
    },
}
SCENARIOS["cluster-full"].pop("metrics_")

# The values of the GitOps examples render too (examples/gitops/).
_GITOPS = CHART.parents[1] / "examples" / "gitops"
SCENARIOS["argocd-example"] = next(
    d["spec"]["source"]["helm"]["valuesObject"]
    for d in yaml.safe_load_all((_GITOPS / "argocd-application.yaml").read_text())
    if d["spec"]["source"].get("path") == "helm/freeatm"
)
SCENARIOS["flux-example"] = next(
    d["spec"]["values"]
    for d in yaml.safe_load_all((_GITOPS / "flux-kustomization.yaml").read_text())
    if d["kind"] == "HelmRelease"
)
FAILING = ("servicemonitor-without-service", "typo", "bad-namespace")


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    return render(SCENARIOS)


def docs_of(rendered: dict[str, dict[str, Any]], scenario: str) -> list[dict[str, Any]]:
    result = rendered[scenario]
    assert result["ok"], result.get("error")
    return result["docs"]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


# --- lint, install, schema --------------------------------------------------------------------------------


def test_lint_passes_without_warnings(rendered):
    lint = rendered["__lint__"]
    assert lint["ok"], lint.get("error")
    bad = [m for m in lint["result"]["Messages"] or [] if m["Severity"] >= 2]  # 1 info, 2 warning, 3 error
    assert not bad, f"helm lint: {bad} (the Helm library drops the text; an install shows the template error)"
    assert not lint["result"]["Errors"]


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s not in FAILING])
def test_install_into_kmock_creates_every_rendered_object(rendered, scenario):
    result = rendered[scenario]
    assert result["ok"], result.get("error")
    assert result["status"] == "deployed"
    keys = Counter((d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in result["docs"])
    assert max(keys.values()) == 1, f"duplicate objects: {[k for k, n in keys.items() if n > 1]}"
    assert len(result["objects"]) == len(result["docs"])


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s not in FAILING])
def test_every_rendered_manifest_passes_strict_schema_validation(rendered, scenario):
    """kubernetes-validate --strict -k 1.29 for built-in kinds (CRDs included); Prometheus Operator kinds have no
    bundled schema there and get a structural check instead."""
    import kubernetes_validate

    checked = 0
    for doc in docs_of(rendered, scenario):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            check_monitoring(doc)
            continue
        kubernetes_validate.validate(doc, "1.29", strict=True)
        checked += 1
    assert checked


def check_monitoring(doc: dict[str, Any]) -> None:
    spec = doc["spec"]
    allowed = {
        "ServiceMonitor": {"jobLabel", "namespaceSelector", "selector", "endpoints"},
        "PodMonitor": {"namespaceSelector", "selector", "podMetricsEndpoints"},
        "PrometheusRule": {"groups"},
    }[doc["kind"]]
    assert set(spec) <= allowed, set(spec) - allowed
    if doc["kind"] == "PrometheusRule":
        for group in spec["groups"]:
            assert set(group) <= {"name", "interval", "rules"} and group["rules"]
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}, rule
                assert isinstance(rule["expr"], str)
    else:
        endpoints = spec.get("endpoints") or spec.get("podMetricsEndpoints")
        assert endpoints and all(e["path"] == "/metrics" and isinstance(e["port"], str) for e in endpoints)
        assert spec["selector"]["matchLabels"]


def test_values_schema_rejects_unknown_keys_and_bad_namespaces(rendered):
    assert not rendered["typo"]["ok"]
    assert "watchNamespace" in rendered["typo"]["error"]
    assert not rendered["bad-namespace"]["ok"]
    assert (
        "Not_A_Namespace" in rendered["bad-namespace"]["error"]
        or "pattern" in rendered["bad-namespace"]["error"]
    )


def test_misconfiguration_fails_with_a_message(rendered):
    result = rendered["servicemonitor-without-service"]
    assert not result["ok"]
    assert "metrics.serviceMonitor.enabled needs metrics.service.enabled" in result["error"]


# --- CRDs -------------------------------------------------------------------------------------------------


def test_crds_are_installed_and_kept_on_uninstall(rendered):
    crds = by_kind(docs_of(rendered, "default"), "CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == sorted(f"{k}.freeatm.io" for k in KINDS)
    for crd in crds:
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == "freeatm"
        assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
    not_kept = by_kind(docs_of(rendered, "crds-not-kept"), "CustomResourceDefinition")
    assert len(not_kept) == 3 and all("annotations" not in c["metadata"] for c in not_kept)
    assert not by_kind(docs_of(rendered, "minimal"), "CustomResourceDefinition")


def test_rendered_crds_equal_the_generated_ones_apart_from_metadata(rendered):
    from freeatm.api.crd import crd_for

    for crd in by_kind(docs_of(rendered, "default"), "CustomResourceDefinition"):
        generated = crd_for(crd["spec"]["names"]["kind"])
        assert crd["spec"] == generated["spec"]
        assert crd["metadata"]["name"] == generated["metadata"]["name"]


# --- RBAC -------------------------------------------------------------------------------------------------


def test_watch_namespaces_gives_roles_in_each_and_no_cluster_role(rendered):
    docs = docs_of(rendered, "namespaced")
    assert not by_kind(docs, "ClusterRole")
    assert not by_kind(docs, "ClusterRoleBinding")
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in by_kind(docs, "Role")}
    assert roles == {
        ("a", "freeatm-operator"),
        ("b", "freeatm-operator"),
        ("a", "freeatm-runtime"),
        ("b", "freeatm-runtime"),
    }
    bindings = by_kind(docs, "RoleBinding")
    assert {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in bindings} == roles
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        (subject,) = b["subjects"]
        if b["roleRef"]["name"] == "freeatm-operator":
            assert subject == {"kind": "ServiceAccount", "name": "freeatm", "namespace": "freeatm"}
        else:  # the runtime's ServiceAccount lives where its pods run
            assert subject == {
                "kind": "ServiceAccount",
                "name": "freeatm-runtime",
                "namespace": b["metadata"]["namespace"],
            }
    sas = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in by_kind(docs, "ServiceAccount")}
    assert sas == {("freeatm", "freeatm"), ("a", "freeatm-runtime"), ("b", "freeatm-runtime")}
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["freeatm", "operator"]
    assert [a for a in container["args"] if a.startswith("--namespace")] == ["--namespace=a", "--namespace=b"]


def test_all_namespaces_gives_one_cluster_role_for_the_operator(rendered):
    docs = docs_of(rendered, "default")
    (role,) = by_kind(docs, "ClusterRole")
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert role["metadata"]["name"] == binding["roleRef"]["name"] == "freeatm-operator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "freeatm", "namespace": "freeatm"}]
    assert [r["metadata"]["name"] for r in by_kind(docs, "Role")] == ["freeatm-runtime"]
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    # no --namespace: the whole cluster
    assert not [a for a in container["args"] if a.startswith("--namespace")]


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


@pytest.mark.parametrize("scenario", ["default", "namespaced", "cluster-full"])
def test_runtime_role_grants_only_get_and_patch_on_the_three_status_subresources(rendered, scenario):
    docs = docs_of(rendered, scenario)
    runtime_roles = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-runtime")]
    assert runtime_roles
    for role in runtime_roles:
        assert grants(role["rules"]) == {
            ("freeatm.io", r, v) for r in RUNTIME_STATUS for v in ("get", "patch")
        }
    # …and nothing else ever binds the runtime's ServiceAccount.
    for binding in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        if any(s["name"] == "freeatm-runtime" for s in binding["subjects"]):
            assert binding["roleRef"] == {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "freeatm-runtime",
            }


def test_runtime_namespaces_when_watching_everything(rendered):
    docs = docs_of(rendered, "cluster-full")
    runtime_sas = {
        s["metadata"]["namespace"]
        for s in by_kind(docs, "ServiceAccount")
        if s["metadata"]["name"] == "freeatm-runtime"
    }
    assert runtime_sas == {"ml", "research"}
    default_sas = {
        s["metadata"]["namespace"]
        for s in by_kind(docs_of(rendered, "default"), "ServiceAccount")
        if s["metadata"]["name"] == "freeatm-runtime"
    }
    assert default_sas == {"freeatm"}


def test_operator_rbac_covers_what_it_manages_and_no_secrets(rendered):
    (role,) = by_kind(docs_of(rendered, "default"), "ClusterRole")
    g = grants(role["rules"])
    for kind in KINDS:
        assert {("freeatm.io", kind, v) for v in ("get", "list", "watch", "patch")} <= g
        assert {("freeatm.io", f"{kind}/status", v) for v in ("get", "patch")} <= g
        assert ("freeatm.io", f"{kind}/finalizers", "update") in g  # blockOwnerDeletion on the Jobs
    for group, resource in (("batch", "jobs"), ("", "services")):
        assert {(group, resource, v) for v in ("get", "list", "watch", "create", "delete")} <= g
    assert {("", "pods", v) for v in ("get", "list", "watch")} <= g
    # patch: the operator removes its result finalizer from a pod once the pod's result is in the status.
    assert not {v for (gr, r, v) in g if r == "pods"} - {"get", "list", "watch", "patch"}
    assert ("", "events", "create") in g
    assert not [x for x in g if x[1] == "configmaps"]  # the resolved spec travels in the pod's environment
    assert not [x for x in g if x[1] in ("secrets", "*") or x[0] == "*" or x[2] == "*"]


def test_rbac_off_renders_no_roles(rendered):
    docs = docs_of(rendered, "minimal")
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"):
        assert not by_kind(docs, kind), kind
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "default"
    assert not by_kind(docs, "Service")


# --- the operator Deployment ------------------------------------------------------------------------------


def test_operator_deployment_is_one_hardened_replica(rendered):
    deployment = one(docs_of(rendered, "default"), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FREEATM_OPERATOR_METRICS_PORT"] == "8080" and env["FREEATM_OPERATOR_LIVENESS_PORT"] == "8081"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["command"] == ["freeatm", "operator"]
    # read-only root: a writable /tmp
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()


def test_operator_is_told_the_runtime_image_and_service_account(rendered):
    def env(scenario: str) -> dict[str, str]:
        container = one(docs_of(rendered, scenario), "Deployment")["spec"]["template"]["spec"]["containers"][
            0
        ]
        return {e["name"]: e.get("value") for e in container["env"]}

    default = env("default")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert default["FREEATM_RUNTIME_IMAGE"] == f"ghcr.io/freeatm/freeatm-runtime:{chart['appVersion']}"
    assert default["FREEATM_RUNTIME_SERVICE_ACCOUNT"] == "freeatm-runtime"
    assert default["FREEATM_RUNTIME_METRICS_PORT"] == "9090"
    assert default["FREEATM_NAMESPACES"] == ""
    assert env("namespaced")["FREEATM_NAMESPACES"] == "a,b"
    full = env("cluster-full")
    assert (
        full["FREEATM_RUNTIME_IMAGE"]
        == "registry.example.com/mirror/ghcr.io/freeatm/freeatm-runtime@sha256:" + "0" * 64
    )
    assert full["X"] == "1"


def test_operator_image_and_scheduling_values_reach_the_pod(rendered):
    pod = one(docs_of(rendered, "cluster-full"), "Deployment")["spec"]["template"]
    spec = pod["spec"]
    assert spec["containers"][0]["image"].startswith(
        "registry.example.com/mirror/ghcr.io/freeatm/freeatm-operator:"
    )
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "infra"
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["metadata"]["annotations"]["a"] == "b"
    assert spec["containers"][0]["args"][-1] == "--verbose"


# --- metrics, monitors, network policies ------------------------------------------------------------------


def test_metrics_service_selects_the_operator_pod(rendered):
    docs = docs_of(rendered, "default")
    service = one(docs, "Service")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_monitors_are_opt_in(rendered):
    default = docs_of(rendered, "default")
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy"):
        assert not by_kind(default, kind), kind
    docs = docs_of(rendered, "namespaced")
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"].items() <= one(docs, "Service")["metadata"]["labels"].items()
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}
    assert one(docs_of(rendered, "cluster-full"), "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}
    one(docs, "PrometheusRule")


def test_network_policies(rendered):
    docs = docs_of(rendered, "namespaced")
    policies = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p for p in by_kind(docs, "NetworkPolicy")
    }
    assert set(policies) == {
        ("freeatm", "freeatm-operator"),
        ("a", "freeatm-runtime"),
        ("b", "freeatm-runtime"),
    }
    operator = policies["freeatm", "freeatm-operator"]["spec"]
    assert operator["policyTypes"] == ["Ingress"]
    assert operator["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }


def test_dashboard_configmap_for_the_grafana_sidecar(rendered):
    docs = docs_of(rendered, "namespaced")
    (cm,) = [c for c in by_kind(docs, "ConfigMap") if "grafana_dashboard" in c["metadata"].get("labels", {})]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "freeatm"}
    (name,) = cm["data"]
    assert name.endswith(".json")
    assert json.loads(cm["data"][name]) == json.loads((CHART / "dashboards" / "freeatm.json").read_text())
    assert not [
        c
        for c in by_kind(docs_of(rendered, "minimal"), "ConfigMap")
        if "grafana_dashboard" in c["metadata"].get("labels", {})
    ]


# --- values.yaml is documented ----------------------------------------------------------------------------


def test_every_value_is_documented():
    """Each key of values.yaml has a `# --` comment right above it, unless it is a section (its children are
    documented) or sits inside a documented key (e.g. resources.requests.cpu)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key_re = re.compile(r"^(\s*)([A-Za-z][\w.-]*):(.*)$")
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    for i, line in enumerate(lines):
        m = key_re.match(line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        documented = j >= 0 and lines[j].strip().startswith("# --")
        nxt = next((x for x in lines[i + 1 :] if x.strip() and not x.strip().startswith("#")), "")
        m_next = key_re.match(nxt)
        is_section = not m.group(3).strip() and m_next is not None and len(m_next.group(1)) > indent
        if not (documented or is_section or any(d for _, d in stack)):
            undocumented.append(f"{i + 1}: {line.strip()}")
        stack.append((indent, documented))
    assert not undocumented, "undocumented values:\n" + "\n".join(undocumented)


def test_example_values_only_use_keys_the_chart_has():
    """A typo in the GitOps examples' values would be silently ignored by Helm: every key must exist."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(given: dict[str, Any], known: dict[str, Any], path: str) -> None:
        for key, value in given.items():
            assert key in known, f"{path}{key} is not a value of the chart"
            if isinstance(value, dict) and known[key]:
                walk(value, known[key], f"{path}{key}.")

    for scenario in ("argocd-example", "flux-example", "namespaced", "cluster-full", "minimal"):
        walk(SCENARIOS[scenario], values, f"{scenario}: ")


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "freeatm" and chart["type"] == "application"
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"], "Chart.yaml appVersion follows pyproject's version"


def test_operator_reads_the_configuration_the_chart_sets(rendered):
    """The Deployment's FREEATM_* environment is what freeatm.operator.config reads (the contract between both)."""
    from freeatm.operator.config import OperatorConfig

    for scenario, namespaces in (("namespaced", ("a", "b")), ("default", ())):
        container = one(docs_of(rendered, scenario), "Deployment")["spec"]["template"]["spec"]["containers"][
            0
        ]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        config = OperatorConfig.from_env(env)
        assert config.namespaces == namespaces
        assert config.runtime_image == env["FREEATM_RUNTIME_IMAGE"]
        assert config.image_pull_policy == "IfNotPresent"
        assert config.service_account == "freeatm-runtime"
        assert (config.metrics_port, config.liveness_port) == (8080, 8081)
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        assert config.runtime_metrics_port == values["runtime"]["metricsPort"]
        assert config.resync_seconds == values["operator"]["resyncSeconds"]


def test_pod_monitor_selects_the_pods_the_operator_renders(rendered):
    """The PodMonitor's selector and port name match the labels and port of the operator's workload pods."""
    from freeatm.api import parse_resource
    from freeatm.operator.config import OperatorConfig
    from freeatm.operator.workload import render as render_workload

    resource = parse_resource({
        "apiVersion": "freeatm.io/v1alpha1", "kind": "SyntheticDataset",
        "metadata": {"name": "shapes", "namespace": "a"},
        "spec": {"model": {"uri": "toy://shapes"}, "prompts": {"preset": "shapes"},
                 "output": {"uri": "file:///var/freeatm/shapes"}},
    })  # fmt: skip
    (job,) = [o for o in render_workload(resource, {}, OperatorConfig()) if o["kind"] == "Job"]
    pod = job["spec"]["template"]
    pm = one(docs_of(rendered, "namespaced"), "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = [p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] in ports


def test_kubernetes_validate_cli_strict_1_29(rendered, tmp_path):
    """The same check as the command line: `kubernetes-validate --strict -k 1.29` on the rendered manifests."""
    import shutil
    import subprocess
    import sys

    cli = shutil.which("kubernetes-validate") or str(Path(sys.executable).with_name("kubernetes-validate"))
    files = []
    for scenario in ("default", "namespaced", "cluster-full"):
        path = tmp_path / f"{scenario}.yaml"
        path.write_text(rendered[scenario]["manifest"])
        files.append(str(path))
    proc = subprocess.run([cli, "--strict", "-k", "1.29", "--quiet", *files], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout and "INVALID" not in proc.stdout.upper(), proc.stdout


@pytest.mark.parametrize("scenario", ["default", "namespaced"])
def test_the_operator_cli_accepts_the_deployments_command(rendered, scenario, monkeypatch):
    """`freeatm operator` + the rendered args parse with the real CLI and reach run_operator as the chart means."""
    import freeatm.operator.main
    from freeatm.cli.main import main

    calls = []
    monkeypatch.setattr(freeatm.operator.main, "run_operator", lambda *a, **k: calls.append((a, k)))
    container = one(docs_of(rendered, scenario), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][0] == "freeatm"
    assert main([*container["command"][1:], *container["args"]]) == 0
    ((namespaces, metrics_port, liveness_port), kwargs) = calls[0]
    assert list(namespaces) == (["a", "b"] if scenario == "namespaced" else [])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (metrics_port, liveness_port) == (ports["metrics"], ports["health"])
    assert kwargs.get("log_level") == "INFO"
