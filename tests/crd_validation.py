"""Validate objects against the FineTuneJob CRD the way the API server would.

No API server runs here, so this does its checks with real libraries: what kubectl
cannot encode as JSON (.inf, .nan) first, then the metadata checks every object gets
(namespace, label syntax), then
the openAPIV3Schema (openapi-schema-validator, OpenAPI 3.0), strict field
validation (unknown fields refused, as `kubectl apply` asks by default), and
the CEL rules of `x-kubernetes-validations` (cel-python), transition rules
(`oldSelf`) included when an old object is given. Like the API server, numbers
typed `number` reach CEL as doubles. Not emulated: defaulting, CEL cost limits.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import celpy
import yaml
from openapi_schema_validator import OAS30Validator

from kubetune_api.recipe import DNS_1123_LABEL, LABEL_VALUE, QUALIFIED_NAME

CRD_PATH = Path(__file__).resolve().parents[1] / "crds" / "finetunejob.yaml"

_MISSING = object()


@lru_cache(maxsize=1)
def crd_schema() -> dict[str, Any]:
    """The committed CRD's openAPIV3Schema."""
    crd = yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@lru_cache(maxsize=256)
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _as_schema_types(schema: dict[str, Any], value: Any) -> Any:
    """Numbers typed `number` become floats, as the API server hands them to CEL."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return {key: _as_schema_types(properties.get(key, extra), item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_schema_types(schema.get("items", {}), item) for item in value]
    return value


def _cel_errors(schema: dict[str, Any], value: Any, old: Any, path: str) -> list[str]:
    errors = []
    for entry in schema.get("x-kubernetes-validations", []):
        rule = entry["rule"]
        if "oldSelf" in rule and old is _MISSING:
            continue  # transition rules run on updates only
        activation = {"self": celpy.json_to_cel(_as_schema_types(schema, value))}
        if old is not _MISSING:
            activation["oldSelf"] = celpy.json_to_cel(_as_schema_types(schema, old))
        result = _program(rule).evaluate(activation)
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(f"{path}{entry.get('fieldPath', '')}: {entry['message']}")
    return errors


def _walk(schema: dict[str, Any], value: Any, old: Any, path: str) -> list[str]:
    errors = _cel_errors(schema, value, old, path)
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            child = properties.get(key) if properties else None
            if child is None and isinstance(extra, dict):
                child = extra
            if child is None:
                if properties is not None:
                    errors.append(f"{path}.{key}: unknown field")
                continue
            old_item = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
            errors += _walk(child, item, old_item, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += _walk(schema["items"], item, _MISSING, f"{path}[{index}]")
    return errors


def _schema_errors(obj: dict[str, Any]) -> list[str]:
    validator = OAS30Validator(crd_schema())
    errors = []
    for error in validator.iter_errors(obj):
        location = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        if error.validator == "required":  # worded as the API server words it
            errors += [f"{location}.{name}: Required value" for name in error.validator_value if name not in error.instance]
        else:
            errors.append(f"{location or '.'}: {error.message}")
    return errors


def _not_json(value: Any, path: str) -> list[str]:
    """Non-finite numbers: JSON has no spelling for them, so kubectl cannot send them (Go's encoding/json)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path or '.'}: json: unsupported value: {value}"]
    if isinstance(value, dict):
        return [error for key, item in value.items() for error in _not_json(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [error for index, item in enumerate(value) for error in _not_json(item, f"{path}[{index}]")]
    return []


def _metadata_errors(metadata: dict[str, Any]) -> list[str]:
    """What the API server checks in any object's metadata (apimachinery's ValidateObjectMeta), in its words."""
    errors = []
    namespace = metadata.get("namespace")
    if namespace is not None and not (isinstance(namespace, str) and len(namespace) <= 63
                                      and re.match(DNS_1123_LABEL, namespace)):
        errors.append(f".metadata.namespace: Invalid value: {namespace!r}: a lowercase RFC 1123 label must consist "
                      "of lower case alphanumeric characters or '-'")
    for key, value in (metadata.get("labels") or {}).items():
        if not re.match(QUALIFIED_NAME, key):
            errors.append(f".metadata.labels: Invalid value: {key!r}: name part must consist of alphanumeric "
                          "characters, '-', '_' or '.'")
        if not isinstance(value, str) or not re.match(LABEL_VALUE, value):
            errors.append(f".metadata.labels: Invalid value: {value!r}: a valid label must be an empty string "
                          "or consist of alphanumeric characters, '-', '_' or '.'")
    return errors


def crd_errors(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Every reason the API server would refuse `obj` (an update of `old` when given); [] if accepted."""
    errors = _not_json(obj, "") or _schema_errors(obj)
    if errors:
        return errors  # as the API server: CEL runs only on schema-valid objects
    metadata = obj.get("metadata", {})
    if not isinstance(metadata.get("name"), str):
        return [".metadata.name: Required value"]
    errors = _metadata_errors(metadata)
    if errors:
        return errors
    return _walk(crd_schema(), obj, old if old is not None else _MISSING, "")
