"""docs/install.md and the chart's NOTES stay true: the commands they give work on today's files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from kubetune_api.recipe import parse_finetunejob

from tests.chart.conftest import REPO

DOCS = REPO / "docs" / "install.md"
NOTES = REPO / "charts" / "kubetune" / "templates" / "NOTES.txt"
SED = re.compile(r"sed '([^']+)'")


def test_the_sed_in_docs_and_notes_turns_the_quickstart_into_a_cluster_finetunejob(tmp_path: Path) -> None:
    scripts = {SED.search(path.read_text(encoding="utf-8")).group(1) for path in (DOCS, NOTES)}
    assert len(scripts) == 1, "docs/install.md and NOTES.txt give different commands"
    out = subprocess.run(["sed", scripts.pop(), str(REPO / "examples" / "quickstart-cpu.yaml")],
                         capture_output=True, text=True, check=True).stdout
    job = parse_finetunejob(yaml.safe_load(out))
    assert job.spec.dataset.path is None
    assert (job.spec.dataset.config_map.name, job.spec.dataset.config_map.key) == ("quickstart-data", "quiz.jsonl")


def test_the_configmap_the_docs_create_holds_the_quickstarts_data() -> None:
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"kubectl create configmap (\S+) --from-file=(\S+)=(\S+)", text)
    assert match and match.group(1) == "quickstart-data" and match.group(2) == "quiz.jsonl"
    assert (REPO / match.group(3)).is_file()


def test_docs_name_the_objects_the_chart_creates_for_release_kubetune() -> None:
    text = DOCS.read_text(encoding="utf-8")
    # A release named like the chart keeps the bare name: the Deployment is kubetune-operator.
    assert "deployment/kubetune-operator" in text
    for example in re.findall(r"examples/[\w.*-]+\.yaml", text):
        assert list(REPO.glob(example)), f"docs/install.md names {example}, which does not exist"
