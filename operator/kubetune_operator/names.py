"""Names and labels of a FineTuneJob's children: one helper each, used by rendering, reconcile and handlers.

Names are deterministic so that a retried or restarted operator finds what it
already created instead of creating a duplicate (kopf `docs/idempotence.rst`).
A FineTuneJob name has at most 50 characters (`recipe.MAX_NAME_LENGTH`); the
longest suffix here is `-recipe` (7), and an attempt Job's pods add
`-<attempt>-<index>-<5 random>`, which Kubernetes truncates for pod names but
not for the `hostname` of Indexed Jobs: see `job_name`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune_api import recipe

GROUP = recipe.API_GROUP
VERSION = recipe.API_VERSION
PLURAL = recipe.PLURAL
API_VERSION = f"{GROUP}/{VERSION}"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_FINETUNEJOB = "kubetune.io/finetunejob"
LABEL_ATTEMPT = "kubetune.io/attempt"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"

APP_NAME = "kubetune"
MANAGER = "kubetune-operator"

COMPONENT_TRAINER = "trainer"
COMPONENT_STORAGE = "storage"
COMPONENT_RECIPE = "recipe"
COMPONENT_NETWORK = "rendezvous"

CONTAINER_NAME = "trainer"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def recipe_configmap_name(name: str) -> str:
    """The ConfigMap holding the resolved recipe: `<name>-recipe`."""
    return f"{name}-recipe"


def pvc_name(name: str) -> str:
    """The PVC the operator creates when no existingClaim is given: `<name>-data`."""
    return f"{name}-data"


def service_name(name: str) -> str:
    """The headless Service of several workers: `<name>` (pods reach each other as `<pod hostname>.<name>`)."""
    return name


def job_name(name: str, attempt: int) -> str:
    """The attempt Job: `<name>-<attempt>`. Its pods' hostnames are `<name>-<attempt>-<index>` (≤ 63 for
    a 50-character name up to attempt 99999 with 64 workers)."""
    return f"{name}-{attempt}"


def master_address(name: str, attempt: int) -> str:
    """The rendezvous host of an attempt: pod index 0 through the headless Service."""
    return f"{job_name(name, attempt)}-0.{service_name(name)}"


def labels(name: str, component: str) -> dict[str, str]:
    """The labels every child carries (API.md, 'Children and contracts')."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_COMPONENT: component,
        LABEL_FINETUNEJOB: name,
    }


def attempt_labels(name: str, attempt: int) -> dict[str, str]:
    """Labels of an attempt Job and its pods: the child labels plus `kubetune.io/attempt`."""
    return {**labels(name, COMPONENT_TRAINER), LABEL_ATTEMPT: str(attempt)}


def attempt_of(obj: Mapping[str, Any]) -> int | None:
    """The attempt number a Job or pod carries in its labels, or None when it carries none."""
    value = ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_ATTEMPT)
    return int(value) if value is not None and str(value).isdigit() else None
