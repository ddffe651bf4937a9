"""Run the trainer the way an attempt's pod runs it: the operator's rendered command and env.

    pod = PodProcess.render(job, tmp_path / "pod0", index=0, gpus="0,1")
    pod.start(); pod.wait_for_checkpoint(5); pod.terminate(); assert pod.wait() == 75

`render` takes the attempt Job that `kubetune_operator.render.render_children` builds for a
FineTuneJob (the manifest `kubetune render` prints), and turns its trainer container into a
local process: the env as rendered, with the pod's mount points moved to host folders (the
recipe ConfigMap to `<root>/etc/recipe.json`, the PVC to a shared workspace, the termination
log to `<root>/termination-log`), the downward-API pod IP and the rendezvous host (pod 0
behind the headless Service) as 127.0.0.1, `JOB_COMPLETION_INDEX` as Kubernetes sets it for
Indexed Jobs, and the GPUs the device plugin would hand the pod in `CUDA_VISIBLE_DEVICES`.
Written by hand (the test kubelet in tests/cluster needs a control plane; here one synchronous
process per pod is all that is needed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kubetune_api import contract
from kubetune_api.contract import CHECKPOINT_COMPLETE_MARKER, Env

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
"""NVLink multicast stays off on the lent GPU machines, in every process we start (their README says why)."""

STARTED: list[PodProcess] = []
"""Every pod started in this process, so a failed or timed-out test can kill what it left running."""


def render_pod(job: dict[str, Any], attempt: int = 0, namespace: str = "default") -> tuple[dict[str, Any], str]:
    """The attempt Job's trainer container and the recipe ConfigMap's recipe.json, as the operator renders them."""
    from kubetune_operator.render import render_children
    from kubetune_operator.settings import Settings
    from kubetune_api.recipe import parse_finetunejob

    children = render_children(parse_finetunejob(job), attempt, namespace, Settings())
    by_kind = {child["kind"]: child for child in children}
    container = by_kind["Job"]["spec"]["template"]["spec"]["containers"][0]
    return container, by_kind["ConfigMap"]["data"][contract.RECIPE_FILE]


def _value(entry: dict[str, Any]) -> str:
    """An env entry's value; the only downward-API field the trainer gets is the pod IP."""
    if "value" in entry:
        return str(entry["value"])
    field_path = entry["valueFrom"]["fieldRef"]["fieldPath"]
    if field_path != "status.podIP":
        raise ValueError(f"env {entry['name']}: no local stand-in for fieldRef {field_path}")
    return "127.0.0.1"


def launcher_command(command: list[str]) -> list[str]:
    """The container's command; `kubetune-trainer` runs as its module where the console script is not installed."""
    if command == ["kubetune-trainer"] and shutil.which("kubetune-trainer") is None:
        return [sys.executable, "-m", "kubetune_trainer.launcher"]
    return list(command)


@dataclass
class PodProcess:
    """One trainer pod as a local process group."""

    argv: list[str]
    env: dict[str, str]
    workspace: Path
    termination_log: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @classmethod
    def render(cls, job: dict[str, Any], root: Path, workspace: Path, *, index: int = 0, gpus: str | None = None,
               attempt: int = 0) -> PodProcess:
        """Pod `index` of `job`'s attempt, with its files under `root` and the PVC at `workspace`."""
        container, recipe_text = render_pod(job, attempt)
        root.mkdir(parents=True, exist_ok=True)
        workspace.mkdir(parents=True, exist_ok=True)
        recipe = root / "etc" / contract.RECIPE_FILE
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(recipe_text, encoding="utf-8")
        rendered = {entry["name"]: _value(entry) for entry in container["env"]}
        moved = {
            Env.RECIPE: str(recipe),
            Env.WORKSPACE: str(workspace),
            Env.TERMINATION_LOG: str(root / "termination-log"),
            Env.NODE_RANK: str(index),
        }
        if Env.MASTER_ADDR in rendered:
            moved[Env.MASTER_ADDR] = "127.0.0.1"  # pod 0's name through the headless Service
        env = {**os.environ, **rendered, **moved, **NO_MULTICAST}
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        return cls(launcher_command(container["command"]), env, workspace, root / "termination-log",
                   root / "pod.log")

    def start(self) -> None:
        """Start the container's main process in its own process group (a pod's processes die together)."""
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        STARTED.append(self)

    def run(self, timeout: float) -> int:
        """Start, wait for the exit code."""
        self.start()
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        """The exit code; on timeout the whole pod is killed and the log tail raised."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"pod did not exit within {timeout:.0f} s:\n{self.log_tail()}") from None
        finally:
            if self._log is not None:
                self._log.close()
        return code

    def running(self) -> bool:
        """Whether the pod's main process is still alive."""
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """SIGTERM to the main process, as the kubelet does on deletion, suspend or preemption."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to every process of the pod (the launcher starts torchrun in a session of its own)."""
        import psutil

        assert self.process is not None
        try:
            family = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        for proc in family:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass

    def wait_for_checkpoint(self, step: int, timeout: float) -> None:
        """Block until checkpoint-`step` is marked complete (or the process ends, or time runs out)."""
        marker = Path(contract.checkpoints_dir(str(self.workspace))) / f"{contract.CHECKPOINT_PREFIX}{step}" / \
            CHECKPOINT_COMPLETE_MARKER
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"pod exited ({self.process.returncode}) before checkpoint {step}:\n"
                                     f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no checkpoint {step} within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def termination(self) -> dict[str, Any]:
        """The termination message the launcher wrote."""
        return json.loads(self.termination_log.read_text(encoding="utf-8"))

    def log_tail(self, lines: int = 40) -> str:
        """The end of the pod's log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
