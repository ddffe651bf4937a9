"""Inputs by URI: download `dataset.path` and `model.name` URIs into a cache once, and hand back local paths.

    path = fetch("s3://bucket/quiz/train.jsonl", cache_root, field="dataset.path")  # …/uris/<key>/train.jsonl
    folder = fetch("s3://bucket/models/base/", cache_root, field="model.name")      # …/uris/<key>/

A download is keyed by the URI and what the store says about the content (ETag, version id,
size, modification time), so a later attempt (or another job sharing the cache) reuses it
with one metadata request and no data transfer, and a replaced object is fetched again. It
is written into a staging folder and renamed into place, so a crash never leaves a partial
copy where a complete one is expected; a file lock (filelock: flock, which NFS and most
ReadWriteMany volumes honour across pods) makes concurrent first downloads of one key
happen once. Hub downloads need no lock of ours: huggingface_hub locks each blob itself
(`WeakFileLock` in huggingface_hub/file_download.py).

Also here: where a ConfigMap dataset is mounted, and which folder is the base-model cache
(the shared `model.cacheClaim` mount, else the workspace's). No torch here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kubetune_api.conditions import TerminationReason
from kubetune_api.contract import DATASET_CONFIGMAP_DIR, Env, ExitCode, cache_dir
from kubetune_trainer.remote import StorageError, explain, filesystem, is_uri, scheme

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from kubetune_api.recipe import DatasetSpec, FineTuneJobSpec, ModelSpec

log = logging.getLogger(__name__)

URIS_DIR = "uris"
# What identifies a version of an object, per store: s3 (ETag, VersionId, LastModified),
# https (ETag, Last-Modified, Content-MD5), local-like stores (mtime), gcs (md5Hash, generation).
VERSION_FIELDS = ("VersionId", "ETag", "LastModified", "Last-Modified", "Content-MD5", "mtime", "md5Hash", "generation")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a remote source: its path inside the source, its size and its version fields."""

    name: str
    relative: str
    size: int | None
    version: str


@dataclass(frozen=True)
class RemoteSource:
    """What a URI names: one file, or a folder (an object-store prefix) of files."""

    uri: str
    is_folder: bool
    files: tuple[RemoteFile, ...]

    @property
    def key(self) -> str:
        """The cache key: the URI plus every file's size and version, hashed."""
        listing = [(f.relative, f.size, f.version) for f in self.files]
        text = json.dumps({"uri": self.uri, "folder": self.is_folder, "files": listing}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:40]


class DownloadError(StorageError):
    """An input URI could not be downloaded; `reason` says whether retrying can help."""


def _download_error(err: BaseException, uri: str, field: str, *, listed: bool = False) -> DownloadError:
    """Explain `err`; only a source missing when listed is the recipe's fault (once listed, it vanished)."""
    message, missing = explain(err, uri, field, "download")
    if missing and not listed:
        return DownloadError(message, reason=TerminationReason.INPUT_NOT_FOUND, exit_code=ExitCode.INVALID)
    return DownloadError(message, reason=TerminationReason.DOWNLOAD_FAILED, exit_code=ExitCode.FAILED)


def _version(info: dict[str, Any]) -> str:
    return ";".join(f"{name}={info[name]}" for name in VERSION_FIELDS if info.get(name) not in (None, ""))


def describe(fs: AbstractFileSystem, path: str, uri: str) -> RemoteSource:
    """List what `path` names in `fs`: one metadata request for a file, a listing for a folder."""
    info = fs.info(path)
    if info.get("type") != "directory":
        name = str(info.get("name", path))
        # A URL's query (a presigned signature) is no part of the file's name.
        relative = PurePosixPath(urlsplit(name).path if "://" in name else name).name or "data"
        entry = RemoteFile(name, relative, info.get("size"), _version(info))
        return RemoteSource(uri, False, (entry,))
    root = str(info.get("name", path)).rstrip("/")
    found = fs.find(path, detail=True)
    files = tuple(
        RemoteFile(name, name[len(root) :].lstrip("/"), item.get("size"), _version(item))
        for name, item in sorted(found.items())
        if item.get("type") != "directory" and not name.endswith("/")
    )
    if not files:
        raise FileNotFoundError(f"{uri} is an empty folder")
    return RemoteSource(uri, True, files)


@contextmanager
def cache_lock(lock_file: Path) -> Iterator[None]:
    """Hold an inter-process (and inter-pod, on shared volumes) lock; waits as long as the holder downloads."""
    from filelock import FileLock

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    # Group-writable, as huggingface_hub does, so jobs running as other uids can share a cache.
    with FileLock(str(lock_file), mode=0o664):
        yield


def _local_path(folder: Path, source: RemoteSource) -> Path:
    return folder if source.is_folder else folder / source.files[0].relative


def _download(fs: AbstractFileSystem, source: RemoteSource, staging: Path) -> None:
    """Copy every file of `source` into `staging`, checking each size against the listing."""
    for entry in source.files:
        target = staging / entry.relative
        target.parent.mkdir(parents=True, exist_ok=True)
        # One get_file per listed file: fs.get() would list and stat the source again.
        fs.get_file(entry.name, str(target))
        got = target.stat().st_size
        if entry.size is not None and got != entry.size:
            raise OSError(f"{entry.relative}: got {got} bytes of {entry.size}; the transfer was cut short")


def fetch(uri: str, cache_root: Path, *, field: str) -> Path:
    """The local copy of `uri` under `cache_root`, downloading it once per content.

    Returns the file (keeping its name, whose extension says its type) or the folder.
    Raises DownloadError: reason InputNotFound (exit 2) or DownloadFailed (exit 1).
    """
    fs, path = filesystem(uri, field)
    try:
        source = describe(fs, path, uri)
    except Exception as err:  # noqa: BLE001 - any store error becomes one explained line
        raise _download_error(err, uri, field) from err
    uris = Path(cache_root) / URIS_DIR
    final = uris / source.key
    if final.exists():  # the rename below is atomic: existing means complete
        log.info("%s %s: reusing the cached copy %s", field, uri, final)
        return _local_path(final, source)
    _check_writable(uris, uri, field)
    try:
        with cache_lock(uris / f"{source.key}.lock"):
            if not final.exists():  # another process may have filled it while we waited
                _fill(fs, source, uris, final)
    except Exception as err:  # noqa: BLE001
        raise _download_error(err, uri, field, listed=True) from err
    return _local_path(final, source)


def _check_writable(uris: Path, uri: str, field: str) -> None:
    """Refuse early, and say why, when the cache cannot take a download (a read-only shared cache)."""
    try:
        uris.mkdir(parents=True, exist_ok=True)
        probe = uris / f".probe-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as err:  # EACCES, EROFS: told apart from the store's own access errors
        raise DownloadError(
            f"{field} {uri}: not in the cache, and the cache {uris} is not writable ({err.strerror or err}); "
            "a read-only model cache must already hold the model: fill it from a job whose claim is writable",
            reason=TerminationReason.DOWNLOAD_FAILED,
            exit_code=ExitCode.FAILED,
        ) from err


def _fill(fs: AbstractFileSystem, source: RemoteSource, uris: Path, final: Path) -> None:
    """Download into a staging folder beside `final` and rename it into place (we hold the key's lock)."""
    for stale in uris.glob(f".partial-{source.key}-*"):  # left by a process that died mid-download
        shutil.rmtree(stale, ignore_errors=True)
    staging = uris / f".partial-{source.key}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        size = sum(f.size or 0 for f in source.files)
        log.info("downloading %s (%d files, %d bytes) into %s", source.uri, len(source.files), size, final)
        _download(fs, source, staging)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- the recipe's inputs


def workspace_cache(workspace: str | os.PathLike[str]) -> Path:
    """Where URI downloads of a job go: the workspace's cache folder (on the PVC in a pod)."""
    return Path(cache_dir(str(workspace)))


def model_cache(workspace: str | os.PathLike[str]) -> Path:
    """The base-model cache: the shared `model.cacheClaim` mount when the operator set one, else the workspace's."""
    shared = os.environ.get(Env.MODEL_CACHE)
    return Path(shared) if shared else workspace_cache(workspace)


def configmap_dataset_path(spec: DatasetSpec) -> Path:
    """The file `dataset.configMap` is mounted as (its key's name under the operator's mount)."""
    assert spec.config_map is not None
    folder = Path(os.environ.get(Env.DATASET_DIR, DATASET_CONFIGMAP_DIR))
    path = folder / spec.config_map.key
    if not path.is_file():
        raise DownloadError(
            f"dataset.configMap {spec.config_map.name}/{spec.config_map.key}: no such ConfigMap or key (nothing at "
            f"{path}); create it in the FineTuneJob's namespace: kubectl create configmap {spec.config_map.name} "
            f"--from-file={spec.config_map.key}=<file> (kubetune run has no ConfigMaps: use dataset.path there)",
            reason=TerminationReason.INPUT_NOT_FOUND,
            exit_code=ExitCode.INVALID,
        )
    return path


def localize_dataset(spec: DatasetSpec, workspace: str | os.PathLike[str]) -> str | None:
    """`dataset.path` as a path in this pod: a URI is downloaded, a ConfigMap key found; else unchanged."""
    if spec.config_map is not None:
        return str(configmap_dataset_path(spec))
    if spec.path is not None and is_uri(spec.path):
        return str(fetch(spec.path, workspace_cache(workspace), field="dataset.path"))
    return spec.path


def localize_model(spec: ModelSpec, workspace: str | os.PathLike[str]) -> str:
    """`model.name` as a hub id or a folder in this pod: a URI is downloaded into the model cache.

    With `model.ggufFile`, only that file is fetched (`<name>/<ggufFile>`), so an `https://`
    folder works too; otherwise the URI names a checkpoint folder (an object-store prefix).
    """
    if not is_uri(spec.name):
        return spec.name
    cache = model_cache(workspace)
    if spec.gguf_file:
        file = fetch(f"{spec.name.rstrip('/')}/{spec.gguf_file}", cache, field="model.name")
        return str(file.parent)
    if scheme(spec.name) in ("http", "https"):
        raise DownloadError(
            f"model.name {spec.name}: an http(s) URI names single files, not a checkpoint folder; set "
            "model.ggufFile to fetch one GGUF file, or use an s3:// prefix",
            reason=TerminationReason.INVALID_RECIPE,
            exit_code=ExitCode.INVALID,
        )
    return str(fetch(spec.name, cache, field="model.name"))


def local_inputs(spec: FineTuneJobSpec, workspace: str | os.PathLike[str]) -> FineTuneJobSpec:
    """`spec` with its dataset and base model as this pod sees them: URIs downloaded, a ConfigMap key found.

    The trainer calls this before loading anything; the rest of it then only meets local
    paths and hub ids. Raises DownloadError.
    """
    dataset = spec.dataset
    if dataset.config_map is not None or (dataset.path is not None and is_uri(dataset.path)):
        dataset = dataset.model_copy(update={"path": localize_dataset(dataset, workspace), "config_map": None})
    model = spec.model
    if is_uri(model.name):
        model = model.model_copy(update={"name": localize_model(model, workspace)})
    return spec.model_copy(update={"dataset": dataset, "model": model})
