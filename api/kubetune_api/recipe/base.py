"""The recipe model's foundation: API names, bounds, `KubeModel` and the cross-field rules it checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "kubetune.io"
API_VERSION = "v1alpha1"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SHORT_NAME = "ftj"
MAX_NAME_LENGTH = 50  # child names add suffixes such as "-recipe" and must stay within 63
DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# Every string and list gets a bound: CEL's cost estimator needs them.
SHORT = 253
LONG = 4096
HUGE = 65536
MAX_ITEMS = 64

# Upper bounds on numbers, so that no value the trainer or Kubernetes would choke on gets in
# (integers beyond int64 included: the CRD's `maximum` refuses them before CEL sees them).
MAX_STEPS = 1_000_000_000
"""Any count of optimizer steps (maxSteps, warmupSteps, loggingSteps, saveSteps, evalSteps)."""
MAX_SEED = 2**32 - 1
"""numpy's seed range, which transformers' set_seed and datasets' shuffles feed."""
MAX_INT32 = 2**31 - 1
"""Seconds and counts that Kubernetes stores as int32 (ttlSecondsAfterFinished) or that need no more."""


def cel_rule(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


@dataclass(frozen=True)
class CrossFieldRule:
    """One cross-field rule, written once: the API server runs `cel`, the model runs `holds`; both say `message`.

    A model lists its rules in `cross_field_rules`; `KubeModel` turns them into the model's
    `x-kubernetes-validations` (in the CRD, in the same order) and checks them after validation.
    `holds` sees the validated model, defaults filled in; `cel` sees the object as stored, where
    an unset field is `!has(...)`, so the CEL text spells out each default that the check relies on.
    """

    cel: str
    message: str
    field_path: str | None
    holds: Callable[[Any], bool]

    def cel_entry(self) -> dict[str, str]:
        """The rule as an `x-kubernetes-validations` entry."""
        return cel_rule(self.cel, self.message, self.field_path)


def _cel_validations(schema: dict[str, Any], model: type[KubeModel]) -> None:
    """json_schema_extra of every KubeModel: its cross-field rules become the schema's CEL rules."""
    if model.cross_field_rules:
        schema["x-kubernetes-validations"] = [rule.cel_entry() for rule in model.cross_field_rules]


class KubeModel(BaseModel):
    """Base of every recipe object: camelCase aliases, unknown fields refused, `cross_field_rules` checked
    here and emitted as the CRD's CEL rules."""

    cross_field_rules: ClassVar[tuple[CrossFieldRule, ...]] = ()

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        validate_assignment=True,
        allow_inf_nan=False,  # YAML's .inf/.nan: every bound would let them through (NaN compares false)
        json_schema_extra=_cel_validations,
    )

    def to_api(self) -> dict[str, Any]:
        """This object as the API stores it: camelCase keys, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @model_validator(mode="after")
    def _cross_field_rules_hold(self) -> KubeModel:
        broken = [rule.message for rule in self.cross_field_rules if not rule.holds(self)]
        if broken:
            raise ValueError("; ".join(broken))
        return self


def format_validation_error(error: ValidationError, root: str = "") -> str:
    """One line per problem, each naming the field path in the manifest's own (camelCase) names."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"] if part not in ("function-after",))
        path = f"{root}.{path}".strip(".") if root else path
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check the spelling against `kubectl explain ftj.spec`"
        lines.append(f"{path or '(root)'}: {message}")
    return "\n".join(lines)


class RecipeError(ValueError):
    """A FineTuneJob that the recipe model refuses; the message names each field path."""
