"""Run the operator: a fresh kopf registry with freeatm's handlers, /metrics, kopf's liveness endpoint.

`run_operator(...)` is what `freeatm operator` calls; `operator(...)` is the same as a coroutine (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import kopf
import kubernetes.client

from . import metrics
from .config import OperatorConfig
from .handlers import register, resync
from .kube import Kube, load_configuration
from .reconcile import Context

log = logging.getLogger("freeatm.operator")


def connection_info(cfg: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from a kubernetes client configuration (the same cluster for both clients)."""
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    )
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


def build_registry(ctx: Context, cfg: kubernetes.client.Configuration) -> kopf.OperatorRegistry:
    """A fresh registry (never kopf's default one) with the login and resource handlers."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(cfg)

    register(registry, ctx)
    return registry


def build_settings(namespaces: Sequence[str]) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Plain namespace names need no namespace scanning (nor the RBAC to list namespaces).
    settings.scanning.disabled = not any(re.search(r"[*?\[!]", ns) for ns in namespaces)
    settings.posting.level = logging.WARNING  # Events: ours (one per transition) and kopf's warnings only
    settings.execution.max_workers = 16
    settings.watching.server_timeout = 300
    return settings


async def resync_loop(ctx: Context) -> None:
    """Run `resync` a few times per resync period, forever."""
    while True:
        await asyncio.sleep(ctx.config.resync_seconds / 4)
        await asyncio.to_thread(resync, ctx, time.monotonic())


async def operator(
    config: OperatorConfig,
    *,
    configuration: kubernetes.client.Configuration | None = None,
    kubeconfig: str | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    serve_metrics: bool = True,
    liveness: bool = True,
) -> None:
    """Run until `stop_flag` is set (or forever)."""
    cfg = configuration or load_configuration(kubeconfig)
    kube = Kube(cfg)
    ctx = Context(kube=kube, config=config)
    metrics.RESOURCES.source = ctx.phase_counts
    if serve_metrics:
        metrics.serve(config.metrics_port)
    namespaces = list(config.namespaces)
    resyncing = asyncio.create_task(resync_loop(ctx)) if config.resync_seconds > 0 else None
    try:
        await kopf.operator(
            registry=build_registry(ctx, cfg),
            settings=build_settings(namespaces),
            namespaces=namespaces,
            clusterwide=not namespaces,
            standalone=True,
            liveness_endpoint=f"http://0.0.0.0:{config.liveness_port}/healthz"
            if liveness and config.liveness_port
            else None,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        if resyncing is not None:
            resyncing.cancel()
        kube.close()


def run_operator(
    namespaces: list[str],
    metrics_port: int,
    liveness_port: int,
    *,
    runtime_image: str | None = None,
    service_account: str | None = None,
    kubeconfig: str | None = None,
    log_level: str = "INFO",
) -> None:
    """Run the operator in the foreground (`freeatm operator`); empty `namespaces` watches the whole cluster.

    Other settings come from FREEATM_* environment variables (operator/config.py); arguments given here win.
    """
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = OperatorConfig.from_env(
        namespaces=tuple(namespaces) if namespaces else None,
        metrics_port=metrics_port,
        liveness_port=liveness_port,
        runtime_image=runtime_image,
        service_account=service_account,
    )
    log.info(
        "freeatm operator: namespaces=%s image=%s",
        ",".join(config.namespaces) or "(all)",
        config.runtime_image,
    )
    asyncio.run(operator(config, kubeconfig=kubeconfig))
