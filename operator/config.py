"""The operator's configuration: runtime image, default ServiceAccount, namespaces, ports (env or CLI)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_IMAGE = "ghcr.io/freeatm/freeatm-runtime:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    """What `render` and the handlers need beyond the resource itself."""

    runtime_image: str = DEFAULT_IMAGE
    """Image of the workload pods when a resource sets no spec.image (FREEATM_RUNTIME_IMAGE)."""
    image_pull_policy: str = "IfNotPresent"
    """imagePullPolicy of the workload containers (FREEATM_IMAGE_PULL_POLICY)."""
    service_account: str | None = "freeatm-runtime"
    """ServiceAccount of the workload pods when a resource sets none (FREEATM_RUNTIME_SERVICE_ACCOUNT; '' = none)."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty = the whole cluster (FREEATM_NAMESPACES, comma-separated)."""
    metrics_port: int = 8080
    """Port of the operator's /metrics (FREEATM_OPERATOR_METRICS_PORT)."""
    liveness_port: int = 8081
    """Port of kopf's liveness endpoint /healthz (FREEATM_OPERATOR_LIVENESS_PORT)."""
    runtime_metrics_port: int = 9090
    """Port on which every workload pod serves its Prometheus metrics (FREEATM_RUNTIME_METRICS_PORT; in the pod:
    FREEATM_METRICS_PORT)."""
    rendezvous_port: int = 29500
    """torchrun c10d rendezvous port of multi-node training."""
    pvc_root: str = "/mnt/pvc"
    """Where pvc://claim/... URIs are mounted in the pods (FREEATM_PVC_ROOT, passed on to the pods)."""
    resync_seconds: float = 300.0
    """Seconds without any event after which a resource still in progress is reconciled again, so that a lost Job
    event or a failed wake-up costs at most this long (FREEATM_RESYNC_SECONDS; 0 = never)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """Environment added to every workload container (e.g. HF_HUB_OFFLINE=1)."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> OperatorConfig:
        """The configuration from FREEATM_* environment variables, then `overrides` (CLI options, non-None)."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        if v := env.get("FREEATM_RUNTIME_IMAGE"):
            values["runtime_image"] = v
        if v := env.get("FREEATM_IMAGE_PULL_POLICY"):
            values["image_pull_policy"] = v
        if "FREEATM_RUNTIME_SERVICE_ACCOUNT" in env:
            values["service_account"] = env["FREEATM_RUNTIME_SERVICE_ACCOUNT"] or None
        if v := env.get("FREEATM_NAMESPACES"):
            values["namespaces"] = tuple(n.strip() for n in v.split(",") if n.strip())
        if v := env.get("FREEATM_OPERATOR_METRICS_PORT"):
            values["metrics_port"] = int(v)
        if v := env.get("FREEATM_OPERATOR_LIVENESS_PORT"):
            values["liveness_port"] = int(v)
        if v := env.get("FREEATM_RUNTIME_METRICS_PORT"):
            values["runtime_metrics_port"] = int(v)
        if v := env.get("FREEATM_RESYNC_SECONDS"):
            values["resync_seconds"] = float(v)
        if v := env.get("FREEATM_PVC_ROOT"):
            values["pvc_root"] = v
        config = cls(**values)
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})
