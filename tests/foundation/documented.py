"""What the README and the docs tell people to run on a cluster: the examples they apply, and the commands
that provide those examples' inputs (ConfigMaps from files of this repository, token Secrets).

Read from the docs' shell code blocks (and the chart's NOTES.txt), with `\\` line continuations joined, so
a test checks the commands people copy, not a list kept beside them.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "charts/kubetune/templates/NOTES.txt")
CONFIGMAP_LIMIT_BYTES = 1024 * 1024  # what the API server stores in one ConfigMap

SHELL_LANGUAGES = frozenset({"", "bash", "sh", "shell", "console"})
_APPLY = re.compile(r"(?:sed '(?P<sed>[^']+)' +)?(?P<example>examples/[\w.-]+\.yaml)(?: *\| *kubectl apply -f -)?")
_CONFIGMAP = re.compile(r"kubectl create configmap (?P<name>\S+) --from-file=(?P<key>[^=\s]+)=(?P<file>\S+)")
_SECRET = re.compile(r"kubectl create secret generic (?P<name>\S+)")
_URI = re.compile(r"^[a-z][a-z0-9+.-]*://")


def shell_text(doc: Path) -> str:
    """The commands of a document: its shell code blocks (all of NOTES.txt), continuations joined."""
    text = doc.read_text(encoding="utf-8")
    if doc.suffix == ".txt":
        code = text
    else:
        lines, language = [], None  # language: None outside a fence, else the fence's info string
        for line in text.splitlines():
            if line.startswith("```"):
                language = line[3:].strip() if language is None else None
            elif language in SHELL_LANGUAGES:
                lines.append(line)
        code = "\n".join(lines)
    return re.sub(r"\\\n\s*", " ", code)


@dataclass(frozen=True)
class Applied:
    """One example a document tells people to apply, as the cluster receives it (after a `sed`, if piped)."""

    doc: Path
    example: Path
    manifest: dict[str, Any]


def applied_examples(doc: Path) -> list[Applied]:
    """Every `kubectl apply -f examples/…` (or `sed '…' examples/… | kubectl apply -f -`) of `doc`."""
    found = []
    for line in shell_text(doc).splitlines():
        if "kubectl apply" not in line:
            continue
        for match in _APPLY.finditer(line):
            path = ROOT / match["example"]
            text = path.read_text(encoding="utf-8")
            if match["sed"]:
                text = subprocess.run(["sed", match["sed"]], input=text, capture_output=True, text=True,
                                      check=True).stdout
            found.append(Applied(doc, path, yaml.safe_load(text)))
    return found


def created_configmaps(doc: Path) -> dict[tuple[str, str], Path]:
    """(name, key) → the repository file of every `kubectl create configmap NAME --from-file=KEY=FILE` in `doc`."""
    return {(m["name"], m["key"]): ROOT / m["file"] for m in _CONFIGMAP.finditer(shell_text(doc))}


def configmap_commands(doc: Path) -> list[list[str]]:
    """The `kubectl create configmap` commands of `doc` as argument lists (without `kubectl`)."""
    return [m.group(0).split()[1:] for m in _CONFIGMAP.finditer(shell_text(doc))]


def created_secrets(doc: Path) -> set[str]:
    """Names of the Secrets `doc` tells people to create."""
    return {m["name"] for m in _SECRET.finditer(shell_text(doc))}


def input_problems(applied: Applied) -> list[str]:
    """Why the example would not find its inputs when applied as the document says; [] when it would."""
    spec = applied.manifest["spec"]
    where = f"{applied.doc.relative_to(ROOT)} applies {applied.example.relative_to(ROOT)}"
    dataset, problems = spec["dataset"], []
    if "configMap" in dataset:
        ref = (dataset["configMap"]["name"], dataset["configMap"]["key"])
        source = created_configmaps(applied.doc).get(ref)
        if source is None:
            problems.append(f"{where}: its ConfigMap {ref[0]} (key {ref[1]}) is created by no command there")
        elif not source.is_file():
            problems.append(f"{where}: the ConfigMap's file {source} does not exist")
        elif source.stat().st_size > CONFIGMAP_LIMIT_BYTES:
            problems.append(f"{where}: {source} is larger than a ConfigMap holds (1 MiB)")
    elif "path" in dataset and not _URI.match(dataset["path"]):
        problems.append(f"{where}: dataset.path {dataset['path']} is on the job's PVC, which no step fills "
                        "(use a ConfigMap the document creates, a URI, or a hub dataset)")
    secret = (spec["model"].get("tokenSecretRef") or {}).get("name")
    if secret and secret not in created_secrets(applied.doc):
        problems.append(f"{where}: model.tokenSecretRef {secret} is created by no command there")
    return problems
