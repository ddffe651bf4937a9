"""`kubetune run job.yaml [--output DIR] [--fresh]`: train on this machine through the pod's own launcher.

The workspace (default `./out/<name>`) plays the PVC: `DIR/recipe.json` is the
recipe as the operator's ConfigMap would hold it, results land in `DIR/output`,
checkpoints in `DIR/output/checkpoints`, the model cache in `DIR/cache`. Running
the same command again resumes from the newest complete checkpoint; once the run has
finished it says so and changes nothing, and a recipe edited into another checkpoint
shape is refused (the trainer's resume rules). `--fresh` deletes `DIR/output` first.

Relative `model.name` and `dataset.path` are resolved against the manifest's folder
before the recipe is written, so recipe.json is what a pod could run as is.

One run at a time per workspace: `DIR/.kubetune-run.lock` is locked (flock) for as long as
any process of the run lives, the trainer included (it inherits the lock, and ends with a
checkpoint when `kubetune run` is killed), so a second `kubetune run` on it is refused with
one line and exit 2 instead of writing into the same checkpoints.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import sys
from pathlib import Path

from kubetune_api.contract import Env, ExitCode, local_path
from kubetune_trainer.launcher import LaunchSettings, launch
from kubetune_api.manifest import load_finetunejob
from kubetune_trainer.model import PKG_SCHEME
from kubetune_api.recipe import FineTuneJob, FineTuneJobSpec
from kubetune_trainer.remote import is_uri
from kubetune_trainer.train import PROGRESS_ENV


def _absolute(name: str, base_dir: Path, *, or_hub_id: bool) -> str:
    """`name` made absolute against `base_dir` when it is a relative path; hub ids, URIs and absolute paths as given."""
    if is_uri(name) or name.startswith(PKG_SCHEME) or os.path.isabs(name):
        return name
    path = local_path(name, base_dir, or_hub_id=or_hub_id)
    return name if path is None else str(path.resolve())


def resolve_paths(spec: FineTuneJobSpec, base_dir: Path) -> FineTuneJobSpec:
    """`spec` with relative model, teacher and dataset paths made absolute against `base_dir`."""
    spec = spec.model_copy(deep=True)
    spec.model.name = _absolute(spec.model.name, base_dir, or_hub_id=True)
    if spec.dataset.path is not None:
        spec.dataset.path = _absolute(spec.dataset.path, base_dir, or_hub_id=False)
    if spec.method.distill is not None:  # method.type distill
        teacher = spec.method.distill.teacher
        teacher.name = _absolute(teacher.name, base_dir, or_hub_id=True)
    return spec


def _processes(spec: FineTuneJobSpec) -> int:
    """Trainer processes on this machine: one per requested GPU that exists, else one."""
    if spec.resources.gpus_per_worker == 0:
        return 1
    import torch  # only here: the CPU quickstart and `kubetune validate` never need it

    return max(1, min(spec.resources.gpus_per_worker, torch.cuda.device_count()))


def write_recipe(job: FineTuneJob, base_dir: Path, workspace: Path) -> Path:
    """Write the resolved FineTuneJob as workspace/recipe.json; returns its path."""
    resolved = job.model_copy(update={"spec": resolve_paths(job.spec, base_dir)})
    workspace.mkdir(parents=True, exist_ok=True)
    path = workspace / "recipe.json"
    path.write_text(json.dumps(resolved.to_api(), indent=2), encoding="utf-8")
    return path


LOCK_FILE = ".kubetune-run.lock"


class WorkspaceBusy(Exception):
    """Another `kubetune run` (or the trainer it left finishing) holds the workspace."""


def lock_workspace(workspace: Path) -> int:
    """Create `workspace` and lock it for this run; the lock's file descriptor (pass it on to the trainer).

    Raises WorkspaceBusy when another run holds it, OSError when the folder cannot be written.
    flock rather than a pid file: the kernel drops the lock when the last process holding it
    ends, however it ends, so a killed run never leaves a stale lock behind.
    """
    workspace.mkdir(parents=True, exist_ok=True)
    fd = os.open(workspace / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise WorkspaceBusy(
            f"{workspace} is in use by another kubetune run (started by pid {holder}); "
            "wait for it to end, or pass --output DIR to train into another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def run_local(path: str | Path, output: str | Path | None = None, fresh: bool = False) -> int:
    """Train the FineTuneJob in `path` locally; returns the launcher's exit code (2 if the workspace is unusable).

    `fresh` starts over: the workspace's results and checkpoints are deleted (the model cache is kept).
    """
    manifest = Path(path)
    job = load_finetunejob(manifest)
    workspace = Path(output) if output else Path("out") / job.metadata.name
    workspace = workspace.resolve()
    try:
        lock = lock_workspace(workspace)
    except WorkspaceBusy as error:
        print(f"kubetune run: {error}", file=sys.stderr, flush=True)
        return int(ExitCode.INVALID)
    except OSError as error:
        print(f"kubetune run: cannot write the output folder {workspace} ({error.strerror}); "
              "pass --output DIR with a writable folder", file=sys.stderr, flush=True)
        return int(ExitCode.INVALID)
    try:
        if fresh:  # only under the lock: never under a run that is still writing there
            shutil.rmtree(workspace / "output", ignore_errors=True)
        return _train(job, manifest, workspace, lock)
    finally:
        os.close(lock)


def _train(job: FineTuneJob, manifest: Path, workspace: Path, lock: int) -> int:
    recipe = write_recipe(job, manifest.resolve().parent, workspace)
    settings = LaunchSettings(
        recipe=recipe,
        workspace=workspace,
        termination_log=workspace / "termination-log",
        nproc_per_node=_processes(job.spec),
    )
    print(f"kubetune run: {job.metadata.name}: workspace {workspace}", flush=True)
    # The launcher prints the termination message (one JSON line, for a pod's log) on stdout; here it
    # stays in DIR/termination-log and the user gets a plain summary of it instead.
    with contextlib.redirect_stdout(io.StringIO()):
        code = launch(
            settings,
            extra_env={
                PROGRESS_ENV: "1",
                Env.METRICS_HOST: "127.0.0.1",
                Env.JOB_NAME: job.metadata.name,
                Env.NAMESPACE: job.metadata.namespace or "local",
            },
            pass_fds=(lock,),
        )
    print(summary(settings.termination_log), file=sys.stdout if code == ExitCode.SUCCESS else sys.stderr, flush=True)
    if code == ExitCode.SUCCESS:
        print(f"adapter: {workspace / 'output' / 'adapter'}", flush=True)
    elif code == ExitCode.STOPPED:
        print("stopped after a checkpoint; run the same command again to resume", flush=True)
    return int(code)


def summary(termination_log: Path) -> str:
    """One plain line from the termination message: how the run ended, its step and losses."""
    try:
        message = json.loads(termination_log.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"kubetune run: no termination message in {termination_log}"
    numbers = [f"step {message['step']}/{message.get('totalSteps', '?')}"] if "step" in message else []
    numbers += [f"{label} {message[key]:.4g}" for key, label in (("loss", "loss"), ("evalLoss", "eval loss"))
                if isinstance(message.get(key), (int, float))]
    details = f" ({', '.join(numbers)})" if numbers else ""
    return f"kubetune run: {message.get('reason')}: {message.get('message')}{details}"
