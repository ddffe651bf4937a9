"""A small synchronous REST client for the test cluster: paths and plain dicts, bearer token, the cluster's CA.

The test kubelet, the cluster client and the fixtures need a handful of
verbs on arbitrary resources (nodes, leases, persistent volumes, status
subresources, evictions, watches), from several threads. The official client's
typed API would add a model round trip to every call; raw paths keep the
test code as close to what `kubectl get --raw` shows as possible.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import urllib3

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer; `status` is the HTTP code, `message` the API server's own message."""

    def __init__(self, status: int, message: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.body = dict(body or {})


def path_of(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
            subresource: str | None = None) -> str:
    """The REST path of a resource: `/api/v1/...` for the core group, `/apis/<group>/<version>/...` else."""
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = prefix + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class RestClient:
    """GET/POST/PATCH/PUT/DELETE and watch on the API server, thread-safe (one urllib3 pool)."""

    def __init__(self, server: str, token: str, ca_file: str, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.timeout = timeout
        # The serving certificate is self-signed for 127.0.0.1/localhost; verify it against itself.
        self.pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=ca_file, maxsize=16,
                                        assert_hostname=False)

    def request(self, method: str, path: str, body: Any = None, *, query: Mapping[str, Any] | None = None,
                content_type: str = "application/json", timeout: float | None = None) -> dict[str, Any]:
        """One request; the decoded answer, or ApiError."""
        headers = {**self.headers, "Content-Type": content_type}
        url = self.server + path + ("?" + urlencode(dict(query)) if query else "")
        answer = self.pool.request(method, url, headers=headers,
                                   body=None if body is None else json.dumps(body).encode(),
                                   timeout=timeout or self.timeout, retries=False)
        data = json.loads(answer.data) if answer.data else {}
        if not 200 <= answer.status < 300:
            raise ApiError(answer.status, data.get("message", answer.reason or "") if isinstance(data, dict)
                           else str(data), data if isinstance(data, dict) else None)
        return data

    def get(self, path: str, **query: Any) -> dict[str, Any] | None:
        """The object, or None on 404."""
        try:
            return self.request("GET", path, query=query or None)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def list(self, path: str, **query: Any) -> list[dict[str, Any]]:
        """The items of a list path (selectors as keyword arguments: labelSelector=, fieldSelector=)."""
        return list(self.request("GET", path, query=query or None).get("items") or [])

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST an object."""
        return self.request("POST", path, dict(body))

    def patch(self, path: str, patch: Mapping[str, Any], content_type: str = MERGE_PATCH) -> dict[str, Any] | None:
        """A merge (or strategic) patch; None on 404."""
        try:
            return self.request("PATCH", path, dict(patch), content_type=content_type)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def delete(self, path: str, **options: Any) -> bool:
        """DELETE with DeleteOptions (propagationPolicy=, gracePeriodSeconds=); False on 404."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", **options}
        try:
            self.request("DELETE", path, body)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    def watch(self, path: str, timeout_seconds: int = 30, **query: Any) -> Iterator[dict[str, Any]]:
        """Watch events of a list path until the server ends the watch (timeout_seconds)."""
        query = {**query, "watch": "true", "timeoutSeconds": str(timeout_seconds), "allowWatchBookmarks": "false"}
        url = self.server + path + "?" + urlencode(query)
        answer = self.pool.request("GET", url, headers=self.headers, preload_content=False,
                                   timeout=urllib3.Timeout(connect=5, read=timeout_seconds + 10), retries=False)
        try:
            if answer.status != 200:
                raise ApiError(answer.status, answer.read().decode(errors="replace"))
            buffer = b""
            for chunk in answer.stream(4096):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            answer.release_conn()
