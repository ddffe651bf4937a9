"""The committed CRD on a real kube-apiserver: it is accepted, and every bad manifest is refused there too.

`tests/crd_validation.py` emulates the API server with Python libraries; this runs the real one
(built from Go modules, see `scripts/build-cluster.sh`), so CEL's cost budget, RE2 patterns and
the server's own wording are checked for real: `kubectl create --dry-run=server` of each
manifest of the foundation table must fail and name the field.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from kubetune_api.manifest import load_documents
from tests.cluster.controlplane import ControlPlane, binary
from tests.crd_validation import CRD_PATH
from tests.foundation.test_recipe_and_crd import BAD_MANIFESTS, EXAMPLES, MINIMAL

# Where the real server words it differently from our emulation, and what it says instead.
SERVER_SAYS = {"namespace with capitals": 'namespaces "ML_Team" not found'}


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of our own (the session's gets the CRD from `helm install`, which must own it)."""
    with ControlPlane(tmp_path_factory.mktemp("foundation-plane")) as control_plane:
        created = _kubectl(control_plane, "apply", "-f", str(CRD_PATH))
        assert created.returncode == 0, created.stderr
        established = _kubectl(
            control_plane, "wait", "--for=condition=Established", "crd/finetunejobs.kubetune.io", "--timeout=60s"
        )
        assert established.returncode == 0, established.stderr
        yield control_plane


def _kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("kubectl")), "--kubeconfig", str(plane.kubeconfig), *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )


def _dry_run(plane: ControlPlane, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    # allow_nan: kubectl reads the text as YAML, as it would read a user's `.inf`.
    return _kubectl(plane, "create", "--dry-run=server", "-f", "-", stdin=json.dumps(manifest, allow_nan=True))


def test_the_minimal_manifest_and_every_example_are_accepted(plane: ControlPlane) -> None:
    documents = [MINIMAL] + [
        document for path in EXAMPLES for document in load_documents(path) if document.get("kind") == "FineTuneJob"
    ]
    refused = {str(document["metadata"]["name"]): _dry_run(plane, document) for document in documents}
    assert {name: done.stderr for name, done in refused.items() if done.returncode != 0} == {}


@pytest.mark.parametrize(("case", "manifest", "field"), BAD_MANIFESTS, ids=[c[0] for c in BAD_MANIFESTS])
def test_bad_manifest_is_refused_by_the_real_api_server_naming_the_field(
    plane: ControlPlane, case: str, manifest: dict[str, Any], field: str
) -> None:
    done = _dry_run(plane, manifest)
    assert done.returncode != 0, f"the API server accepted it: {done.stdout}"
    assert SERVER_SAYS.get(case, field) in done.stderr, done.stderr
