"""Experiment trackers named in `training.reportTo`: where W&B and MLflow write when nothing says.

transformers' own callbacks (WandbCallback, MLFlowCallback) do the logging: the loss,
learning rate, grad norm and eval loss of every logged step. They read their settings
from the environment, which a cluster job fills from a Secret (`env`/`envFrom`):

    WANDB_API_KEY, WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE      (W&B)
    MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, MLFLOW_TRACKING_TOKEN  (MLflow)

Unset, both would fail part-way into a run: W&B asks for a login that no pod can type,
and MLflow's default store (`sqlite:///mlflow.db` in the working directory) needs
SQLAlchemy, which mlflow-skinny lacks. So each falls back to files next to the run's
other results, like TensorBoard's `output/tensorboard`: W&B offline in `output/wandb`
(upload later with `wandb sync output/wandb/wandb/offline-run-*`), MLflow's file store in
`output/mlruns` (`mlflow ui --backend-store-uri output/mlruns`). Values already set win.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

WANDB_HOST = "api.wandb.ai"


def _wandb_logged_in(environ: Mapping[str, str]) -> bool:
    """Whether W&B has a key: WANDB_API_KEY, or `wandb login`'s entry in ~/.netrc."""
    if environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def tracker_defaults(report_to: Iterable[str], output: Path, run_name: str,
                     environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables to add for `report_to`'s trackers (none that `environ` already sets)."""
    trackers = set(report_to)
    defaults: dict[str, str] = {}
    if "wandb" in trackers:
        defaults.update({"WANDB_DIR": str(output / "wandb"), "WANDB_PROJECT": "kubetune", "WANDB_NAME": run_name})
        if not _wandb_logged_in(environ):
            defaults["WANDB_MODE"] = "offline"
    if "mlflow" in trackers:
        defaults["MLFLOW_EXPERIMENT_NAME"] = run_name
        if not environ.get("MLFLOW_TRACKING_URI"):
            # MLflow 3 refuses a file store unless asked to: a folder is what a run without a server has.
            defaults.update({"MLFLOW_TRACKING_URI": (output / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"})
    return {key: value for key, value in defaults.items() if key not in environ}


def configure_trackers(report_to: Iterable[str], output: Path, run_name: str) -> None:
    """Set the tracker defaults in this process's environment, where transformers' callbacks read them."""
    added = tracker_defaults(report_to, output, run_name, os.environ)
    os.environ.update(added)
    if added.get("WANDB_MODE") == "offline":
        log.warning("W&B: no WANDB_API_KEY, logging offline to %s (upload later with `wandb sync`)", added["WANDB_DIR"])
    if "MLFLOW_TRACKING_URI" in added:
        log.info("MLflow: no MLFLOW_TRACKING_URI, logging to %s", added["MLFLOW_TRACKING_URI"])
    if added.get("WANDB_DIR"):
        Path(added["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)  # W&B falls back to /tmp when it is missing
