"""docs/data.md's YAML is what it claims: spec fragments pass the recipe model and the CRD, the Pod is valid."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubetune_api.recipe import parse_finetunejob

from tests.crd_validation import crd_errors

DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"
BLOCKS = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)]
BASE = {"model": {"name": "org/base"}, "dataset": {"path": "/workspace/data/train.jsonl"}}


def as_finetunejob(fragment: dict[str, Any]) -> dict[str, Any]:
    """A FineTuneJob whose spec is BASE with the fragment's top-level fields (dataset replaces the base's)."""
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "doc"},
            "spec": {**BASE, **fragment}}


@pytest.mark.parametrize("fragment", [b for b in BLOCKS if "kind" not in b], ids=lambda b: ",".join(b))
def test_every_spec_fragment_is_accepted_by_the_model_and_the_crd(fragment: dict[str, Any]) -> None:
    manifest = as_finetunejob(fragment)
    parse_finetunejob(manifest)
    assert crd_errors(manifest) == []


def test_the_tensorboard_pod_is_valid_kubernetes() -> None:
    pods = [b for b in BLOCKS if b.get("kind") == "Pod"]
    assert len(pods) == 1
    kubernetes_validate.validate(pods[0], kubernetes_validate.latest_version(), strict=True)
