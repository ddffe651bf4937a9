"""RFC 7386 JSON merge patch, applied: what the API server does with `application/merge-patch+json`.

One copy for every test that layers a change over a dict: the operator's fake API applies the
controller's patches with it, and the trainer tests merge per-test overrides into their base spec.

    apply_merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"c": None, "d": 3}})  # {"a": {"b": 1, "d": 3}}
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """`target` with `patch` merged in (RFC 7386): objects merge key by key, null deletes, anything else replaces.

    Neither argument is changed; the result shares nothing mutable with `patch`.
    """
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result
