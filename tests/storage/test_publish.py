"""Outputs by URI: a result uploaded to S3 (moto's server), read back byte for byte, resumed and verified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from kubetune_trainer import publish
from kubetune_api.contract import ExitCode
from kubetune_trainer.publish import (
    SUMMARY_FILE,
    FsspecDestination,
    HubDestination,
    RemoteState,
    UploadError,
    digest,
    hub_operations,
    open_destination,
    publish_result,
    result_files,
)
from kubetune_api.recipe import FineTuneJobSpec
from moto.core.authorization import enable_iam_authentication

METRICS = {"step": 12, "loss": 1.25, "evalLoss": 1.5}


def spec_with(uri: str | None) -> FineTuneJobSpec:
    """A minimal recipe uploading to `uri`."""
    output = {"uri": uri} if uri else {}
    return FineTuneJobSpec.model_validate(
        {"model": {"name": "org/base"}, "dataset": {"path": "/data/train.jsonl"}, "output": output}
    )


@pytest.fixture
def result(tmp_path: Path) -> Path:
    """An output folder as the trainer leaves it: adapter, merged model, archive, samples, and checkpoints."""
    out = tmp_path / "output"
    files = {
        "adapter/adapter_model.safetensors": b"\1" * 3000,
        "adapter/adapter_config.json": b'{"r": 16}',
        "adapter/tokenizer.json": b'{"model": {}}',
        "merged/model.safetensors": bytes(range(256)) * 40,
        "merged/config.json": b"{}",
        "tiny.tar.gz": b"\x1f\x8b" + b"\0" * 500,
        "samples.jsonl": b'{"prompt": "hi"}\n',
        "tensorboard/events.out.tfevents.1.host": b"\0" * 64,
        "checkpoints/checkpoint-10/adapter_model.safetensors": b"\2" * 100,  # never uploaded
        "adapter.partial/junk": b"half",  # an interrupted export: never uploaded
    }
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    return out


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


EXPECTED = [
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
    "adapter/tokenizer.json",
    "merged/config.json",
    "merged/model.safetensors",
    "samples.jsonl",
    "tensorboard/events.out.tfevents.1.host",
    "tiny.tar.gz",
]


def test_the_result_files_are_adapter_merged_logs_archive_and_small_files_not_checkpoints(result: Path) -> None:
    assert [remote for _, remote in result_files(result)] == EXPECTED


def test_a_result_is_uploaded_to_s3_and_reads_back_byte_for_byte(s3, result: Path) -> None:
    uri = f"s3://{s3.bucket}/runs/quiz"

    published = publish_result(spec_with(uri), result, job_name="quiz", metrics=METRICS)

    assert published is not None and published.uri == uri
    assert sorted(published.uploaded) == sorted([*EXPECTED, SUMMARY_FILE]) and published.skipped == ()
    local = tree(result)
    for name in [*EXPECTED, SUMMARY_FILE]:
        assert s3.cat(f"{s3.bucket}/runs/quiz/{name}") == local[name], name
    summary = json.loads(s3.cat(f"{s3.bucket}/runs/quiz/{SUMMARY_FILE}"))
    assert summary["metrics"] == METRICS and summary["finetunejob"] == "quiz"
    assert summary["recipe"]["output"]["uri"] == uri and "transformers" in summary["versions"]
    by_path = {f["path"]: f for f in summary["files"]}
    merged = local["merged/model.safetensors"]
    assert by_path["merged/model.safetensors"]["sha256"] == hashlib.sha256(merged).hexdigest()


def test_a_second_upload_sends_nothing_and_a_changed_file_only_itself(s3, result: Path) -> None:
    uri = f"s3://{s3.bucket}/r"
    publish_result(spec_with(uri), result, job_name="quiz", metrics=METRICS)

    again = publish_result(spec_with(uri), result, job_name="quiz", metrics=METRICS)
    assert again is not None and again.uploaded == ()

    (result / "adapter" / "adapter_model.safetensors").write_bytes(b"\3" * 3000)  # same size, new content
    changed = publish_result(spec_with(uri), result, job_name="quiz", metrics=METRICS)
    assert changed is not None
    assert changed.uploaded == ("adapter/adapter_model.safetensors", SUMMARY_FILE)  # the summary lists sha256s
    assert s3.cat(f"{s3.bucket}/r/adapter/adapter_model.safetensors") == b"\3" * 3000


def test_an_interrupted_upload_resumes_with_the_missing_files(s3, result: Path) -> None:
    uri = f"s3://{s3.bucket}/r"
    destination = open_destination(uri)
    done = [digest(path, remote) for path, remote in result_files(result)][:3]
    destination.upload(done)  # what an attempt got through before it died

    resumed = publish_result(spec_with(uri), result, job_name="quiz", metrics=METRICS)

    assert resumed is not None
    assert sorted(resumed.skipped) == sorted(f.remote for f in done)
    assert sorted(resumed.uploaded) == sorted([*EXPECTED[3:], SUMMARY_FILE])


def test_multipart_uploads_are_verified_by_their_part_etag(
    s3, result: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish, "S3_PART_SIZE", 5 * 2**20)  # S3's smallest part: 11 MiB → 3 parts
    big = result / "merged" / "model.safetensors"
    big.write_bytes(bytes(range(256)) * (11 * 2**12))
    uri = f"s3://{s3.bucket}/big"

    publish_result(spec_with(uri), result, job_name="quiz")

    etag = s3.info(f"{s3.bucket}/big/merged/model.safetensors")["ETag"].strip('"')
    assert etag.endswith("-3") and etag == digest(big, "x").multipart_etag
    assert s3.cat(f"{s3.bucket}/big/merged/model.safetensors") == big.read_bytes()


class TruncatingDestination(FsspecDestination):
    """Real S3, written by a client that drops the last byte of every file."""

    def upload(self, files: list[publish.LocalFile]) -> None:
        for file in files:
            self.fs.pipe(f"{self.root}/{file.remote}", file.path.read_bytes()[:-1])


def test_a_store_that_does_not_hold_what_was_sent_fails_verification(s3, result: Path) -> None:
    uri = f"s3://{s3.bucket}/v"
    plain = open_destination(uri)
    assert isinstance(plain, FsspecDestination)
    bad = TruncatingDestination(uri, plain.fs, plain.root)

    with pytest.raises(UploadError, match=r"verification failed.*adapter/adapter_config\.json") as failed:
        publish_result(spec_with(uri), result, job_name="quiz", destination=bad)
    assert failed.value.reason == "UploadFailed" and failed.value.exit_code == ExitCode.FAILED


def test_a_missing_bucket_is_a_retryable_upload_failure_and_the_local_result_stays(s3, result: Path) -> None:
    before = tree(result)
    with pytest.raises(UploadError) as failed:
        publish_result(spec_with("s3://no-such-bucket-kt/x"), result, job_name="quiz")
    assert failed.value.reason == "UploadFailed" and failed.value.exit_code == ExitCode.FAILED
    assert "does not exist" in str(failed.value) and "local result" in str(failed.value)
    after = tree(result)
    assert after.pop(SUMMARY_FILE)  # the summary is written beside the result first
    assert after == before


def test_wrong_credentials_are_a_retryable_upload_failure_and_the_local_result_stays(s3, result: Path) -> None:
    before = tree(result)
    with enable_iam_authentication(), pytest.raises(UploadError) as failed:
        publish_result(spec_with(f"s3://{s3.bucket}/x"), result, job_name="quiz")
    assert failed.value.exit_code == ExitCode.FAILED
    assert "access denied" in str(failed.value) and "AWS_ACCESS_KEY_ID" in str(failed.value)
    assert {k: v for k, v in tree(result).items() if k != SUMMARY_FILE} == before
    assert s3.find(f"{s3.bucket}/x") == []


def test_no_uri_uploads_nothing(result: Path) -> None:
    assert publish_result(spec_with(None), result, job_name="quiz") is None
    assert not (result / SUMMARY_FILE).exists()


def test_an_output_without_a_result_says_so(s3, tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="holds no result"):
        publish_result(spec_with(f"s3://{s3.bucket}/x"), tmp_path, job_name="quiz")


# ---------------------------------------------------------------- the Hub, up to the upload call
# No faithful stand-in for the Hub's API exists on PyPI, so these stop before the network: the token
# check, the commit's operations, and the checksums the Hub reports, computed by huggingface_hub itself.


def test_hub_needs_a_token(monkeypatch: pytest.MonkeyPatch, result: Path) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(UploadError, match=r"no HF_TOKEN.*write access") as failed:
        publish_result(spec_with("hf://acme/quiz-tuned"), result, job_name="quiz")
    assert failed.value.exit_code == ExitCode.FAILED


def test_hub_destination_names_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    destination = open_destination("hf://acme/quiz-tuned")
    assert isinstance(destination, HubDestination) and destination.repo_id == "acme/quiz-tuned"


def test_hub_commit_operations_carry_the_result_layout_and_our_sha256(result: Path) -> None:
    files = [digest(path, remote) for path, remote in result_files(result)]
    operations = hub_operations(files)
    assert [op.path_in_repo for op in operations] == EXPECTED
    # huggingface_hub hashes each file for its LFS upload; ours must agree, or verification would fail.
    assert [op.upload_info.sha256.hex() for op in operations] == [f.sha256 for f in files]
    assert [op.upload_info.size for op in operations] == [f.size for f in files]


def test_hub_verification_uses_the_lfs_sha256_or_the_git_blob_id(result: Path) -> None:
    from huggingface_hub.utils.sha import git_hash

    path = result / "adapter" / "adapter_config.json"
    local = digest(path, "adapter/adapter_config.json")
    assert local.git_sha1 == git_hash(path.read_bytes())
    holds = HubDestination.holds
    assert holds(None, local, RemoteState(local.size, git_id=local.git_sha1))  # type: ignore[arg-type]
    assert holds(None, local, RemoteState(local.size, lfs_sha256=local.sha256))  # type: ignore[arg-type]
    assert not holds(None, local, RemoteState(local.size, git_id="0" * 40))  # type: ignore[arg-type]
    assert not holds(None, local, RemoteState(local.size + 1, lfs_sha256=local.sha256))  # type: ignore[arg-type]
