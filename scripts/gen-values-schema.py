#!/usr/bin/env python3
"""Generate charts/kubetune/values.schema.json from the comments of charts/kubetune/values.yaml.

    scripts/gen-values-schema.py            # rewrite the schema
    scripts/gen-values-schema.py --check    # exit 1, with a diff, when the committed schema is stale

values.yaml is the one source, as cert-manager's chart does it (its helm-tool reads the
values' comments): a value's description is the comment right above its key, and its
type is that of its default. A comment line `# @schema {...}` adds JSON Schema keywords
to the value it documents, written as a YAML flow mapping:

    # metricsPort serves the operator's Prometheus metrics at /metrics.
    # @schema {minimum: 1024, maximum: 65535}
    metricsPort: 8080

- `$ref: name` (also inside other keywords) points at a shared type of DEFINITIONS below
  (duration, quantity, resources, ...).
- A key whose own keys carry comments is a section: an object with exactly those keys
  (`additionalProperties: false`, so a typo fails `helm install`), unless its annotation
  says otherwise. A key whose keys carry none is one value: its default is an example of it,
  and its annotation says what it may hold (e.g. `{additionalProperties: {type: string}}`
  for a map of labels).
- `enum`, `anyOf`, `oneOf`, `const` or `type` in an annotation replace the type of the default.
- Prose after "For example" is not part of the description: when it is a YAML snippet that
  sets the key, its value becomes one of the schema's `examples` (checked against the schema).

The generator refuses, naming the values.yaml line: an undocumented key beside documented
ones, an annotation that is not a YAML mapping or uses a keyword JSON Schema draft-07 does
not have, a `$ref` to no definition, and defaults or examples the schema refuses.
Only PyYAML and jsonschema are needed (no kubetune import).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[1]
VALUES = ROOT / "charts" / "kubetune" / "values.yaml"
SCHEMA = ROOT / "charts" / "kubetune" / "values.schema.json"

ANNOTATION = "@schema"
EXAMPLE_LEAD = re.compile(r"^For example\b")
DOCS_TAG = re.compile(r"^\+docs:")  # cert-manager's section markers (`# +docs:section=Operator`): not prose

_DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_QUANTITY = (
    r"^[+]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_RESOURCE_NAME = "^([a-z0-9.-]+/)?[a-z0-9-]+$"

DEFINITIONS: dict[str, Any] = {
    "duration": {
        "type": "string",
        "minLength": 1,
        "pattern": _DURATION,
        "description": "A Prometheus duration: units y, w, d, h, m, s, ms, largest first (30s, 1m30s, 2h).",
    },
    "optionalDuration": {
        "type": "string",
        "pattern": _DURATION,
        "description": "A Prometheus duration, or empty for the default.",
    },
    "quantity": {
        "description": "A Kubernetes quantity (250m, 1, 512Mi, 4Gi).",
        "anyOf": [
            {"type": "integer", "minimum": 0},
            {"type": "number", "minimum": 0},
            {"type": "string", "pattern": _QUANTITY},
        ],
    },
    "optionalQuantity": {
        "description": "A Kubernetes quantity, or empty for none.",
        "anyOf": [{"$ref": "#/definitions/quantity"}, {"const": ""}],
    },
    "resources": {
        "type": "object",
        "additionalProperties": False,
        "description": "Container resources: requests and limits of cpu, memory, ephemeral-storage.",
        "properties": {
            part: {
                "type": "object",
                "description": f"Resource {part}.",
                "additionalProperties": {"$ref": "#/definitions/quantity"},
                "propertyNames": {"pattern": _RESOURCE_NAME},
            }
            for part in ("requests", "limits")
        },
    },
    "intOrPercent": {
        "description": 'A number of pods or a percentage ("50%"); empty: unset.',
        "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^([0-9]+%?)?$"}],
    },
    "autoOrBool": {
        "description": "auto: only when the cluster serves monitoring.coreos.com/v1; true: always; false: never.",
        "enum": ["auto", True, False],
    },
    "relabelings": {
        "type": "array",
        "description": "prometheus-operator RelabelConfigs.",
        "items": {"type": "object"},
    },
    "labelSelector": {
        "type": "object",
        "description": "A Kubernetes label selector.",
        "additionalProperties": False,
        "properties": {
            "matchLabels": {
                "type": "object",
                "description": "Labels to match.",
                "additionalProperties": {"type": "string"},
            },
            "matchExpressions": {"type": "array", "description": "Expressions to match.", "items": {"type": "object"}},
        },
    },
    "stringMap": {
        "type": "object",
        "description": "Keys and string values (labels, annotations, a node selector).",
        "additionalProperties": {"type": "string"},
    },
    "namespaces": {
        "type": "array",
        "description": "Namespace names, each once.",
        "items": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "uniqueItems": True,
    },
    "digest": {
        "type": "string",
        "description": "An image digest (sha256:...), or empty.",
        "pattern": "^(sha256:[a-f0-9]{64})?$",
    },
    "secretReference": {
        "type": "object",
        "description": "A Secret in the same namespace, by name.",
        "additionalProperties": False,
        "properties": {"name": {"type": "string", "description": "The Secret's name.", "minLength": 1}},
        "required": ["name"],
    },
}

# Draft-07's keywords: an annotation with any other key is a typo (JSON Schema itself would ignore it).
KEYWORDS = frozenset(jsonschema.Draft7Validator.META_SCHEMA["properties"]) | {"$ref"}
REPLACES_TYPE = frozenset({"enum", "anyOf", "oneOf", "const", "type", "$ref"})


class ValuesError(ValueError):
    """values.yaml cannot become a schema; the message names the line and what to change."""


@dataclass(frozen=True)
class Comment:
    """What the comment right above a key says: prose, `@schema` keywords, examples."""

    description: str
    annotation: dict[str, Any]
    examples: list[Any]


def _comment_lines(lines: list[str], key_line: int) -> list[tuple[int, str]]:
    """The comment block right above line `key_line` (0-based): (line number, text after '#') top-down."""
    block: list[tuple[int, str]] = []
    number = key_line - 1
    while number >= 0 and lines[number].strip().startswith("#"):
        text = lines[number].strip()[1:]
        block.append((number, text[1:] if text.startswith(" ") else text))
        number -= 1
    return block[::-1]


def _expand_refs(node: Any) -> Any:
    """`$ref: duration` → `$ref: '#/definitions/duration'`, at any depth."""
    if isinstance(node, dict):
        return {
            key: (f"#/definitions/{value}" if key == "$ref" and not str(value).startswith("#") else _expand_refs(value))
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_expand_refs(item) for item in node]
    return node


def _check_refs(node: Any, where: str) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None and ref.removeprefix("#/definitions/") not in DEFINITIONS:
            raise ValuesError(f"{where}: $ref {ref!r} names no definition; known: {', '.join(sorted(DEFINITIONS))}")
        for value in node.values():
            _check_refs(value, where)
    elif isinstance(node, list):
        for item in node:
            _check_refs(item, where)


def parse_comment(lines: list[str], key_line: int, key: str) -> Comment:
    """The prose, annotation and examples of the comment right above `key` at `key_line` (0-based)."""
    prose: list[str] = []
    example: list[str] = []
    annotation: dict[str, Any] = {}
    in_example = False
    for number, text in _comment_lines(lines, key_line):
        where = f"values.yaml:{number + 1}"
        stripped = text.strip()
        if DOCS_TAG.match(stripped):
            continue
        if stripped.startswith(ANNOTATION):
            try:
                keywords = yaml.safe_load(stripped[len(ANNOTATION):]) or {}
            except yaml.YAMLError as error:
                raise ValuesError(f"{where}: {ANNOTATION} is not YAML: {error}") from None
            if not isinstance(keywords, dict):
                raise ValuesError(f"{where}: {ANNOTATION} takes a YAML mapping, e.g. `# {ANNOTATION} {{minimum: 1}}`")
            unknown = sorted(set(keywords) - KEYWORDS)
            if unknown:
                raise ValuesError(f"{where}: {ANNOTATION} keyword(s) {unknown} are not JSON Schema draft-07 keywords")
            annotation.update(_expand_refs(keywords))
            _check_refs(annotation, where)
        elif EXAMPLE_LEAD.match(stripped):
            in_example = True
        elif in_example and text.startswith("  "):
            example.append(text)
        else:
            in_example = False
            # An indented line (a command to type) keeps a line of its own; prose lines join into one.
            prose.append(text.rstrip() if text.startswith("  ") else stripped)
    examples: list[Any] = []
    if example:
        snippet = yaml.safe_load("\n".join(example))
        if isinstance(snippet, dict) and key in snippet:
            examples.append(snippet[key])
    return Comment(_join(prose), annotation, examples)


def _join(prose: list[str]) -> str:
    """Prose lines as one paragraph; an indented line (a command to type) keeps a line of its own."""
    parts: list[str] = []
    for line in prose:
        if line.startswith("  "):
            parts.append("\n" + line + "\n")
        elif line:
            parts.append(line if not parts or parts[-1].endswith("\n") else " " + line)
    return "".join(parts).strip("\n")


# Python type of a YAML default → JSON Schema type; bool before int (a bool is an int in Python).
JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"), (dict, "object"),
)


def _type_of(value: Any, where: str) -> str:
    """The JSON Schema type of a YAML default."""
    for python_type, json_type in JSON_TYPES:
        if isinstance(value, python_type):
            return json_type
    raise ValuesError(f"{where}: the default {value!r} has no JSON Schema type; give a typed default "
                      "or a `# @schema {type: ...}` line")


def _keys(node: yaml.MappingNode) -> list[tuple[str, int, yaml.Node]]:
    """(key, its 0-based line, value node) of a mapping, in file order."""
    return [(str(key.value), key.start_mark.line, value) for key, value in node.value]


def _documented(lines: list[str], node: yaml.Node) -> bool:
    """Whether some key of this mapping has a comment right above it (so it is a section, not a value)."""
    return isinstance(node, yaml.MappingNode) and any(_comment_lines(lines, line) for _, line, _ in _keys(node))


def _section(lines: list[str], node: yaml.MappingNode, path: str) -> dict[str, Any]:
    """Properties of a section: one per key, each from its comment."""
    properties: dict[str, Any] = {}
    for key, line, value_node in _keys(node):
        where = f"values.yaml:{line + 1}: {path}{key}"
        comment = parse_comment(lines, line, key)
        if not comment.description:
            raise ValuesError(f"{where} has no comment right above it: every value and section says what it is")
        properties[key] = _property(lines, value_node, comment, f"{path}{key}.", where)
    return properties


def _property(lines: list[str], node: yaml.Node, comment: Comment, path: str, where: str) -> dict[str, Any]:
    """The schema of one key: a section (its keys documented) or a value (typed by its default)."""
    schema: dict[str, Any] = {}
    annotation = dict(comment.annotation)
    default = yaml.safe_load(yaml.serialize(node))
    if "$ref" in annotation:
        schema["$ref"] = annotation.pop("$ref")
    elif _documented(lines, node):
        schema["type"] = "object"
        schema["additionalProperties"] = annotation.pop("additionalProperties", False)
    elif not REPLACES_TYPE & annotation.keys():
        schema["type"] = _type_of(default, where)
    schema["description"] = comment.description
    if _documented(lines, node):
        assert isinstance(node, yaml.MappingNode)
        schema["properties"] = _section(lines, node, path)
    else:
        schema["default"] = default
    schema.update(annotation)
    if comment.examples:
        schema["examples"] = comment.examples
    return schema


def generate(values_text: str) -> dict[str, Any]:
    """The values schema of a values.yaml's text."""
    lines = values_text.splitlines()
    root = yaml.compose(values_text)
    if not isinstance(root, yaml.MappingNode):
        raise ValuesError("values.yaml: the top level must be a mapping")
    schema = {
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": "Values of the KubeTune chart",
        "description": "Generated by scripts/gen-values-schema.py from the comments of values.yaml: edit those.",
        "type": "object",
        "additionalProperties": False,
        "definitions": DEFINITIONS,
        "properties": _section(lines, root, ""),
    }
    jsonschema.Draft7Validator.check_schema(schema)
    _check_defaults_and_examples(schema, yaml.safe_load(values_text))
    return schema


def _check_defaults_and_examples(schema: dict[str, Any], values: dict[str, Any]) -> None:
    """Every default (the whole values.yaml) and every example must pass the schema generated for it."""
    validator = jsonschema.Draft7Validator(schema)
    for error in validator.iter_errors(values):
        path = ".".join(str(part) for part in error.absolute_path)
        raise ValuesError(f"values.yaml: the default of {path} fails its own schema: {error.message}")

    def walk(node: dict[str, Any], path: str) -> None:
        for example in node.get("examples", []):
            checker = jsonschema.Draft7Validator({**node, "definitions": DEFINITIONS})
            for error in checker.iter_errors(example):
                raise ValuesError(f"values.yaml: the example of {path} fails its schema: {error.message}")
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}" if path else key)

    walk(schema, "")


def render(schema: dict[str, Any]) -> str:
    """The schema file's text: stable, two-space indented, one trailing newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the schema, or with --check compare it to the committed file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 with a diff when the schema file is stale")
    parser.add_argument("--values", type=Path, default=VALUES, help="values.yaml to read")
    parser.add_argument("--schema", type=Path, default=SCHEMA, help="values.schema.json to write or check")
    args = parser.parse_args(argv)
    try:
        text = render(generate(args.values.read_text(encoding="utf-8")))
    except ValuesError as error:
        print(f"gen-values-schema: {error}", file=sys.stderr)
        return 2
    if args.check:
        current = args.schema.read_text(encoding="utf-8") if args.schema.exists() else ""
        if current == text:
            return 0
        sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                   str(args.schema), "generated"))
        print(f"{args.schema} is stale: run scripts/gen-values-schema.py", file=sys.stderr)
        return 1
    args.schema.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
