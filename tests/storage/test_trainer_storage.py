"""The real trainer (launcher → trainer process) reading its model and data from S3 and leaving its result there.

One short LoRA run of the tiny model on the CPU against moto's S3 server on loopback: the
inputs come down through `kubetune_trainer.fetch`, the result goes up through
`kubetune_trainer.publish`, and the termination message carries the URI for
`status.output.uri`. A second run into a bucket that does not exist fails as UploadFailed
(exit 1) with the local result intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kubetune_api.contract import ExitCode

from tests.trainer.sft_runs import run_launcher, sft_spec, termination_message, toy_rows, write_jsonl, write_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' 2-layer random Llama with its local tokenizer."""
    from tests.fixtures.models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "llama", "llama")


def s3_env() -> dict[str, str]:
    """The pod env the trainer gets: credentials and the endpoint, as from a Secret."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
    return {name: os.environ[name] for name in names}


def test_a_job_trains_from_s3_and_leaves_its_result_in_s3(s3, tiny_model: Path, tmp_path: Path) -> None:
    s3.put(str(tiny_model) + "/", f"{s3.bucket}/models/tiny/", recursive=True)
    s3.pipe(f"{s3.bucket}/data/toy.jsonl", write_jsonl(tmp_path / "toy.jsonl", toy_rows(64)).read_bytes())
    uri = f"s3://{s3.bucket}/results/toy"
    spec = sft_spec(
        f"s3://{s3.bucket}/models/tiny/",
        f"s3://{s3.bucket}/data/toy.jsonl",
        training={"maxSteps": 4, "saveSteps": 4, "reportTo": []},
        output={"uri": uri},
    )
    workspace = tmp_path / "ws"

    result = run_launcher(write_recipe(tmp_path, spec), workspace, **s3_env())

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    message = termination_message(workspace)
    assert message["output"]["uri"] == uri
    adapter = workspace / "output" / "adapter"
    for file in adapter.iterdir():
        assert s3.cat(f"{s3.bucket}/results/toy/adapter/{file.name}") == file.read_bytes(), file.name
    assert s3.cat(f"{s3.bucket}/results/toy/kubetune.json") == (workspace / "output" / "kubetune.json").read_bytes()
    assert list((workspace / "cache" / "uris").glob("*/toy.jsonl"))  # the data came through the cache

    # The same result into a bucket that does not exist: UploadFailed, retryable, the PVC's copy intact.
    before = {f.name: f.read_bytes() for f in adapter.iterdir()}
    spec["output"]["uri"] = "s3://kubetune-no-such-bucket/toy"
    failed = run_launcher(write_recipe(tmp_path, spec), workspace, **s3_env())
    message = termination_message(workspace)
    assert failed.returncode == ExitCode.FAILED, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert message["reason"] == "UploadFailed" and "does not exist" in message["message"]
    after = {f.name: f.read_bytes() for f in adapter.iterdir()}
    # The retried attempt re-exports from the final checkpoint: the same weights, nothing gone (peft writes
    # adapter_config.json's target_modules from a set, so that file's order may differ between processes).
    assert after.keys() == before.keys()
    assert after["adapter_model.safetensors"] == before["adapter_model.safetensors"]
