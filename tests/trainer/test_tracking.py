"""`training.reportTo: [wandb, mlflow]` for real: W&B offline and MLflow's file store, no server.

One run through the launcher with neither tracker configured (no key, no URI), as a
first cluster job without its Secret would be: it must finish, and the loss and
learning-rate series of every logged step must be in W&B's offline run file and in
MLflow's store, equal to the Trainer's own log history.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.tracking import tracker_defaults
from tests.trainer.sft_runs import run_launcher, sft_spec, write_recipe

pytest.importorskip("wandb")
pytest.importorskip("mlflow")

STEPS = 6
# W&B's run file is a LevelDB-style log of protobuf records; wandb ships no Python reader for it
# (its Go core reads it), so the format is read here: a 7-byte file header, 32 KiB blocks, and
# records with a 7-byte header (checksum, length, type: 1 full, 2 first, 3 middle, 4 last).
WANDB_BLOCK = 32 * 1024
WANDB_HEADER = struct.Struct("<4sHB")
WANDB_RECORD = struct.Struct("<IHB")


def _wandb_records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    ident, _magic, _version = WANDB_HEADER.unpack_from(data)
    assert ident == b":W&B"
    records, pending, position = [], b"", WANDB_HEADER.size
    while position + WANDB_RECORD.size <= len(data):
        left = WANDB_BLOCK - position % WANDB_BLOCK
        if left < WANDB_RECORD.size:  # a block's tail too short for a header is padding
            position += left
            continue
        _checksum, length, kind = WANDB_RECORD.unpack_from(data, position)
        if kind == 0:
            break
        start = position + WANDB_RECORD.size
        pending += data[start : start + length]
        position = start + length
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records


def wandb_history(run_file: Path) -> list[dict[str, Any]]:
    """The history rows (`wandb.log` calls) of an offline run file."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for raw in _wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, toy_data: Path) -> Path:
    folder = tmp_path_factory.mktemp("tracked")
    spec = sft_spec(tiny_llama, toy_data, training={"maxSteps": STEPS, "loggingSteps": 2,
                                                    "reportTo": ["wandb", "mlflow", "tensorboard"]})
    workspace = folder / "ws"
    with pytest.MonkeyPatch.context() as patch:
        for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
            patch.delenv(key, raising=False)
        patch.setenv("HOME", str(folder))  # no ~/.netrc from a `wandb login`
        result = run_launcher(write_recipe(folder, spec, name="tracked"), workspace)
    assert result.returncode == 0, result.stderr[-4000:]
    return workspace / "output"


def _logged(output: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in the Trainer's log history (summary.json)."""
    history = json.loads((output / "summary.json").read_text())["logHistory"]
    return [(row["step"], row[key]) for row in history if key in row]


@pytest.mark.slow
def test_wandb_offline_holds_the_loss_and_learning_rate_series(tracked_run: Path) -> None:
    run_files = list((tracked_run / "wandb").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 1, "W&B did not log offline into output/wandb"
    rows = [row for row in wandb_history(run_files[0]) if "train/loss" in row]
    assert [(row["train/global_step"], row["train/loss"]) for row in rows] == _logged(tracked_run, "loss")
    assert [row["train/learning_rate"] for row in rows] == [value for _, value in _logged(tracked_run, "learning_rate")]
    assert len(rows) == 1 + STEPS // 2  # the first step, then every loggingSteps


@pytest.mark.slow
def test_mlflow_file_store_holds_the_loss_and_learning_rate_series(tracked_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # this reader, like the trainer, wants a file store
    client = MlflowClient((tracked_run / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("tracked")  # MLFLOW_EXPERIMENT_NAME: the FineTuneJob's name
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    for key in ("loss", "learning_rate"):
        series = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert series == _logged(tracked_run, key), key


def test_settings_already_given_win(tmp_path: Path) -> None:
    environ = {"WANDB_API_KEY": "k", "MLFLOW_TRACKING_URI": "http://mlflow:5000", "WANDB_PROJECT": "quiz"}
    added = tracker_defaults(["wandb", "mlflow"], tmp_path, "job", environ)
    assert "WANDB_MODE" not in added and "MLFLOW_TRACKING_URI" not in added and "WANDB_PROJECT" not in added
    assert added["MLFLOW_EXPERIMENT_NAME"] == "job"
    assert tracker_defaults(["tensorboard"], tmp_path, "job", {}) == {}
