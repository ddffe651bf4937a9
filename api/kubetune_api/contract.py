"""The contract between the operator's pods and the trainer: paths, env vars, exit codes.

The reasons a trainer writes into its termination message are `kubetune_api.conditions.TerminationReason`.

Both sides import these names (the operator renders them into pod specs, the
launcher reads them), so a test kubelet can remap every path through env.
No torch here.
"""

from __future__ import annotations

import re
from enum import IntEnum
from pathlib import Path

# Mount points inside the trainer pod.
RECIPE_DIR = "/etc/kubetune"
RECIPE_FILE = "recipe.json"
RECIPE_PATH = f"{RECIPE_DIR}/{RECIPE_FILE}"
WORKSPACE = "/workspace"
TERMINATION_LOG = "/dev/termination-log"
DATASET_CONFIGMAP_DIR = "/etc/kubetune-dataset"
"""Where `dataset.configMap`'s key is mounted (outside RECIPE_DIR: a read-only volume can't hold a mount point)."""
MODEL_CACHE = "/kubetune-model-cache"
"""Where `model.cacheClaim` is mounted: the base-model cache shared by FineTuneJobs."""

TRAINER_UID = 1000
"""The trainer image's fixed non-root user and group id; pods run as it and own the PVC through fsGroup."""
TRAINER_HOME = "/home/kubetune"
"""The trainer image's HOME (trainer-image/Dockerfile): writable scratch in a pod whose root is read-only."""


def output_dir(workspace: str) -> str:
    """Where results and checkpoints live under a workspace (the PVC's mount)."""
    return f"{workspace}/output"


def checkpoints_dir(workspace: str) -> str:
    """Where checkpoints live under a workspace."""
    return f"{output_dir(workspace)}/checkpoints"


def cache_dir(workspace: str) -> str:
    """The Hugging Face cache under a workspace."""
    return f"{workspace}/cache"


class Env:
    """Environment variables the operator sets and the launcher reads."""

    RECIPE = "KUBETUNE_RECIPE"  # path of recipe.json
    WORKSPACE = "KUBETUNE_WORKSPACE"  # the PVC's mount point
    TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"  # where the termination message goes
    METRICS_HOST = "KUBETUNE_METRICS_HOST"  # address rank 0 binds its metrics server to
    NNODES = "KUBETUNE_NNODES"  # number of worker pods
    NPROC_PER_NODE = "KUBETUNE_NPROC_PER_NODE"  # trainer processes per pod (GPUs, or 1 on CPU)
    MASTER_ADDR = "KUBETUNE_MASTER_ADDR"  # rendezvous host: pod index 0 through the headless Service
    MASTER_PORT = "KUBETUNE_MASTER_PORT"
    NODE_RANK = "JOB_COMPLETION_INDEX"  # set by Kubernetes for Indexed Jobs
    JOB_NAME = "KUBETUNE_FINETUNEJOB"
    NAMESPACE = "KUBETUNE_NAMESPACE"
    ATTEMPT = "KUBETUNE_ATTEMPT"
    DATASET_DIR = "KUBETUNE_DATASET_DIR"  # where dataset.configMap is mounted (DATASET_CONFIGMAP_DIR)
    MODEL_CACHE = "KUBETUNE_MODEL_CACHE"  # the shared model cache's mount; set only with model.cacheClaim
    COLLECTIVE_TIMEOUT = "KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS"  # how long ranks wait for each other


COLLECTIVE_TIMEOUT_SECONDS = 600
"""Default collective timeout: long enough for the slowest rank's model load, short enough that
a pod whose peer died exits (and the gang restarts) within minutes."""


MASTER_PORT = 29500


class ExitCode(IntEnum):
    """What the launcher's exit status means; the operator classifies failures by it."""

    SUCCESS = 0
    FAILED = 1  # anything else: retried with backoff up to backoffLimit
    INVALID = 2  # invalid recipe or data: never retried
    STOPPED = 75  # stopped on request after saving a checkpoint (EX_TEMPFAIL): preemption, suspend


_VOLUME_FULL_WORDS = re.compile(r"No space left on device|Disk quota exceeded|\bENOSPC\b|\bEDQUOT\b|StorageFull|"
                                r"\[Errno (?:28|122)\]|code: (?:28|122), kind")


def says_volume_full(text: str) -> bool:
    """Whether a trainer's message reports a write that failed for lack of space.

    Matched in the text because the error comes from many writers with their own wording: Python's
    OSError (`[Errno 28] No space left on device`), safetensors' Rust error (`code: 28, kind:
    StorageFull`), torch's serializer, a quota (`Disk quota exceeded`, errno 122).
    """
    return bool(_VOLUME_FULL_WORDS.search(text))

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_COMPLETE_MARKER = "kubetune-complete"
"""Written last into a checkpoint folder, after every rank finished writing."""

TERMINATION_MESSAGE_LIMIT = 2048
"""The kubelet keeps 4096 bytes of a termination message; we stay under half."""


class InvalidInput(Exception):
    """The recipe or its data cannot be used as given (exit 2, never retried); the message names the field."""


def local_path(name: str, base_dir: Path | None = None, *, or_hub_id: bool) -> Path | None:
    """The file or folder a recipe's `name` means on this machine, or None when it means a hub id.

    An absolute name is itself. A relative one lies under `base_dir` (the manifest's folder for
    `kubetune run`; the working directory when None). A name that may also be a hub id
    (`or_hub_id`: `model.name`, a distillation teacher's) is a path only when it starts with "."
    (no hub id does) or exists under `base_dir`; `dataset.path` is always a path.
    URI schemes (`pkg://`, `s3://`, ...) are the caller's to tell apart first.
    """
    path = Path(name)
    if path.is_absolute():
        return path
    if or_hub_id and not (name.startswith(".") or (base_dir is not None and (base_dir / name).exists())):
        return None
    return (base_dir or Path.cwd()) / path
