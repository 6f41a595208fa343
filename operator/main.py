"""Run the operator: a fresh kopf registry with freeatm's handlers, /metrics, kopf's liveness endpoint.

`run_operator(...)` is what `freeatm operator` calls; `operator(...)` is the same as a coroutine (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import kopf
import kubernetes.client

from freeatm.api import GROUP, KINDS, VERSION

from . import metrics
from .config import OperatorConfig
from .handlers import register, resync, run_pass
from .kube import Kube, load_configuration
from .reconcile import Context
from .workqueue import WorkQueue

log = logging.getLogger("freeatm.operator")
DISCOVERY_SECONDS = 5.0
"""How often the operator asks the API server which freeatm kinds it serves."""
RECONCILE_WORKERS = 16
"""Passes that run at once (each waits on the API server most of its time)."""


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
    # No kopf scanning: it would list and watch namespaces in namespaced mode (RBAC the chart does not grant
    # there). CRDs appearing later are found by `watch_served_kinds` instead, through API discovery.
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING  # Events: ours (one per transition) and kopf's warnings only
    settings.execution.max_workers = 16
    settings.watching.server_timeout = 300
    return settings


async def resync_loop(ctx: Context) -> None:
    """Run `resync` a few times per resync period, forever."""
    while True:
        await asyncio.sleep(ctx.config.resync_seconds / 4)
        await asyncio.to_thread(resync, ctx, time.monotonic())


def served_kinds(kube: Kube) -> frozenset[str] | None:
    """The freeatm kinds the API server serves now (discovery needs no RBAC beyond being authenticated); None
    when the server cannot be asked."""
    try:
        group = kube.get(f"/apis/{GROUP}/{VERSION}") or {}
    except Exception as e:
        log.warning("API discovery of %s/%s failed: %s", GROUP, VERSION, e)
        return None
    kinds = {r.get("kind") for r in group.get("resources") or [] if "/" not in str(r.get("name"))}
    return frozenset(kinds & set(KINDS))


async def watch_served_kinds(ctx: Context, started_with: frozenset[str]) -> None:
    """Return once the served kinds differ from `started_with` (a CRD installed, deleted or recreated)."""
    while True:
        await asyncio.sleep(DISCOVERY_SECONDS)
        kinds = await asyncio.to_thread(served_kinds, ctx.kube)
        if kinds is None:
            continue
        ctx.served = kinds
        if kinds != started_with:
            return


async def _until(flag: Any) -> None:
    """Wait for an asyncio.Event or a threading.Event (None: forever)."""
    if flag is None:
        await asyncio.Event().wait()
    elif isinstance(flag, asyncio.Event):
        await flag.wait()
    else:
        while not flag.is_set():
            await asyncio.sleep(0.1)


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
    queue = ctx.queue = WorkQueue(lambda key: run_pass(ctx, key), RECONCILE_WORKERS).start()
    metrics.RESOURCES.source = ctx.phase_counts
    if serve_metrics:
        metrics.serve(config.metrics_port)
    namespaces = list(config.namespaces)
    registry = build_registry(ctx, cfg)
    resyncing = asyncio.create_task(resync_loop(ctx)) if config.resync_seconds > 0 else None
    try:
        while True:
            # kopf serves the kinds it found at its start: when the set changes, it starts again.
            ctx.served = await asyncio.to_thread(served_kinds, kube) or frozenset()
            restart = asyncio.Event()
            waiters = [
                asyncio.create_task(_until(stop_flag)),
                asyncio.create_task(watch_served_kinds(ctx, ctx.served)),
            ]
            for waiter in waiters:
                waiter.add_done_callback(lambda _, flag=restart: flag.set())
            try:
                await kopf.operator(
                    registry=registry,
                    settings=build_settings(namespaces),
                    namespaces=namespaces,
                    clusterwide=not namespaces,
                    standalone=True,
                    liveness_endpoint=f"http://0.0.0.0:{config.liveness_port}/healthz"
                    if liveness and config.liveness_port
                    else None,
                    stop_flag=restart,
                    ready_flag=ready_flag,
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if not restart.is_set() or (stop_flag is not None and stop_flag.is_set()):
                break
            log.info("served kinds changed: now %s; restarting the watches", ", ".join(sorted(ctx.served)))
    finally:
        if resyncing is not None:
            resyncing.cancel()
        queue.stop()
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
