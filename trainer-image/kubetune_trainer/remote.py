"""Object storage and web files through fsspec: build the filesystem for a URI, and explain its failures.

fsspec gives one API over `s3://` (s3fs), `https://` (aiohttp), `hf://` (huggingface_hub),
and `gs://`/`az://` where gcsfs/adlfs are installed. Credentials come from the pod's env the
way every AWS tool reads them (botocore): AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for an
S3-compatible store such as MinIO; a FineTuneJob feeds them through `spec.env`/`envFrom`
from a Secret, or through its service account (workload identity).

Failures become a `StorageError` carrying the termination message's `reason` and the
launcher's exit code: a missing input is the recipe's fault (exit 2, never retried);
denied access, missing credentials and network trouble may heal (exit 1, retried), and so
may any failed upload (`UploadFailed`). No torch here.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from kubetune_api.conditions import TerminationReason
from kubetune_api.contract import ExitCode

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

URI_PATTERN = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
NOT_REMOTE = ("pkg", "file")  # pkg:// is a wheel's folder (model.py); file:// is a local path

# The package that brings each scheme to fsspec, for the "install it" hint.
SCHEME_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "hf": "huggingface_hub"}

CREDENTIAL_HINT = (
    "give the trainer credentials through spec.env/envFrom from a Secret (AWS_ACCESS_KEY_ID, "
    "AWS_SECRET_ACCESS_KEY; AWS_ENDPOINT_URL for MinIO) or a service account with access"
)


class StorageError(Exception):
    """A download or upload that failed; `reason` and `exit_code` go into the termination message."""

    def __init__(self, message: str, *, reason: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments defeat Exception's default pickling, and an exception that
        # cannot be unpickled hangs a multiprocessing pool that tries to return it.
        return (_rebuild, (type(self), str(self), self.reason, self.exit_code))


def _rebuild(cls: type[StorageError], message: str, reason: str, exit_code: ExitCode) -> StorageError:
    error = cls.__new__(cls)
    StorageError.__init__(error, message, reason=reason, exit_code=exit_code)
    return error


def scheme(uri: str) -> str | None:
    """The URI's scheme (`s3`, `https`, …), or None for a plain path."""
    match = URI_PATTERN.match(uri)
    return match.group(1).lower() if match else None


def is_uri(value: str) -> bool:
    """Whether `value` names something to download rather than a path in the pod."""
    found = scheme(value)
    return found is not None and found not in NOT_REMOTE


def filesystem(uri: str, field: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path inside it, with caches off so every call sees the store.

    Raises StorageError (exit 2) when no installed package serves the scheme.
    """
    import fsspec

    # Listing caches would hide an object replaced between attempts; instance caching would
    # keep credentials from an earlier env.
    options: dict[str, Any] = {"skip_instance_cache": True}
    if scheme(uri) == "s3":
        options["use_listings_cache"] = False
    try:
        return fsspec.core.url_to_fs(uri, **options)
    except (ImportError, ValueError) as err:
        package = SCHEME_PACKAGES.get(scheme(uri) or "", "the fsspec implementation of that scheme")
        raise StorageError(
            f"{field} {uri}: the trainer image cannot read {scheme(uri)}:// URIs ({_first_line(err)}); "
            f"install {package} in the image or use s3:// or https://",
            reason=TerminationReason.INVALID_RECIPE,
            exit_code=ExitCode.INVALID,
        ) from None


def explain(err: BaseException, uri: str, field: str, doing: str) -> tuple[str, bool]:
    """A one-line message for a failed transfer, and whether the cause is missing data (not retryable)."""
    err = _http_cause(err)
    name = type(err).__name__
    detail = _first_line(err) or name
    status = getattr(err, "status", None)
    if isinstance(err, FileNotFoundError) or status in (404, 410):
        return f"{field} {uri}: {doing} failed: it does not exist ({detail}); fix the URI or create it", True
    denied = status in (401, 403) or name in ("NoCredentialsError", "PartialCredentialsError")
    if isinstance(err, PermissionError) or denied:
        return f"{field} {uri}: {doing} failed: access denied ({detail}); {CREDENTIAL_HINT}", False
    return f"{field} {uri}: {doing} failed: {name}: {detail}", False


def _http_cause(err: BaseException) -> BaseException:
    """fsspec's HTTP filesystem reports every failed request as FileNotFoundError; its cause says what it was."""
    cause = err.__cause__
    if isinstance(err, FileNotFoundError) and cause is not None and type(cause).__module__.startswith("aiohttp"):
        return cause
    return err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""
