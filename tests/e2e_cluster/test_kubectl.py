"""kubectl as a user drives it, against the real API server with the chart's CRD.

Server-side validation (the CRD's OpenAPI schema, strict field validation and
the CEL rules) is the real API server's; the bad manifests are the
foundation's table, so the recipe model and the CRD are proven to refuse the
same things with the same field names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import ROOT, ControlPlane
from tests.cluster.fixtures import Release, kubectl
from tests.e2e_cluster.scenarios import phase
from tests.foundation.test_recipe_and_crd import BAD_MANIFESTS, MINIMAL

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def dry_run(control_plane: ControlPlane, namespace: str, manifest: dict[str, Any]) -> tuple[int, str]:
    """`kubectl apply --dry-run=server` of one manifest: its exit code and what it printed."""
    where = [] if manifest.get("metadata", {}).get("namespace") else ["-n", namespace]
    done = kubectl(control_plane, "apply", "--dry-run=server", *where, "-f", "-", stdin=json.dumps(manifest),
                   check=False)
    return done.returncode, done.stderr + done.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes_server_side_validation(control_plane: ControlPlane, kubetune_release: Release,
                                                     namespace: str, path: Path) -> None:
    code, output = dry_run(control_plane, namespace, yaml.safe_load(path.read_text(encoding="utf-8")))
    assert code == 0, output
    assert "(server dry run)" in output


def test_every_bad_manifest_is_refused_by_the_api_server_naming_the_field(
        control_plane: ControlPlane, kubetune_release: Release, namespace: str) -> None:
    accepted, unnamed = [], []
    for case, manifest, field in BAD_MANIFESTS:
        code, output = dry_run(control_plane, namespace, manifest)
        if field == "metadata.namespace":
            # A real API server never sees such an object: its URL names a namespace that cannot exist.
            field = f'namespaces "{manifest["metadata"]["namespace"]}" not found'
        if code == 0:
            accepted.append(case)
        elif field not in output:
            unnamed.append(f"{case}: {output.strip()[-300:]}")
    assert accepted == [], f"the API server accepted: {accepted}"
    assert unnamed == [], "refused without naming the field:\n" + "\n".join(unnamed)


def test_an_immutable_field_cannot_change_but_suspend_can(control_plane: ControlPlane, kubetune_release: Release,
                                                           namespace: str) -> None:
    kubectl(control_plane, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(MINIMAL))
    refused = kubectl(control_plane, "patch", "-n", namespace, "ftj", "tiny", "--type=merge",
                      "-p", '{"spec": {"model": {"name": "/workspace/models/other"}}}', check=False)
    assert refused.returncode != 0 and "spec.model is immutable" in refused.stderr, refused.stderr
    kubectl(control_plane, "patch", "-n", namespace, "ftj", "tiny", "--type=merge", "-p", '{"spec": {"suspend": true}}')


def test_explain_prints_the_field_documentation_of_the_model(control_plane: ControlPlane,
                                                             kubetune_release: Release) -> None:
    from kubetune_api.recipe import LoraSpec

    explained = kubectl(control_plane, "explain", "ftj.spec.method.lora").stdout
    assert "FineTuneJob" in explained and "FIELDS:" in explained
    for name, field in LoraSpec.model_fields.items():
        alias = field.alias or name
        assert alias in explained, f"{alias} missing from kubectl explain"
    first_words = " ".join((LoraSpec.model_fields["r"].description or "").split()[:4])
    assert first_words and first_words in " ".join(
        kubectl(control_plane, "explain", "ftj.spec.method.lora.r").stdout.split())


def test_get_ftj_shows_phase_stage_progress_loss_and_restarts(cluster, make, control_plane: ControlPlane) -> None:
    kubectl(control_plane, "apply", "-n", cluster.namespace, "-f", "-",
            stdin=json.dumps(make("columns", training={"maxSteps": 6, "saveSteps": 3})))
    cluster.wait_for("columns", phase("Succeeded"), 300, "Succeeded")
    table = kubectl(control_plane, "get", "ftj", "-n", cluster.namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "STAGE", "PROGRESS", "LOSS", "RESTARTS", "AGE"], table
    row = table[1].split()  # a finished job has no stage: that cell is empty
    assert row[:3] == ["columns", "Succeeded", "100%"] and row[4] == "0", table
    assert re.fullmatch(r"[0-9]+\.[0-9]{3}", row[3]) and float(row[3]) > 0, table  # the loss, 3 decimals


def test_the_trainer_service_account_has_no_api_rights(control_plane: ControlPlane, kubetune_release: Release) -> None:
    trainer = f"system:serviceaccount:{kubetune_release.namespace}:{kubetune_release.name}-trainer"
    for verb, resource in (("get", "pods"), ("list", "secrets"), ("create", "finetunejobs.kubetune.io"),
                           ("get", "configmaps"), ("watch", "jobs.batch")):
        answer = kubectl(control_plane, "auth", "can-i", verb, resource, f"--as={trainer}", "-n",
                         kubetune_release.namespace, check=False)
        assert answer.stdout.strip() == "no", (verb, resource, answer.stdout, answer.stderr)
    operator = f"system:serviceaccount:{kubetune_release.namespace}:{kubetune_release.service_account}"
    assert kubectl(control_plane, "auth", "can-i", "create", "jobs.batch", f"--as={operator}",
                   "-n", "default").stdout.strip() == "yes"
