"""The commands the README and the docs give for the examples, run against the real API server with the
built kubectl: each `kubectl create configmap … --from-file=…` works and holds the file, and each applied
example passes server-side validation in a namespace where those ConfigMaps exist."""

from __future__ import annotations

import json

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.cluster.fixtures import Release, kubectl
from tests.foundation.documented import DOCS, ROOT, applied_examples, configmap_commands, created_configmaps

DOCS_WITH_EXAMPLES = [doc for doc in DOCS if applied_examples(doc)]


@pytest.mark.parametrize("doc", DOCS_WITH_EXAMPLES, ids=lambda doc: doc.name)
def test_the_documented_configmaps_are_created_and_the_examples_accepted(
        control_plane: ControlPlane, kubetune_release: Release, namespace: str, doc) -> None:  # type: ignore[no-untyped-def]
    for command in configmap_commands(doc):
        # As typed from the repository's root: the file argument made absolute, nothing else changed.
        key, _, file = command[-1].removeprefix("--from-file=").partition("=")
        kubectl(control_plane, *command[:-1], f"--from-file={key}={ROOT / file}", "-n", namespace)
    for (name, key), file in created_configmaps(doc).items():
        stored = json.loads(kubectl(control_plane, "get", "configmap", name, "-n", namespace, "-o", "json").stdout)
        assert stored["data"][key] == file.read_text(encoding="utf-8"), f"ConfigMap {name} lacks {key}"
    for applied in applied_examples(doc):
        done = kubectl(control_plane, "apply", "--dry-run=server", "-n", namespace, "-f", "-",
                       stdin=json.dumps(applied.manifest), check=False)
        assert done.returncode == 0 and "(server dry run)" in done.stdout, done.stderr + done.stdout
        ref = applied.manifest["spec"]["dataset"].get("configMap")
        if ref:
            kubectl(control_plane, "get", "configmap", ref["name"], "-n", namespace)
