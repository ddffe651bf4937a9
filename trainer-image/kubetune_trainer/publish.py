"""Outputs by URI: upload a finished result to object storage or the Hugging Face Hub, resumably and verified.

    uri = publish_result(spec, output_dir, job_name="quiz", metrics={"loss": 1.2})  # None without output.uri

What goes up (the same layout everywhere; `PeftModel.from_pretrained(repo, subfolder="adapter")`
loads it from the Hub):

    <uri>/adapter/...        the LoRA adapter and the tokenizer
    <uri>/merged/...         the merged model (output.mergeAdapter)
    <uri>/tensorboard/...    the TensorBoard event files of the run
    <uri>/<name>.tar.gz      the archive (output.archive), and the result's small top-level files
    <uri>/kubetune.json      recipe, metrics summary, library versions, every file's size and sha256; last

Resumable: the store is listed first and files it already holds with the same size and
checksum are skipped, so a retried attempt sends only what is missing. Verified: the store
is listed again afterwards and every file must show the local size and checksum — the S3
ETag (the MD5 of the object, or of its parts for multipart uploads; stores that encrypt
with KMS report opaque ETags, and then only sizes are compared), the Hub's LFS sha256 or
git blob id. Any failure is an `UploadError` (reason UploadFailed, exit 1: retried), and
nothing local is ever deleted. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kubetune_api.conditions import TerminationReason
from kubetune_api.contract import ExitCode
from kubetune_trainer.remote import StorageError, explain, filesystem, scheme

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from kubetune_api.recipe import FineTuneJobSpec

log = logging.getLogger(__name__)

SUMMARY_FILE = "kubetune.json"
RESULT_DIRS = ("adapter", "merged", "tensorboard")  # the logs too: the curves stay with the model
RESULT_SUFFIXES = (".tar.gz", ".json", ".jsonl", ".md", ".txt")  # archive, samples, summaries
S3_PART_SIZE = 64 * 2**20
"""Multipart part size for S3 uploads; also how the expected multipart ETag is computed."""
VERSIONED_PACKAGES = ("kubetune", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes")
MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")
READ_CHUNK = 4 * 2**20


class UploadError(StorageError):
    """The result could not be uploaded or verified; retryable, and the local result is untouched."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=TerminationReason.UPLOAD_FAILED, exit_code=ExitCode.FAILED)


# ---------------------------------------------------------------- local files and their digests


@dataclass(frozen=True)
class LocalFile:
    """A file to upload: where it is, its name at the destination, size and content digests."""

    path: Path
    remote: str
    size: int
    sha256: str
    md5: str
    part_md5s: tuple[bytes, ...]
    git_sha1: str

    @property
    def multipart_etag(self) -> str:
        """The ETag S3 gives a multipart upload of this file in S3_PART_SIZE parts."""
        return f"{hashlib.md5(b''.join(self.part_md5s)).hexdigest()}-{len(self.part_md5s)}"


def digest(path: Path, remote: str) -> LocalFile:
    """Read `path` once and compute every checksum a store may report (sha256, md5, S3 parts, git blob)."""
    size = path.stat().st_size
    sha256, md5, part, parts = hashlib.sha256(), hashlib.md5(), hashlib.md5(), []
    # The git blob id is the Hub's checksum of files not stored in LFS: sha1 of a header and the content.
    git = hashlib.sha1(f"blob {size}\0".encode())
    in_part = 0
    with path.open("rb") as stream:
        while chunk := stream.read(min(READ_CHUNK, S3_PART_SIZE - in_part)):
            for hasher in (sha256, md5, part, git):
                hasher.update(chunk)
            in_part += len(chunk)
            if in_part == S3_PART_SIZE:
                parts.append(part.digest())
                part, in_part = hashlib.md5(), 0
    if in_part or not parts:
        parts.append(part.digest())
    return LocalFile(path, remote, size, sha256.hexdigest(), md5.hexdigest(), tuple(parts), git.hexdigest())


def result_files(output_dir: Path) -> list[tuple[Path, str]]:
    """The result's files under `output_dir` with their destination names; never checkpoints or partial writes."""
    found: list[tuple[Path, str]] = []
    for entry in sorted(output_dir.iterdir()):
        if entry.name.startswith(".") or entry.name.endswith(".partial") or entry.name == SUMMARY_FILE:
            continue
        if entry.is_dir() and entry.name in RESULT_DIRS:
            found += [(f, f.relative_to(output_dir).as_posix()) for f in sorted(entry.rglob("*")) if f.is_file()]
        elif entry.is_file() and entry.name.endswith(RESULT_SUFFIXES):
            found.append((entry, entry.name))
    return found


def package_versions(names: Iterable[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that made the result, read from metadata (nothing is imported)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_summary(
    output_dir: Path, files: list[LocalFile], *, spec: FineTuneJobSpec, job_name: str, metrics: Mapping[str, Any]
) -> Path:
    """Write kubetune.json beside the result (atomically) and return its path."""
    summary = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJobResult",
        "finetunejob": job_name,
        "baseModel": spec.model.name,
        "recipe": spec.to_api(),
        "metrics": dict(metrics),
        "versions": package_versions(),
        "files": [{"path": f.remote, "size": f.size, "sha256": f.sha256} for f in files],
    }
    target = output_dir / SUMMARY_FILE
    staging = target.with_name(f".{SUMMARY_FILE}.tmp")
    staging.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(staging, target)
    return target


# ---------------------------------------------------------------- destinations


@dataclass(frozen=True)
class RemoteState:
    """What the destination reports for one file: size and checksum (an S3 ETag, an LFS sha256 or a git id)."""

    size: int | None
    etag: str | None = None
    lfs_sha256: str | None = None
    git_id: str | None = None


class Destination(Protocol):
    """Where a result goes: list what is there, upload files, and judge whether a stored file is ours."""

    uri: str

    def state(self) -> dict[str, RemoteState]:
        """Destination name → what the store holds under that name."""
        ...

    def upload(self, files: list[LocalFile]) -> None:
        """Send `files` (in order)."""
        ...

    def holds(self, local: LocalFile, remote: RemoteState | None) -> bool:
        """Whether `remote` is `local`'s content, as far as the store's checksums tell."""
        ...


@dataclass
class FsspecDestination:
    """Object storage through fsspec: s3 (ETag-verified), gs/az (size-verified)."""

    uri: str
    fs: AbstractFileSystem
    root: str

    def state(self) -> dict[str, RemoteState]:
        """Every object under the prefix; nothing when the prefix does not exist yet."""
        if not self.fs.exists(self.root):
            self.fs.info(self.root.split("/")[0])  # a missing bucket must fail here, not look empty
            return {}
        listing = self.fs.find(self.root, detail=True)
        root = self.root.rstrip("/") + "/"
        return {
            name[len(root) :]: RemoteState(item.get("size"), str(item.get("ETag", "")).strip('"').lower() or None)
            for name, item in listing.items()
            if name.startswith(root) and item.get("type") != "directory"
        }

    def upload(self, files: list[LocalFile]) -> None:
        """Put each file; S3 gets the part size the expected multipart ETag assumes."""
        extra = {"chunksize": S3_PART_SIZE} if scheme(self.uri) == "s3" else {}
        for file in files:
            log.info("uploading %s (%d bytes) to %s/%s", file.path, file.size, self.uri, file.remote)
            self.fs.put_file(str(file.path), f"{self.root.rstrip('/')}/{file.remote}", **extra)

    def holds(self, local: LocalFile, remote: RemoteState | None) -> bool:
        """Same size, and an MD5-shaped ETag equal to the single-part or multipart one of the local file."""
        if remote is None or remote.size != local.size:
            return False
        if remote.etag and MD5_ETAG.match(remote.etag):
            return remote.etag in (local.md5, local.multipart_etag)
        return True  # opaque ETag (SSE-KMS) or a store without one: size is all there is


@dataclass
class HubDestination:
    """A Hugging Face model repo (`hf://owner/repo`), written in one commit with HF_TOKEN."""

    uri: str
    repo_id: str
    api: Any = field(default=None)

    def __post_init__(self) -> None:
        if self.api is None:
            from huggingface_hub import HfApi

            self.api = HfApi()  # reads HF_TOKEN (and HF_ENDPOINT) from the env

    def state(self) -> dict[str, RemoteState]:
        """Every file in the repo (created private if it does not exist)."""
        self.api.create_repo(self.repo_id, repo_type="model", private=True, exist_ok=True)
        state = {}
        for item in self.api.list_repo_tree(self.repo_id, recursive=True):
            if getattr(item, "size", None) is None or not hasattr(item, "blob_id"):
                continue  # a folder
            lfs = getattr(item, "lfs", None)
            state[item.path] = RemoteState(item.size, lfs_sha256=lfs.sha256 if lfs else None, git_id=item.blob_id)
        return state

    def upload(self, files: list[LocalFile]) -> None:
        """One commit with every file: the repo never shows half a result."""
        self.api.create_commit(
            self.repo_id,
            operations=hub_operations(files),
            commit_message=f"KubeTune result ({len(files)} files)",
        )

    def holds(self, local: LocalFile, remote: RemoteState | None) -> bool:
        """Same size and the LFS sha256 (large files) or git blob id (small ones)."""
        if remote is None or remote.size != local.size:
            return False
        if remote.lfs_sha256:
            return remote.lfs_sha256 == local.sha256
        return remote.git_id == local.git_sha1


def hub_operations(files: list[LocalFile]) -> list[Any]:
    """The Hub commit's operations: one CommitOperationAdd per file, at its destination name."""
    from huggingface_hub import CommitOperationAdd

    return [CommitOperationAdd(path_in_repo=f.remote, path_or_fileobj=str(f.path)) for f in files]


def open_destination(uri: str) -> Destination:
    """The destination `output.uri` names; hf:// needs HF_TOKEN."""
    if scheme(uri) == "hf":
        if not os.environ.get("HF_TOKEN"):
            raise UploadError(
                f"output.uri {uri}: no HF_TOKEN in the trainer's env; put a Hub token with write access in a "
                "Secret and pass it as HF_TOKEN through spec.env (or model.tokenSecretRef)"
            )
        return HubDestination(uri, uri.removeprefix("hf://").strip("/"))
    fs, root = filesystem(uri, "output.uri")
    return FsspecDestination(uri, fs, root.rstrip("/"))


# ---------------------------------------------------------------- the flow


@dataclass(frozen=True)
class Published:
    """The outcome of an upload: the URI, and which files were sent and which were already there."""

    uri: str
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]


def upload(destination: Destination, files: list[LocalFile]) -> Published:
    """Send what the destination lacks (the summary last), then check that it holds every file."""
    before = destination.state()
    missing = [f for f in files if not destination.holds(f, before.get(f.remote))]
    # kubetune.json goes last: its presence at the destination means the rest got there first.
    missing.sort(key=lambda f: f.remote == SUMMARY_FILE)
    if missing:
        destination.upload(missing)
    after = destination.state()
    wrong = [f.remote for f in files if not destination.holds(f, after.get(f.remote))]
    if wrong:
        raise UploadError(
            f"output.uri {destination.uri}: verification failed: the store does not show the local size/checksum "
            f"for {', '.join(wrong[:5])}{' …' if len(wrong) > 5 else ''}; the local result is kept"
        )
    sent = tuple(f.remote for f in missing)
    return Published(destination.uri, sent, tuple(f.remote for f in files if f.remote not in sent))


def publish_result(
    spec: FineTuneJobSpec,
    output_dir: Path,
    *,
    job_name: str,
    metrics: Mapping[str, Any] | None = None,
    destination: Destination | None = None,
) -> Published | None:
    """Upload the result under `output_dir` to `output.uri` (None when unset); raises UploadError.

    Writes kubetune.json into `output_dir` first, so the PVC's copy carries the same summary.
    """
    uri = spec.output.uri
    if not uri:
        return None
    output_dir = Path(output_dir)
    try:
        files = [digest(path, remote) for path, remote in result_files(output_dir)]
        if not files:
            raise UploadError(f"output.uri {uri}: {output_dir} holds no result to upload (no adapter/ folder)")
        summary = write_summary(output_dir, files, spec=spec, job_name=job_name, metrics=metrics or {})
        files.append(digest(summary, SUMMARY_FILE))
        published = upload(destination or open_destination(uri), files)
    except StorageError as err:
        if isinstance(err, UploadError):
            raise
        raise UploadError(str(err)) from err
    except Exception as err:  # noqa: BLE001 - any store or network error becomes one explained line
        message, _ = explain(err, uri, "output.uri", "upload")
        raise UploadError(f"{message}; the local result in {output_dir} is kept") from err
    sent, kept = len(published.uploaded), len(published.skipped)
    log.info("uploaded the result to %s: %d files sent, %d already there", uri, sent, kept)
    return published


def publish_outputs(
    spec: FineTuneJobSpec, output_dir: Path, *, job_name: str, metrics: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The termination message's output entries for the upload: `{"uri": …}` once verified, {} without output.uri."""
    published = publish_result(spec, output_dir, job_name=job_name, metrics=metrics)
    return {"uri": published.uri} if published is not None else {}
