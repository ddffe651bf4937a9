"""The three patch formats of the Kubernetes API, applied to plain dicts.

kmock 0.8 treats every dict patch as a JSON merge patch, so a strategic merge
patch of one container by name drops the others. Here: RFC 7386 merge patch,
RFC 6902 JSON patch (the `jsonpatch` library) and a strategic merge patch that
merges the well-known lists by their merge keys. The merge keys are the ones
the Kubernetes OpenAPI declares (`x-kubernetes-patch-merge-key`) for the
fields our objects use; written by hand because no Python library implements
strategic merge.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# Field name -> merge key, from the Kubernetes API's patch strategies.
STRATEGIC_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "conditions": "type",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902; a failed `test` raises `jsonpatch.JsonPatchTestFailed`."""
    return jsonpatch.apply_patch(target, operations, in_place=False)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch: like a merge patch, but known lists merge by key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # directives such as $setElementOrder only order lists
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in STRATEGIC_MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, STRATEGIC_MERGE_KEYS[key])
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_list(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    merged = list(current)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            return copy.deepcopy(patch)  # not a keyed list after all: replace, as the server does
        index = next((i for i, old in enumerate(merged) if isinstance(old, dict) and old.get(merge_key) == item[merge_key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(strategic_merge_patch({}, item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def apply_patch(target: dict[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
    """Apply a patch of the given Content-Type; raises ValueError for an unknown one."""
    kind = content_type.split(";")[0].strip()
    if kind == JSON_PATCH or isinstance(patch, list):
        return json_patch(target, patch)
    if kind == MERGE_PATCH:
        return merge_patch(target, patch)
    if kind in (STRATEGIC_MERGE_PATCH, APPLY_PATCH):
        # Server-side apply is approximated by a strategic merge: field ownership is not emulated.
        return strategic_merge_patch(target, patch)
    raise ValueError(f"unsupported patch Content-Type {content_type!r}")
