"""Bad recipes, models and data: exit 2 with a one-line reason, and nothing in the output folder is lost."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.checkpoints import write_marker

from tests.trainer.sft_runs import run_launcher, sft_spec, termination_message, write_jsonl, write_recipe

pytestmark = pytest.mark.slow


def _model_without_config(tmp: Path, model: Path, data: Path) -> dict[str, Any]:
    folder = tmp / "weights-only"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes())
    return sft_spec(folder, data)


def _missing_model(tmp: Path, model: Path, data: Path) -> dict[str, Any]:
    return sft_spec(tmp / "models" / "nowhere", data)


def _missing_column(tmp: Path, model: Path, data: Path) -> dict[str, Any]:
    rows = write_jsonl(tmp / "questions.jsonl", [{"question": "2+2?", "completion": "4"}] * 8)
    return sft_spec(model, rows)


def _truncated_line(tmp: Path, model: Path, data: Path) -> dict[str, Any]:
    path = tmp / "cut.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "compl', encoding="utf-8")
    return sft_spec(model, path)


def _bad_field(tmp: Path, model: Path, data: Path) -> dict[str, Any]:
    return sft_spec(model, data, training={"batchSize": 0})


CASES: dict[str, tuple[Callable[[Path, Path, Path], dict[str, Any]], str]] = {
    "model folder without config.json": (_model_without_config, "has no config.json"),
    "model path that does not exist": (_missing_model, "does not exist"),
    "data without the prompt column": (_missing_column, "'prompt'"),
    "data with a truncated JSONL line": (_truncated_line, "line 2"),
    "recipe field out of range": (_bad_field, "spec.training.batchSize"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_and_keeps_the_output(case: str, tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    make_spec, expected = CASES[case]
    workspace = tmp_path / "ws"
    output = workspace / "output"
    earlier = output / "checkpoints" / "checkpoint-3"
    earlier.mkdir(parents=True)
    write_marker(earlier, 3)
    (output / "adapter").mkdir()
    (output / "adapter" / "adapter_model.safetensors").write_bytes(b"earlier result")

    result = run_launcher(write_recipe(tmp_path, make_spec(tmp_path, tiny_llama, toy_data)), workspace)

    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    body = termination_message(workspace)
    assert body["reason"] == "InvalidRecipe" and body["exitCode"] == 2
    assert expected in body["message"] and "\n" not in body["message"], body["message"]
    assert result.stdout.strip().splitlines()[-1] == json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    assert earlier.is_dir() and (earlier / "kubetune-complete").exists()
    assert (output / "adapter" / "adapter_model.safetensors").read_bytes() == b"earlier result"


def test_a_missing_recipe_file_exits_2(tmp_path: Path) -> None:
    result = run_launcher(tmp_path / "absent.json", tmp_path / "ws")
    assert result.returncode == 2
    assert "cannot read it" in termination_message(tmp_path / "ws")["message"]
