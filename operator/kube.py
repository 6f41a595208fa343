"""A thin synchronous Kubernetes API client for the reconciler (raw JSON over the `kubernetes` ApiClient).

The operator reads and writes only a few object kinds by name; raw paths keep that explicit and work the same
against a real API server and the kmock emulator in tests.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from freeatm.api import GROUP, KINDS, VERSION


class Conflict(Exception):
    """The object already exists, or changed since it was read (HTTP 409)."""


class Rejected(Exception):
    """The API server refused a write for good reason: invalid (422, 400) or forbidden (403: RBAC, quota,
    admission). `message` is the server's own explanation."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def _server_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except (ValueError, AttributeError):
        return str(e.body or e.reason)


def _write_error(e: ApiException, path: str) -> Exception:
    if e.status == 409:
        return Conflict(path)
    if e.status in (400, 403, 422):
        return Rejected(e.status, _server_message(e))
    return e


def load_configuration(
    kubeconfig: str | None = None, host: str | None = None
) -> kubernetes.client.Configuration:
    """API configuration: an explicit host (tests), else in-cluster, else the kubeconfig (read now, not at import).

    The operator's and the workload pods' (runtime/status_patch.py) alike."""
    cfg = kubernetes.client.Configuration()
    if host:
        cfg.host = host
        cfg.verify_ssl = False
    elif kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=cfg)
    else:
        path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        kubernetes.config.load_kube_config(config_file=path, client_configuration=cfg)
    cfg.connection_pool_maxsize = 32
    return cfg


def resource_path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    """API path of a freeatm resource, a Job, a Service, a Pod or an Event."""
    builtin = {"Job": "/apis/batch/v1", "Service": "/api/v1", "Pod": "/api/v1", "Event": "/api/v1"}
    plural = {"Job": "jobs", "Service": "services", "Pod": "pods", "Event": "events"}
    if kind in KINDS:
        base, res = f"/apis/{GROUP}/{VERSION}", KINDS[kind].plural
    else:
        base, res = builtin[kind], plural[kind]
    path = f"{base}/namespaces/{quote(namespace)}/{res}"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


class Kube:
    """get / list / create / merge-patch / delete of raw JSON objects."""

    def __init__(self, configuration: kubernetes.client.Configuration, timeout: float = 10.0) -> None:
        self.client = kubernetes.client.ApiClient(configuration)
        self.timeout = timeout

    def close(self) -> None:
        self.client.close()

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        if query:
            path = f"{path}?{urlencode(query)}"
        resp = self.client.call_api(
            path,
            method,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=self.timeout,
        )
        data = resp.data
        return json.loads(data) if data else None

    def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self._call("GET", path)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list(
        self, path: str, labels: dict[str, str] | None = None, fields: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Items of a collection; the label selector is also applied here (kmock ignores it). A field selector
        only narrows what the server sends: callers check the fields they rely on."""
        query = {}
        if labels:
            query["labelSelector"] = ",".join(f"{k}={v}" for k, v in labels.items())
        if fields:
            query["fieldSelector"] = ",".join(f"{k}={v}" for k, v in fields.items())
        items = (self._call("GET", path, query=query or None) or {}).get("items") or []
        if labels:
            items = [
                i
                for i in items
                if all((i.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())
            ]
        return items

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The object as stored; raises Conflict (409) or Rejected (400, 403, 422)."""
        try:
            return self._call("POST", path, body)
        except ApiException as e:
            raise _write_error(e, path) from e

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """JSON merge patch; None when the object is gone. With metadata.resourceVersion in `body` the server
        applies it only to that version (Conflict otherwise)."""
        try:
            return self._call("PATCH", path, body, content_type="application/merge-patch+json")
        except ApiException as e:
            if e.status == 404:
                return None
            raise _write_error(e, path) from e

    def delete(self, path: str, propagation: str = "Background", uid: str | None = None) -> bool:
        """Delete (Background: dependents go afterwards; Foreground: the object stays, with a deletionTimestamp,
        until its dependents are gone); `uid` deletes only that incarnation. False when it was already gone."""
        options: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": propagation,
        }
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            self._call("DELETE", path, options)
            return True
        except ApiException as e:
            if e.status in (404, 409):  # gone, or a newer object of the same name (uid precondition)
                return False
            raise
