"""Generate the FineTuneJob CustomResourceDefinition from the recipe model.

Pydantic's JSON schema is not a valid structural CRD schema as it is; this
module is the one place that converts it (kopf generates no CRDs, and no
maintained library turns pydantic v2 schemas into Kubernetes ones):

- every `$ref` inlined (Kubernetes has no references);
- `anyOf [X, null]` becomes X with `nullable: true`;
- numeric `exclusiveMinimum: N` becomes `minimum: N` + `exclusiveMinimum: true` (OpenAPI v3.0);
- `const` becomes a one-value `enum`; `title` and `default` are dropped (defaults are
  resolved by the recipe model, and stated in each description);
- `additionalProperties: false` is never emitted beside `properties` (structural schemas forbid it);
- every string and list must carry `maxLength`/`maxItems` (CEL cost limits), checked here.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kubetune_api import recipe

CRD_NAME = f"{recipe.PLURAL}.{recipe.API_GROUP}"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Summary of the conditions."},
    {"name": "Stage", "type": "string", "jsonPath": ".status.progress.stage", "description": "What the trainer does."},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.percent", "description": "Steps done."},
    # Text with 3 decimals: a number column prints 2 next to 1.7342195510864258.
    {"name": "Loss", "type": "string", "jsonPath": ".status.progress.lossText", "description": "Last training loss."},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "description": "Failures retried."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROPPED_KEYS = {"title", "default", "examples"}


class SchemaConversionError(ValueError):
    """The model produced a schema that cannot become a structural CRD schema."""


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline `$ref`s recursively; sibling keys of a `$ref` (e.g. a description) win over the target's."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return _resolve({**target, **siblings}, defs)
    return {key: _resolve(value, defs) for key, value in node.items() if key != "$defs"}


def _unwrap_nullable(node: dict[str, Any]) -> dict[str, Any]:
    options = node.get("anyOf")
    if not options or not any(option.get("type") == "null" for option in options):
        return node
    rest = [option for option in options if option.get("type") != "null"]
    siblings = {key: value for key, value in node.items() if key != "anyOf"}
    inner = rest[0] if len(rest) == 1 else {"anyOf": rest}
    return {**inner, **siblings, "nullable": True}


def _exclusive_bounds(node: dict[str, Any]) -> None:
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        value = node.get(exclusive)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node[bound] = value
            node[exclusive] = True


def _bounded_strings(node: dict[str, Any], path: str) -> None:
    if node.get("type") == "string" and "maxLength" not in node:
        if "enum" in node:
            node["maxLength"] = max(len(str(value)) for value in node["enum"])
        else:
            raise SchemaConversionError(f"{path}: a string without maxLength (set max_length on the field)")
    if node.get("type") == "array" and "maxItems" not in node:
        raise SchemaConversionError(f"{path}: a list without maxItems (set max_length on the field)")


def _to_structural(node: Any, path: str) -> Any:
    """Rewrite one resolved pydantic schema node (and its children) into CRD form."""
    if not isinstance(node, dict):
        return node
    node = _unwrap_nullable(node)
    node = {key: value for key, value in node.items() if key not in _DROPPED_KEYS}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "enum" in node and "type" not in node:
        node["type"] = "integer" if all(isinstance(v, int) for v in node["enum"]) else "string"
    _exclusive_bounds(node)
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if "properties" in node:
        node["type"] = "object"
        node["properties"] = {
            name: _to_structural(child, f"{path}.{name}") for name, child in node["properties"].items()
        }
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _to_structural(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        node["items"] = _to_structural(node["items"], f"{path}[]")
    if "anyOf" in node:
        node["anyOf"] = [_to_structural(option, path) for option in node["anyOf"]]
    if node.get("x-kubernetes-int-or-string"):
        _hoist_int_or_string(node)
    else:
        _bounded_strings(node, path)
    return node


def _hoist_int_or_string(node: dict[str, Any]) -> None:
    """Move an int-or-string's branch validations up to the node itself.

    The API server accepts `anyOf` in a structural schema only as exactly
    `[{type: integer}, {type: string}]` beside `x-kubernetes-int-or-string`; a bound
    or pattern inside a branch is refused ("must be empty to be structural").
    At the node, each check still applies only to the values it concerns
    (OpenAPI applies `pattern`/`maxLength` to strings, `minimum`/`maximum` to numbers).
    """
    for option in node.get("anyOf", []):
        for key in [key for key in option if key != "type"]:
            node[key] = option.pop(key)
    node["anyOf"] = [{"type": "integer"}, {"type": "string"}]


def model_schema(model: type[recipe.KubeModel], path: str) -> dict[str, Any]:
    """The structural CRD schema of a recipe model class."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _to_structural(_resolve(raw, raw.get("$defs", {})), path)


def _immutability_rules(spec_schema: dict[str, Any]) -> list[dict[str, str]]:
    """One transition rule per spec field but the mutable ones, each naming its field."""
    rules = []
    required = set(spec_schema.get("required", []))
    for name in spec_schema["properties"]:
        if name in recipe.MUTABLE_SPEC_FIELDS:
            continue
        if name in required:
            rule = f"self.{name} == oldSelf.{name}"
        else:
            rule = f"has(self.{name}) == has(oldSelf.{name}) && (!has(self.{name}) || self.{name} == oldSelf.{name})"
        rules.append(
            {
                "rule": rule,
                "message": f"spec.{name} is immutable: only spec.suspend may change after creation; "
                "delete and re-create the FineTuneJob (checkpoints on a retained PVC are kept)",
                "fieldPath": f".{name}",
            }
        )
    return rules


def open_api_schema() -> dict[str, Any]:
    """The whole openAPIV3Schema of the FineTuneJob resource."""
    spec = model_schema(recipe.FineTuneJobSpec, "spec")
    spec["x-kubernetes-validations"] = spec.get("x-kubernetes-validations", []) + _immutability_rules(spec)
    status = model_schema(recipe.FineTuneJobStatus, "status")
    name_rules = [rule.cel_entry() for rule in recipe.FineTuneJob.cross_field_rules]
    return {
        "type": "object",
        "description": recipe.FineTuneJob.__doc__,
        "required": ["spec"],
        "x-kubernetes-validations": name_rules,
        "properties": {
            "apiVersion": {"type": "string", "description": "apiVersion is kubetune.io/v1alpha1."},
            "kind": {"type": "string", "description": "kind is FineTuneJob."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def build_crd() -> dict[str, Any]:
    """The FineTuneJob CustomResourceDefinition as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/name": "kubetune"}},
        "spec": {
            "group": recipe.API_GROUP,
            "names": {
                "kind": recipe.KIND,
                "listKind": f"{recipe.KIND}List",
                "plural": recipe.PLURAL,
                "singular": recipe.KIND.lower(),
                "shortNames": [recipe.SHORT_NAME],
                "categories": ["kubetune"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": recipe.API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    """The CRD as the YAML committed in `crds/finetunejob.yaml`."""
    header = "# Generated by `kubetune crd` from kubetune_api/recipe. Do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)
