"""The release workflow pushes what the chart installs: the images scripts/build-images.sh builds, and the chart.

Its version check (a shell step) is run here for real, with the repository's files.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml

from tests.chart.conftest import CHART, REPO

WORKFLOW = REPO / ".github" / "workflows" / "release.yaml"
BUILD_SCRIPT = REPO / "scripts" / "build-images.sh"


def workflow() -> dict[str, Any]:
    """The workflow as YAML (PyYAML reads the `on` key as True)."""
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def project_version() -> str:
    """pyproject.toml's version, the one every artifact carries."""
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def run_version_check(tag: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """The `version` job's check step in bash, in the repository; its result and the outputs it wrote."""
    (step,) = [s for s in workflow()["jobs"]["version"]["steps"] if s.get("id") == "check"]
    output = tmp_path / "github_output"
    output.write_text("", encoding="utf-8")
    env = {**os.environ, "TAG": tag, "OWNER": "KubeTune", "GITHUB_OUTPUT": str(output)}
    result = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=30, check=False)
    outputs = dict(line.split("=", 1) for line in output.read_text(encoding="utf-8").splitlines() if "=" in line)
    return result, outputs


def test_release_runs_on_version_tags() -> None:
    assert workflow()[True]["push"] == {"tags": ["v*"]}


def test_images_are_the_ones_build_images_builds() -> None:
    # build "$REGISTRY/trainer:$VERSION-cpu" -f trainer-image/Dockerfile --build-arg VARIANT=cpu
    built = {(name, suffix, file, variant or "")
             for name, suffix, file, variant in re.findall(
                 r'build "\$REGISTRY/(\w+):\$VERSION([-\w]*)" -f (\S+)(?: --build-arg VARIANT=(\w+))?',
                 BUILD_SCRIPT.read_text(encoding="utf-8"))}
    matrix = workflow()["jobs"]["images"]["strategy"]["matrix"]["include"]
    released = {(m["name"], m["suffix"], m["file"], m["variant"]) for m in matrix}
    assert len(built) == 3 and released == built


def test_the_chart_defaults_point_at_a_release_of_the_kubetune_owner(tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    _, outputs = run_version_check(f"v{project_version()}", tmp_path)
    assert outputs["registry"] == "ghcr.io/kubetune"  # the owner, lowercased as the registry wants it
    for image in (values["operator"]["image"], values["trainer"]["image"]):
        assert image["repository"].rsplit("/", 1)[0] == outputs["registry"] and image["tag"] == ""  # appVersion
    chart = workflow()["jobs"]["chart"]
    assert set(chart["needs"]) == {"version", "images"}  # the chart is pushed only once its images are
    script = chart["steps"][-1]["run"]
    assert 'helm push "dist/kubetune-$VERSION.tgz" "oci://$REGISTRY/charts"' in script


def test_version_check_accepts_the_projects_version(tmp_path: Path) -> None:
    result, outputs = run_version_check(f"v{project_version()}", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert outputs["version"] == project_version() == chart["version"] == chart["appVersion"]


def test_version_check_refuses_a_tag_the_files_do_not_carry(tmp_path: Path) -> None:
    result, outputs = run_version_check("v9.9.9", tmp_path)
    assert result.returncode == 1 and "version" not in outputs
    assert f"::error::tag v9.9.9 but pyproject.toml is {project_version()}: set it to 9.9.9" in result.stdout
