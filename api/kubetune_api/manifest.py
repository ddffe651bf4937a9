"""Read FineTuneJob manifests from YAML or JSON files, the way kubectl does."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from kubetune_api.recipe import FineTuneJob, RecipeError, parse_finetunejob


class _KubeYamlLoader(yaml.SafeLoader):
    """PyYAML reads `2e-4` as a string (YAML 1.1 wants `2.0e-4`); kubectl reads a float. Match kubectl."""


_KubeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_documents(path: str | Path, text: str | None = None) -> Iterator[dict[str, Any]]:
    """Every non-empty document of a YAML (or JSON) file; `text`, when given, is its content (stdin)."""
    text = Path(path).read_text(encoding="utf-8") if text is None else text
    if str(path).endswith(".json"):
        yield json.loads(text)
        return
    for document in yaml.load_all(text, Loader=_KubeYamlLoader):
        if document is not None:
            yield document


def load_finetunejobs(path: str | Path, text: str | None = None) -> list[FineTuneJob]:
    """The FineTuneJobs in a file (or in `text`, read from it elsewhere); RecipeError names the file,
    the document and each bad field."""
    jobs = []
    for index, document in enumerate(load_documents(path, text)):
        if not isinstance(document, dict) or document.get("kind") != "FineTuneJob":
            continue
        try:
            jobs.append(parse_finetunejob(document))
        except RecipeError as error:
            name = (document.get("metadata") or {}).get("name", f"document {index + 1}")
            raise RecipeError(f"{path}: FineTuneJob {name}:\n{error}") from None
    if not jobs:
        raise RecipeError(f"{path}: no FineTuneJob found (kind: FineTuneJob)")
    return jobs


def load_finetunejob(path: str | Path) -> FineTuneJob:
    """The single FineTuneJob of a file."""
    jobs = load_finetunejobs(path)
    if len(jobs) > 1:
        raise RecipeError(f"{path}: {len(jobs)} FineTuneJobs found; pass a file with one")
    return jobs[0]
