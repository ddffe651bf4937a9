"""Session fixtures of the kind suite: one cluster, both images, one chart install for all scenarios.

Nothing here runs unless a test of tests/e2e runs, and test_kind.py skips the whole
module (one line) where docker, kind, kubectl or helm is missing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e import kind
from tests.e2e.kubectl_client import KubectlCluster


@pytest.fixture(scope="session")
def setup() -> Iterator[kind.KindSetup]:
    """A kind cluster with both images loaded and the chart installed; deleted at the end if created here."""
    setup = kind.KindSetup()
    kind.create_cluster(setup)
    try:
        kind.build_and_load_images(setup)
        kind.install_chart(setup)
        yield setup
    finally:
        kind.delete_cluster(setup)


@pytest.fixture(scope="session")
def cluster(setup: kind.KindSetup) -> Iterator[KubectlCluster]:
    """The `ClusterClient` of the scenarios, on the kind cluster's FineTuneJob namespace."""
    client = KubectlCluster(setup.context, setup.namespace, reader_image=setup.trainer_image,
                            operator_namespace=setup.release_namespace, operator_selector=setup.operator_selector)
    yield client
    client.close()
