"""An in-memory stand-in for `kubetune_operator.kube.KubeApi`, for the controller's unit tests.

It keeps just the API-server behaviour the controller's paths depend on:
409 when a name is taken, 404 as None, label selectors, RFC 7386 merge
patches, uids, resourceVersions (a patch that names an older one gets 409,
as optimistic concurrency on the real server), and a refusal (422 with the
server's message) for chosen kinds.
Every call is recorded. The real HTTP path, the real API server and
controllers are covered by tests/e2e_cluster (tests/cluster's control plane).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from tests.merge_patch import apply_merge_patch
from tests.operator.objects import uid_of


def _field(obj: Mapping[str, Any], path: str) -> Any:
    """A dotted field of an object, as a field selector reads it."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


class FakeKube:
    """Objects by (kind, namespace, name), and the calls made."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.refuse: dict[str, str] = {}  # kind → the message of a 422
        self.version = 0  # the last resourceVersion handed out

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as if it existed before (fills uid)."""
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("uid", uid_of(obj["kind"], obj["metadata"]["name"]))
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.objects[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        return obj

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind, name))
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    def list(self, kind: str, namespace: str, labels: Mapping[str, str],
             fields: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        self.calls.append(("list", kind, ""))
        return [
            copy.deepcopy(obj) for (k, ns, _), obj in self.objects.items()
            if k == kind and ns == namespace
            and all((obj["metadata"].get("labels") or {}).get(key) == value for key, value in labels.items())
            and all(_field(obj, path) == value for path, value in (fields or {}).items())
        ]

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", obj["kind"], obj["metadata"]["name"]))
        if obj["kind"] in self.refuse:
            raise ApiException(status=422, reason="Unprocessable Entity",
                               body=json.dumps({"kind": "Status", "message": self.refuse[obj["kind"]]}))
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="Conflict", body=json.dumps({"message": "already exists"}))
        return self.put(dict(obj))

    def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any],
              subresource: str | None = None) -> dict[str, Any] | None:
        self.calls.append(("patch/" + (subresource or ""), kind, name))
        key = (kind, namespace, name)
        if key not in self.objects:
            return None
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected is not None and expected != self.objects[key]["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict", body=json.dumps(
                {"message": "the object has been modified; please apply your changes to the latest version"}))
        self.version += 1
        self.objects[key] = apply_merge_patch(self.objects[key], patch)
        self.objects[key]["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.objects[key])

    def delete(self, kind: str, namespace: str, name: str, grace_seconds: int | None = None) -> bool:
        self.calls.append(("delete" if grace_seconds is None else f"delete/grace={grace_seconds}", kind, name))
        return self.objects.pop((kind, namespace, name), None) is not None

    def verbs(self, verb: str) -> list[tuple[str, str]]:
        """(kind, name) of every recorded call of one verb."""
        return [(kind, name) for v, kind, name in self.calls if v == verb]
