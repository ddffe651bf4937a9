"""Training data: load `dataset` of a FineTuneJob and turn its rows into TRL examples.

    data = load_training_data(job.spec.dataset, tokenizer, base_dir=manifest_dir)
    trainer = SFTTrainer(..., train_dataset=data.train, eval_dataset=data.validation)

Sources: a hub id (`dataset.name`, through `datasets.load_dataset`) or a file or
folder (`dataset.path`: jsonl, json, csv, parquet; a folder holds files of one type;
`dataset.split` applies to hub datasets only).
Rows become TRL "standard" examples (`prompt`/`completion`, `text`, or
`prompt`/`chosen`/`rejected`); `kubetune_trainer.formats` renders them.
`maxSamples` keeps the first N rows, then `validationSplit` holds out a seeded
fraction of the examples.

Bad data fails here, before any model is loaded, with one `DataError` line that
names the file, the line (JSONL) or row, and the column, and lists the columns
that exist. Files are checked line by line before `datasets` reads them, because
its own errors name neither the line nor, often, the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_api.conditions import TerminationReason
from kubetune_api.contract import ExitCode, local_path
from kubetune_trainer.formats import FormatError, make_renderer
from kubetune_api.recipe import DatasetFormat, DatasetSpec
from kubetune_trainer.remote import StorageError

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

# File suffix → the `datasets` builder that reads it.
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DataError(ValueError):
    """Bad data: a one-line reason naming file, line/row and column, listing the columns that exist."""


class InputNotFound(StorageError):
    """`dataset.path` names nothing (yet): exit 2 with reason InputNotFound, which the operator retries
    for a while (the data may still be on its way to the volume) instead of failing at once."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=TerminationReason.INPUT_NOT_FOUND, exit_code=ExitCode.INVALID)

    def __reduce__(self) -> tuple[Any, ...]:
        return (InputNotFound, (str(self),))


@dataclass
class TrainingData:
    """The rendered examples: `train`, and `validation` unless `validationSplit` is 0."""

    train: datasets.Dataset
    validation: datasets.Dataset | None


def load_training_data(
    spec: DatasetSpec, tokenizer: Any, *, base_dir: Path | None = None, cache_dir: str | None = None
) -> TrainingData:
    """Load `spec`'s rows, render them for `tokenizer` and split off the validation set.

    `base_dir` resolves a relative `dataset.path` (the manifest's folder locally); `cache_dir` is
    where `datasets` keeps its Arrow files (on the PVC in the pod). Raises DataError.
    """
    rows, origin = _load_rows(spec, base_dir, cache_dir)
    if len(rows) == 0:
        raise DataError(f"{origin.name}: the dataset has no rows")
    if spec.max_samples is not None and spec.max_samples < len(rows):
        rows = rows.select(range(spec.max_samples))
    examples = _render(spec, tokenizer, rows, origin)
    log.info("dataset %s: %d rows → %d examples (%s)", origin.name, len(rows), len(examples), spec.format.value)
    return _split(spec, examples, origin)


# ---------------------------------------------------------------- where rows came from


@dataclass
class _Part:
    """One file (or hub split) of the rows, to name a row in error messages."""

    name: str
    rows: int
    lines: list[int] | None = None  # JSONL: the line number of each row


@dataclass
class _Origin:
    """All parts, in row order."""

    name: str
    parts: list[_Part] = field(default_factory=list)

    def where(self, index: int) -> str:
        """`file line N` (JSONL) or `file row N` for the row at `index` of the concatenated rows."""
        for part in self.parts:
            if index < part.rows:
                return f"{part.name} line {part.lines[index]}" if part.lines else f"{part.name} row {index + 1}"
            index -= part.rows
        return f"{self.name} row {index + 1}"


# ---------------------------------------------------------------- loading


def _load_rows(spec: DatasetSpec, base_dir: Path | None, cache_dir: str | None) -> tuple[datasets.Dataset, _Origin]:
    if spec.name is not None:
        return _load_hub(spec, cache_dir)
    assert spec.path is not None  # DatasetSpec's validator: exactly one of name and path
    return _load_path(_resolve(spec.path, base_dir), cache_dir)


def _load_hub(spec: DatasetSpec, cache_dir: str | None) -> tuple[datasets.Dataset, _Origin]:
    """`dataset.name` through `datasets.load_dataset`; only "no such dataset/split" is bad data."""
    import datasets

    name = f"dataset.name {spec.name}" + (f" ({spec.subset})" if spec.subset else "")
    try:
        rows = datasets.load_dataset(spec.name, spec.subset, split=spec.split, cache_dir=cache_dir)
    except FileNotFoundError as err:  # datasets' DatasetNotFoundError and a missing local folder
        raise DataError(
            f"{name}: no such dataset ({_first_line(err)}); check the id, or tokenSecretRef for a gated one"
        ) from None
    except ValueError as err:  # unknown split or subset
        raise DataError(f"{name}: {_first_line(err)}") from None
    part = _Part(f"{name} split {spec.split}", len(rows))
    return rows, _Origin(name, [part])


def _resolve(path: str, base_dir: Path | None) -> Path:
    resolved = local_path(path, base_dir, or_hub_id=False)
    assert resolved is not None  # a dataset.path is never a hub id
    if not resolved.exists():
        raise InputNotFound(
            f"dataset.path {resolved}: no such file or folder; put the data there (a copy in progress is waited for "
            "on a cluster), or fetch it from a URI (https://, s3://), a ConfigMap or the Hub (dataset.name)"
        )
    return resolved


def _load_path(path: Path, cache_dir: str | None) -> tuple[datasets.Dataset, _Origin]:
    """A file, or every data file of one type in a folder, each checked and then read by `datasets`."""
    import datasets

    files = _data_files(path)
    origin = _Origin(f"dataset.path {path}")
    tables = []
    for file in files:
        lines = _check_file(file)
        table = _read_file(file, cache_dir)
        origin.parts.append(_Part(str(file), len(table), lines))
        tables.append(table)
    if len(tables) == 1:
        return tables[0], origin
    try:
        return datasets.concatenate_datasets(tables), origin
    except ValueError as err:
        columns = "; ".join(f"{f.name}: {', '.join(t.column_names)}" for f, t in zip(files, tables, strict=True))
        raise DataError(
            f"dataset.path {path}: the files do not share their columns ({columns}): {_first_line(err)}"
        ) from None


def _data_files(path: Path) -> list[Path]:
    """The files to read: `path` itself, or a folder's visible files, all of one supported type."""
    if path.is_file():
        _builder(path)
        return [path]
    try:
        entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as err:
        raise DataError(f"dataset.path {path}: cannot read the folder ({err.strerror})") from None
    files = [p for p in entries if p.suffix.lower() in BUILDERS]
    suffixes = sorted({p.suffix.lower() for p in files})
    if not files:
        raise DataError(
            f"dataset.path {path}: the folder holds no {', '.join(BUILDERS)} files (subfolders are not searched)"
        )
    if len({BUILDERS[s] for s in suffixes}) > 1:
        raise DataError(f"dataset.path {path}: the folder mixes file types ({', '.join(suffixes)}); keep one type")
    return files


def _builder(file: Path) -> str:
    try:
        return BUILDERS[file.suffix.lower()]
    except KeyError:
        raise DataError(
            f"dataset.path {file}: unsupported file type {file.suffix or '(none)'!r}; use {', '.join(BUILDERS)}"
        ) from None


def _read_file(file: Path, cache_dir: str | None) -> datasets.Dataset:
    import datasets

    try:
        return datasets.load_dataset(_builder(file), data_files=str(file), split="train", cache_dir=cache_dir)
    except (datasets.exceptions.DatasetsError, ValueError, OSError) as err:
        cause = err.__cause__ or err  # DatasetGenerationError wraps the reader's own error
        raise DataError(f"{file}: cannot read it as {file.suffix[1:]}: {_first_line(cause)}") from None


# ---------------------------------------------------------------- checking files


def _check_file(file: Path) -> list[int] | None:
    """Check that `file` decodes (and parses, for JSON); return the JSONL line number of each row."""
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        _ensure_readable(file)  # parquet's own reader checks the rest
        return None
    if suffix == ".json":
        return _check_json(file)
    if suffix == ".jsonl":
        lines = _check_jsonl(file)
        if not lines:
            raise DataError(f"{file}: the file has no rows")
        return lines
    # csv: decoding finds undecodable bytes with their line; a header alone is no data
    if sum(1 for _, text in _decoded_lines(file) if text.strip()) < 2:
        raise DataError(f"{file}: the file has no rows (a header line at most)")
    return None


def _ensure_readable(file: Path) -> None:
    try:
        with file.open("rb"):
            pass
    except OSError as err:
        raise DataError(f"dataset.path {file}: cannot read it ({err.strerror})") from None


def _decoded_lines(file: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line; bytes that are not UTF-8 are an error naming the line."""
    _ensure_readable(file)
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{file} line {number}: byte 0x{raw[err.start]:02x} at column {err.start + 1} is not UTF-8; "
                    "save the file as UTF-8"
                ) from None


def _check_jsonl(file: Path) -> list[int]:
    """Every non-blank line must be one JSON object (a truncated last line is the usual culprit)."""
    lines = []
    for number, text in _decoded_lines(file):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{file} line {number}: invalid JSON ({err.msg}, column {err.colno}); a truncated or broken "
                "line? fix or delete it"
            ) from None
        if not isinstance(value, dict):
            raise DataError(f"{file} line {number}: expected a JSON object {{...}}, got {type(value).__name__}")
        lines.append(number)
    return lines


def _check_json(file: Path) -> list[int] | None:
    """A `.json` file is a list of objects, or JSON Lines under a .json name (which `datasets` also reads)."""
    text = "".join(line for _, line in _decoded_lines(file))
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # more than one top-level value: JSON Lines
            return _check_jsonl(file)
        raise DataError(f"{file} line {err.lineno}: invalid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise DataError(f"{file}: expected a JSON list of objects [{{...}}, ...] or JSON Lines")
    if not value:
        raise DataError(f"{file}: the file has no rows")
    return None


# ---------------------------------------------------------------- rendering and splitting


def _render(spec: DatasetSpec, tokenizer: Any, rows: datasets.Dataset, origin: _Origin) -> datasets.Dataset:
    """Every group of rows through the format's renderer, as a new in-memory dataset."""
    import datasets

    try:
        render = make_renderer(spec, tokenizer, rows.column_names)
    except FormatError as err:
        raise DataError(f"{origin.name}: {err}") from None
    size = spec.template.group_size if spec.template is not None and spec.format is DatasetFormat.template else 1
    if len(rows) < size:
        raise DataError(f"{origin.name}: {len(rows)} rows, but template.groupSize {size} needs at least {size}")
    if len(rows) % size:
        left = len(rows) % size
        log.warning("%s: the last %d rows do not fill a group of %d and are left out", origin.name, left, size)
    examples: dict[str, list[str]] = {}
    for start, group in _groups(rows, size):
        try:
            example = render(group)
        except FormatError as err:
            group_note = f" (the group of {size} rows from there)" if size > 1 else ""
            raise DataError(f"{origin.where(start)}{group_note}: {err}") from None
        for key, value in example.items():
            examples.setdefault(key, []).append(value)
    return datasets.Dataset.from_dict(examples)


def _groups(rows: datasets.Dataset, size: int) -> Iterator[tuple[int, Sequence[dict[str, Any]]]]:
    """(index of the first row, rows) of each complete group of `size` consecutive rows."""
    group: list[dict[str, Any]] = []
    index = 0
    for batch in rows.iter(batch_size=1024):  # by batch: row-by-row iteration costs ~0.3 ms a row
        for values in zip(*batch.values(), strict=True):
            group.append(dict(zip(batch.keys(), values, strict=True)))
            index += 1
            if len(group) == size:
                yield index - size, group
                group = []


def _split(spec: DatasetSpec, examples: datasets.Dataset, origin: _Origin) -> TrainingData:
    """Hold out `validationSplit` of the examples, shuffled with `dataset.seed`."""
    if spec.validation_split == 0:
        return TrainingData(train=examples, validation=None)
    try:
        parts = examples.train_test_split(test_size=spec.validation_split, seed=spec.seed, shuffle=True)
    except ValueError:
        raise DataError(
            f"{origin.name}: too few examples ({len(examples)}) to hold out validationSplit "
            f"{spec.validation_split}; add rows or set dataset.validationSplit: 0"
        ) from None
    return TrainingData(train=parts["train"], validation=parts["test"])


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
