"""The few Kubernetes API calls the operator makes, on plain manifests (dicts in, dicts out).

Built on the official client's `ApiClient` (its configuration, auth and TLS,
which kopf's login sets up), but raw JSON: kubernetes 37's typed methods
validate bodies into pydantic models and return typed objects, while the
operator renders and reconciles plain manifests; a round trip through the
typed models would only add conversions. Synchronous: called from kopf's sync
handlers (run in kopf's thread pool) and from the resync loop through
`asyncio.to_thread`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune_operator import names

# kind → (API prefix, plural): every kind the operator reads or writes.
RESOURCES: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Event": ("/api/v1", "events"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "Node": ("/api/v1", "nodes"),  # cluster-scoped: namespace ""
    "FineTuneJob": (f"/apis/{names.GROUP}/{names.VERSION}", names.PLURAL),
}

MERGE_PATCH = "application/merge-patch+json"


def api_error_message(error: ApiException) -> str:
    """The API server's own message of a failed request (its Status object), else the HTTP reason."""
    try:
        status = json.loads(error.body or "")
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("message"):
        return str(status["message"])
    return f"{error.status} {error.reason}"


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """An object as the operator's caches keep it: without managedFields (often half of an object's bytes;
    nothing here reads them)."""
    meta = {key: value for key, value in (body.get("metadata") or {}).items() if key != "managedFields"}
    return {**body, "metadata": meta}


class KubeApi:
    """Get, list, create, patch and delete namespaced objects by kind."""

    def __init__(self, timeout_seconds: float = 30.0, api_client: client.ApiClient | None = None,
                 pool_size: int | None = None) -> None:
        self.timeout = timeout_seconds
        self._api = api_client
        self.pool_size = pool_size  # connections kept to the API server (the client's default: CPUs x 5)

    @property
    def api(self) -> client.ApiClient:
        """The client, made on first use: kopf's login (after the startup handlers) configures the default."""
        if self._api is None:
            configuration = client.Configuration.get_default_copy()
            if self.pool_size:
                configuration.connection_pool_maxsize = self.pool_size
            self._api = client.ApiClient(configuration)
        return self._api

    def _path(self, kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        prefix, plural = RESOURCES[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path

    def request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One API request; raises ApiException for a non-2xx answer."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, post = self.api.param_serialize(
            method=method, resource_path=path, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, header_params=headers, body=body, post_params=post,
                                     _request_timeout=self.timeout)
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        return json.loads(response.data) if response.data else {}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", self._path(kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str, labels: Mapping[str, str],
             fields: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Objects of a kind in a namespace whose labels (and fields) match (server-side selectors)."""
        query = [("labelSelector", ",".join(f"{key}={value}" for key, value in labels.items()))]
        if fields:
            query.append(("fieldSelector", ",".join(f"{key}={value}" for key, value in fields.items())))
        answer = self.request("GET", self._path(kind, namespace), query=query)
        return list(answer.get("items") or [])

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object (its kind and namespace from the manifest); raises ApiException (409 if it exists)."""
        meta = obj["metadata"]
        return self.request("POST", self._path(obj["kind"], meta["namespace"]), body=dict(obj))

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT a whole object; its metadata.resourceVersion makes it conditional (409 if it changed meanwhile)."""
        meta = obj["metadata"]
        return self.request("PUT", self._path(obj["kind"], meta["namespace"], meta["name"]), body=dict(obj))

    def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any], subresource: str | None = None
              ) -> dict[str, Any] | None:
        """A JSON merge patch; None when the object is gone."""
        try:
            return self.request("PATCH", self._path(kind, namespace, name, subresource), body=dict(patch),
                                content_type=MERGE_PATCH)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def delete(self, kind: str, namespace: str, name: str, grace_seconds: int | None = None) -> bool:
        """Delete with background propagation (dependents go through the garbage collector); False if gone.

        `grace_seconds=0` is a force delete: the object goes without waiting for a kubelet's confirmation.
        """
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            self.request("DELETE", self._path(kind, namespace, name), body=body)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True
