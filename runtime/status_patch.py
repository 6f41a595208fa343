"""The in-cluster progress sink: rank 0 merge-patches `status.progress` of its own resource
(docs/architecture.md#the-runtime-contract).

FREEATM_RESOURCE = Kind/namespace/name (set by the operator on every workload pod). The patch goes through the
status subresource with the pod's ServiceAccount (RBAC: patch on <plural>/status only). The reporter
(runtime/progress.py) throttles the calls; a failed patch is logged there and never breaks the workload.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

from freeatm.api import GROUP, KINDS, VERSION
from freeatm.api.status import Progress

from .errors import InvalidInput

log = logging.getLogger("freeatm.progress")
RESOURCE_ENV = "FREEATM_RESOURCE"
PROGRESS_FIELDS = frozenset(f.alias or n for n, f in Progress.model_fields.items())


def parse_target(value: str) -> tuple[str, str, str]:
    """Kind/namespace/name → (kind, namespace, name)."""
    parts = value.split("/")
    if len(parts) != 3 or parts[0] not in KINDS or not all(parts):
        raise InvalidInput(
            f"{RESOURCE_ENV}={value!r}: expected Kind/namespace/name with Kind one of {', '.join(KINDS)}"
        )
    return parts[0], parts[1], parts[2]


def progress_body(progress: dict[str, Any]) -> dict[str, Any]:
    """The merge patch for `progress`: only the fields the CRD declares (the API server would prune the rest).

    A non-finite number (a NaN loss, an infinite rate) is sent as null: JSON has no NaN, and the API server
    answers 400 to the whole patch.
    """
    return {
        "status": {
            "progress": {
                k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in progress.items()
                if k in PROGRESS_FIELDS
            }
        }
    }


def status_sink(
    target: str | None = None, api_client: Any = None, timeout: float = 5.0
) -> Callable[[dict[str, Any]], None]:
    """A progress sink patching status.progress of the resource named by `target` (default: $FREEATM_RESOURCE)."""
    import kubernetes.client

    # operator/kube.py needs the kubernetes client only, never kopf (which the runtime image does not have)
    from freeatm.operator.kube import load_configuration

    kind, namespace, name = parse_target(target or os.environ.get(RESOURCE_ENV, ""))
    client = kubernetes.client.CustomObjectsApi(
        api_client or kubernetes.client.ApiClient(load_configuration())
    )
    plural = KINDS[kind].plural

    def patch_status(progress: dict[str, Any]) -> None:
        client.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, progress_body(progress), _request_timeout=timeout
        )

    patch_status.__name__ = f"status:{kind}/{namespace}/{name}"
    return patch_status
