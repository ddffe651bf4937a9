"""The trainer process: one per GPU (or one on the CPU), started by the launcher.

    python -m kubetune_trainer.train --recipe /etc/kubetune/recipe.json --workspace /workspace \\
        --outcome-dir /tmp/kubetune-outcome

Flow: read the recipe → load tokenizer, data and model → resume from the newest
complete checkpoint → train with TRL's SFTTrainer (checkpoint marker, SIGTERM stop,
metrics and progress callbacks) → export adapter (merge, archive) and sample answers.
Each rank writes its outcome (`rank-<n>.json`) to the outcome folder, because torchrun
reports exit code 1 for every kind of failure; the launcher turns outcomes into the
documented exit code and the termination message.

`build_trainer` (the assembly step, `kubetune_trainer.assembly`) is the seam for the
objectives (SFT, distillation, DPO): it gets everything loaded and returns a Trainer; a
subclass with its own `compute_loss` can be returned instead of the SFTTrainer.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_api import contract
from kubetune_trainer import distributed, tracking
from kubetune_trainer.assembly import TrainerInputs, build_trainer
from kubetune_api.conditions import TerminationReason
from kubetune_api.contract import Env, ExitCode, InvalidInput
from kubetune_trainer.fetch import local_inputs
from kubetune_trainer.publish import publish_outputs
from kubetune_api.recipe import FineTuneJobSpec, RecipeError, parse_finetunejob, parse_spec
from kubetune_trainer.remote import StorageError
from kubetune_trainer.signals import StopRequest, stop_callback

if TYPE_CHECKING:
    from kubetune_trainer.checkpoints import ResumePoint
    from kubetune_trainer.model import ModelLoader, ModelSource

log = logging.getLogger("kubetune_trainer")

PROGRESS_ENV = "KUBETUNE_PROGRESS"
"""Set to 1 by `kubetune run`: rank 0 draws a progress bar instead of printing log lines."""
SUMMARY_FILE = "summary.json"
VOLUME_FULL_FREE_BYTES = 4 << 20
"""A failure with less free space than this on the workspace volume is the volume filling up."""


@dataclass
class Outcome:
    """What one rank ended with; the launcher reads it back from `rank-<n>.json`."""

    status: str  # succeeded, stopped, invalid, failed (ExitCode names, lower-case)
    message: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None
    output: dict[str, str] = field(default_factory=dict)
    reason: str | None = None  # the termination message's reason when not the exit code's (UploadFailed)

    @property
    def exit_code(self) -> ExitCode:
        """The documented exit code of this outcome."""
        return {"succeeded": ExitCode.SUCCESS, "stopped": ExitCode.STOPPED, "invalid": ExitCode.INVALID}.get(
            self.status, ExitCode.FAILED
        )

    def write(self, folder: Path, rank: int) -> None:
        """Write `rank-<rank>.json` into `folder` atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".rank-{rank}.json.tmp"
        tmp.write_text(json.dumps(self.__dict__, default=str), encoding="utf-8")
        tmp.replace(folder / f"rank-{rank}.json")


@dataclass(frozen=True)
class Job:
    """The recipe plus the names metrics are labelled with."""

    spec: FineTuneJobSpec
    name: str
    namespace: str


@dataclass(frozen=True)
class Workspace:
    """The folders of one run under the workspace (the PVC in a pod)."""

    root: Path

    @property
    def output(self) -> Path:
        """Results, logs and checkpoints."""
        return Path(contract.output_dir(str(self.root)))

    @property
    def checkpoints(self) -> Path:
        """checkpoint-<step> folders."""
        return Path(contract.checkpoints_dir(str(self.root)))

    @property
    def cache(self) -> str:
        """The Hugging Face cache (models, datasets)."""
        return contract.cache_dir(str(self.root))

    @property
    def models(self) -> str:
        """The base-model cache: the shared model.cacheClaim mount when the operator set one, else `cache`."""
        from kubetune_trainer.fetch import model_cache

        return str(model_cache(self.root))


def load_job(path: Path) -> Job:
    """Read recipe.json (a whole FineTuneJob, or just its spec); RecipeError names the field."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RecipeError(f"recipe {path}: cannot read it ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise RecipeError(f"recipe {path}: not JSON ({error})") from None
    if isinstance(document, dict) and "spec" in document:
        job = parse_finetunejob({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", **document})
        spec, name, namespace = job.spec, job.metadata.name, job.metadata.namespace
    else:
        spec, name, namespace = parse_spec(document), None, None
    return Job(
        spec=spec,
        name=os.environ.get(Env.JOB_NAME) or name or "local",
        namespace=os.environ.get(Env.NAMESPACE) or namespace or "default",
    )


def _quiet_libraries() -> None:
    """Library progress bars would interleave across ranks and drown the trainer's own log lines."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()


@dataclass(frozen=True)
class Loaded:
    """Everything `_load` read: where the model came from, its tokenizer, the data, the model and its loader."""

    source: ModelSource
    tokenizer: Any
    data: Any
    model: Any
    models: ModelLoader


def _load(job: Job, workspace: Workspace) -> Loaded:
    """Tokenizer, data and model in the training dtype; bad input raises InvalidInput."""
    from kubetune_trainer.data import DataError, load_training_data
    from kubetune_trainer.model import ModelError, ModelLoader, resolve_model_source

    spec = local_inputs(job.spec, workspace.root)  # URIs downloaded (once, cached), a ConfigMap key found
    models = ModelLoader.for_training(spec, workspace.models)
    try:
        source = resolve_model_source(spec.model)
        tokenizer = models.tokenizer(source, spec)
        data = load_training_data(spec.dataset, tokenizer, cache_dir=f"{workspace.cache}/datasets")
        model = models.model(source, spec)
    except (DataError, ModelError) as error:
        raise InvalidInput(str(error)) from error
    return Loaded(source, tokenizer, data, model, models)


def _callbacks(job: Job, stop: StopRequest) -> tuple[list[Any], Any, Any]:
    """The kubetune callbacks in the order they must run, the progress tracker and the metrics."""
    from kubetune_trainer.checkpoints import checkpoint_shape, complete_checkpoint_callback
    from kubetune_trainer.metrics import ProgressCallback, TrainerMetrics

    metrics = None
    listeners: tuple[Any, ...] = ()
    if distributed.is_global_zero():
        metrics = TrainerMetrics(job.name, job.namespace)
        metrics.serve(job.spec.metrics_port, os.environ.get(Env.METRICS_HOST, "0.0.0.0"))
        metrics.phase("loading")
        if os.environ.get(PROGRESS_ENV) == "1":
            from kubetune_trainer.console import ProgressBar

            listeners = (ProgressBar(),)
    progress = ProgressCallback(metrics, listeners)
    checkpoint = complete_checkpoint_callback(
        job.spec.training.save_total_limit, on_saved=progress.checkpoint_saved, shape=checkpoint_shape(job.spec)
    )
    # The stop callback first: it sets should_save, which the checkpoint timer then sees.
    return [stop_callback(stop), checkpoint, progress], progress, metrics


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the objects alive before training out of the garbage collector's full passes while it runs.

    torch, transformers, TRL and the loaded model leave millions of long-lived objects; every full
    collection walks them all. On an H200 the collector took 0.62 s between two 0.44 s steps of a
    1B model (bench/gpu_throughput.py's `gc_ms`). Frozen (CPython's `gc.freeze`), they are skipped;
    garbage made during training is still collected. Unfrozen at the end, so that a process that
    trains again (tests, notebooks) can free this run's model.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def train(job: Job, workspace: Workspace, stop: StopRequest) -> Outcome:
    """Load, train, export; returns this rank's outcome (InvalidInput for bad recipe/data)."""
    finished = _finished_or_refused(job, workspace)  # before torch loads: a rerun of a finished run is instant
    if finished is not None:
        return finished
    import torch

    from kubetune_trainer.checkpoints import checkpoint_shape, newest_complete, write_finished
    from kubetune_trainer.config import RunContext, build_sft_config

    _quiet_libraries()
    spec = job.spec
    callbacks, progress, metrics = _callbacks(job, stop)
    workspace.output.mkdir(parents=True, exist_ok=True)
    # TensorBoard events next to the results, not inside the checkpoints folder. Assigned, not
    # defaulted: a second run in the same process (tests, notebooks) must not log into the first's.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(workspace.output / "tensorboard")
    tracking.configure_trackers(spec.training.report_to, workspace.output, job.name)  # W&B/MLflow without a server
    loaded = _load(job, workspace)
    validation = loaded.data.validation
    context = RunContext(
        checkpoints_dir=str(workspace.checkpoints),
        dtype=loaded.models.dtype,
        has_validation=validation is not None and len(validation) > 0,
        on_cpu=not torch.cuda.is_available(),
    )
    config = build_sft_config(spec, context)  # initializes torch.distributed under torchrun
    trainer = build_trainer(
        TrainerInputs(spec, loaded.models, loaded.model, loaded.tokenizer, loaded.data, config, callbacks)
    )
    if os.environ.get(PROGRESS_ENV) == "1":
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    point = _resume_point(workspace)
    resume, said = point.checkpoint, _also(point.note)
    if stop.requested:
        return Outcome("stopped", "stopped before training started" + said, progress.progress.as_dict(), _ckpt(resume))
    if resume is not None:
        log.info("resuming from %s", resume.path)
    with frozen_heap():
        trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
    state = trainer.state
    if stop.stopped_at is not None and state.global_step < state.max_steps:
        if metrics is not None:
            metrics.phase("done")
        saved = newest_complete(workspace.checkpoints)
        return Outcome(
            "stopped", f"stopped at step {state.global_step} on request{said}", progress.progress.as_dict(), _ckpt(saved)
        )
    if metrics is not None:
        metrics.phase("exporting")
    outputs = _export(job, workspace, trainer, loaded)
    if distributed.is_global_zero():  # upload to output.uri (resumable, verified); UploadError is retryable
        outputs.update(publish_outputs(spec, workspace.output, job_name=job.name, metrics=progress.progress.as_dict()))
    outcome = Outcome(
        "succeeded", "training completed" + said, progress.progress.as_dict(),
        _ckpt(newest_complete(workspace.checkpoints)), outputs,
    )
    if distributed.is_global_zero():
        write_finished(workspace.output, {"step": state.global_step, "shape": checkpoint_shape(spec),
                                          "outputSpec": _output_settings(spec), **outcome.__dict__})
    if metrics is not None:
        metrics.phase("done")
    return outcome


def _also(note: str) -> str:
    return f" ({note})" if note else ""


def _output_settings(spec: FineTuneJobSpec) -> dict[str, Any]:
    """What a finished run's outputs depend on beyond training: the recipe's `output` section."""
    return spec.output.model_dump(mode="json", by_alias=True)


def _finished_or_refused(job: Job, workspace: Workspace) -> Outcome | None:
    """The outcome of a run that already finished in `workspace`, None to train; InvalidInput for another shape.

    A checkpoint of another shape (lora.r 8 -> 4, other target modules, base or quantization)
    would die in a size-mismatch traceback on load, on every retry: it is refused here,
    before anything is loaded. Read-only, so every rank may check before the process group exists.
    """
    from kubetune_trainer.checkpoints import checkpoint_shape, read_finished, recorded_shape, shape_changes

    changes = shape_changes(recorded_shape(workspace.output, workspace.checkpoints) or {}, checkpoint_shape(job.spec))
    if changes:
        raise InvalidInput(
            f"{workspace.output} holds a run whose checkpoints have another shape ({'; '.join(changes)}): "
            "train into a new output (kubetune run --output DIR, or a new PVC) or start over (kubetune run --fresh)"
        )
    finished = read_finished(workspace.output)
    if finished is None or finished.get("outputSpec") != _output_settings(job.spec):
        # Not finished, or finished into other outputs (another output.uri, a merge now asked for):
        # resume from the final checkpoint, which trains nothing and exports and publishes anew.
        return None
    message = f"already finished at step {finished.get('step')}: nothing changed (kubetune run --fresh starts over)"
    return Outcome("succeeded", message, finished.get("progress") or {}, finished.get("checkpoint"), finished.get("output") or {})


def _resume_point(workspace: Workspace) -> ResumePoint:
    """The newest intact complete checkpoint, after rank 0 removed saves killed half-way and damaged ones."""
    from kubetune_trainer.checkpoints import ResumePoint, choose_resume_point, newest_complete, remove_incomplete

    chosen = None
    if distributed.is_global_zero():
        for path in remove_incomplete(workspace.checkpoints):
            log.warning("removed incomplete checkpoint %s (killed while saving)", path)
        chosen = choose_resume_point(workspace.checkpoints)
        if chosen.note:
            log.warning("%s", chosen.note)
    distributed.barrier()  # the other ranks look only once rank 0 has removed what must not be loaded
    return chosen or ResumePoint(newest_complete(workspace.checkpoints))


def _ckpt(checkpoint: Any) -> dict[str, Any] | None:
    return None if checkpoint is None else {"step": checkpoint.step, "path": str(checkpoint.path)}


def _export(job: Job, workspace: Workspace, trainer: Any, loaded: Loaded) -> dict[str, str]:
    """Adapter on every rank (save_model gathers sharded weights), the rest on global rank 0."""
    from kubetune_trainer import evaluation, export

    spec, output, tokenizer = job.spec, workspace.output, loaded.tokenizer
    adapter = export.save_adapter(trainer, tokenizer, output, spec.dataset)  # with the prompts' chat template
    outputs = {"adapterPath": str(adapter)}
    scores = evaluation.validation_metrics(trainer, spec)  # every rank: evaluate() is collective
    if not distributed.is_global_zero():
        return outputs
    members = [adapter]
    report = evaluation.write_report(trainer, tokenizer, spec, output, scores, loaded.data.validation)
    members.extend(report.files.values())
    outputs.update(report.pointers())  # samples.md and evaluation.json: the message only points at them
    load_base = lambda: loaded.models.model(loaded.source, spec, quantize=False)
    if loaded.source.gguf_file:  # a folder holding a GGUF file is no base that peft loads: export one
        members.append(export.save_base(load_base, adapter, tokenizer, output, spec.dataset))
    if spec.output.merge_adapter:
        merged = export.merge_adapter(load_base, adapter, tokenizer, output, spec.dataset)
        outputs["mergedPath"] = str(merged)
        members.append(merged)
    summary = output / SUMMARY_FILE
    summary.write_text(
        json.dumps({"finetunejob": job.name, "step": trainer.state.global_step, **outputs,
                    "logHistory": trainer.state.log_history}, indent=2),
        encoding="utf-8",
    )
    members.append(summary)
    if spec.output.archive:
        outputs["archivePath"] = str(export.archive(output, job.name, members))
    return outputs


def run(recipe: Path, workspace: Path, stop: StopRequest) -> Outcome:
    """Train per `recipe`, mapping every way of ending to an Outcome."""
    try:
        job = load_job(recipe)
        return train(job, Workspace(workspace), stop)
    except (RecipeError, InvalidInput) as error:
        message = " ".join(str(error).split())
        log.error("invalid recipe or data: %s", message)
        return Outcome("invalid", message)
    except StorageError as error:  # a download or upload: its own reason, exit 2 or 1 as the error says
        log.error("%s: %s", error.reason, error)
        return Outcome("invalid" if error.exit_code == ExitCode.INVALID else "failed", str(error), reason=error.reason)
    except Exception as error:  # noqa: BLE001 - every other failure becomes exit 1 with its reason
        traceback.print_exc()
        return failed_outcome(error, workspace)


def failed_outcome(error: Exception, workspace: Path) -> Outcome:
    """Exit 1 for `error`, with reason VolumeFull when the workspace volume has (almost) no space left.

    Writers report a full volume in words of their own, not always with ENOSPC: torch's zip writer
    raises "unexpected pos N vs M" after a short write (seen on the real control plane's full-volume
    test, where safetensors had said ENOSPC in other runs). The volume's free space says it for all.
    """
    message = f"{type(error).__name__}: {' '.join(str(error).split())}"
    try:
        usage = shutil.disk_usage(workspace)
    except OSError:
        return Outcome("failed", message)
    if usage.free >= VOLUME_FULL_FREE_BYTES:
        return Outcome("failed", message)
    return Outcome("failed", f"{message} (No space left on device: {usage.free} bytes free of {usage.total} "
                             f"on the volume at {workspace})", reason=TerminationReason.VOLUME_FULL)


def make_parser() -> argparse.ArgumentParser:
    """Arguments of the trainer process."""
    parser = argparse.ArgumentParser(prog="python -m kubetune_trainer.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, required=True, help="recipe.json (a FineTuneJob or its spec)")
    parser.add_argument("--workspace", type=Path, required=True, help="the workspace (the PVC's mount point)")
    parser.add_argument("--outcome-dir", type=Path, default=None, help="where this rank writes rank-<n>.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of one trainer process; returns the documented exit code."""
    stop = StopRequest()
    stop.install()  # first: a SIGTERM during the slow imports below must not kill the process
    args = make_parser().parse_args(argv)
    rank = distributed.global_rank()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(message)s")
    started = time.monotonic()
    outcome = run(args.recipe, args.workspace, stop)
    log.info("%s after %.0f s: %s", outcome.status, time.monotonic() - started, outcome.message)
    if args.outcome_dir is not None:
        outcome.write(args.outcome_dir, distributed.global_rank())
    return int(outcome.exit_code)


if __name__ == "__main__":
    sys.exit(main())
