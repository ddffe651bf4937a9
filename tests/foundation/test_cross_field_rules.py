"""Each cross-field rule is written once: a `CrossFieldRule` gives the CRD its CEL rule and the model its check.

No recipe model carries a validator or CEL rules of its own beside its `cross_field_rules`, so
a rule cannot be written on one side and forgotten on the other; the CRD carries every rule's
entry as the rule states it.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubetune_api.recipe import FineTuneJob, KubeModel
from kubetune_api.recipe.base import CrossFieldRule
from kubetune_operator.crd import build_crd


def recipe_models() -> list[type[KubeModel]]:
    """Every KubeModel class the FineTuneJob is made of (the nested ones and the plain-dict checked ones)."""
    return sorted({cls for cls in _subclasses(KubeModel) if cls.__module__.startswith("kubetune_api.recipe")},
                  key=lambda cls: cls.__qualname__)


def _subclasses(cls: type) -> set[type]:
    return {sub for child in cls.__subclasses__() for sub in {child, *_subclasses(child)}}


def crd_entries(node: Any) -> list[dict[str, str]]:
    """Every x-kubernetes-validations entry anywhere in a schema."""
    if isinstance(node, dict):
        own = node.get("x-kubernetes-validations", [])
        return own + [entry for value in node.values() for entry in crd_entries(value)]
    if isinstance(node, list):
        return [entry for item in node for entry in crd_entries(item)]
    return []


def test_the_recipe_has_models_with_rules() -> None:
    models = recipe_models()
    assert FineTuneJob in models
    assert sum(bool(model.cross_field_rules) for model in models) >= 10


@pytest.mark.parametrize("model", recipe_models(), ids=lambda cls: cls.__qualname__)
def test_no_model_checks_or_emits_a_rule_beside_its_cross_field_rules(model: type[KubeModel]) -> None:
    validators = set(model.__pydantic_decorators__.model_validators)
    assert validators == {"_cross_field_rules_hold"}, f"{model.__qualname__}: write the rule as a CrossFieldRule"
    assert model.model_config.get("json_schema_extra") is KubeModel.model_config["json_schema_extra"], (
        f"{model.__qualname__}: its CEL rules come from cross_field_rules only"
    )


@pytest.mark.parametrize("model", [m for m in recipe_models() if m.cross_field_rules], ids=lambda cls: cls.__qualname__)
def test_the_crd_carries_every_rule_as_written(model: type[KubeModel]) -> None:
    entries = crd_entries(build_crd())
    for rule in model.cross_field_rules:
        assert isinstance(rule, CrossFieldRule)
        assert rule.cel_entry() in entries, f"{model.__qualname__}: {rule.message}"
