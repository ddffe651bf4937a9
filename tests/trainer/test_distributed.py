"""Two trainer processes on the CPU (torchrun, gloo) through the launcher: one DDP job.

They split each batch (so an optimizer step sees twice the samples), agree on the stop
step when SIGTERM reaches the launcher, write one complete checkpoint holding both
ranks' RNG states, resume from it, and only rank 0 serves metrics.

The same as two pods of an attempt (two launchers, completion indexes 0 and 1, rendezvous at
127.0.0.1): SIGTERM to one stops both at one step; a pod killed -9 or frozen (SIGSTOP, as a
lost node looks: no RST, its collectives never answer) ends the other within the watch's bound.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from kubetune_api.contract import CHECKPOINT_COMPLETE_MARKER, Env
from kubetune_trainer.peers import TIMEOUT_ENV

from tests.trainer.sft_runs import (
    checkpoint_dir,
    free_port,
    run_launcher,
    sft_spec,
    sigterm,
    start_launcher,
    termination_message,
    wait_for_checkpoint,
    write_recipe,
)

pytestmark = pytest.mark.slow

STEPS = 20
BATCH = 4


def test_two_processes_train_stop_together_and_resume(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    spec = sft_spec(tiny_llama, toy_data, dataset={"validationSplit": 0},
                    training={"maxSteps": STEPS, "saveSteps": 4, "batchSize": BATCH})
    recipe, workspace, log = write_recipe(tmp_path, spec), tmp_path / "ws", tmp_path / "first.log"
    launcher = start_launcher(recipe, workspace, log, **{Env.NPROC_PER_NODE: "2"})
    wait_for_checkpoint(workspace, 4, launcher)
    sigterm(launcher)
    assert launcher.wait(timeout=300) == 75, log.read_text()[-3000:]

    output = log.read_text()
    serving = [line for line in output.splitlines() if "serving metrics" in line]
    assert len(serving) == 1 and " rank0 " in serving[0], serving
    stopping = [line for line in output.splitlines() if "stopped at step" in line and " INFO " in line]
    assert {line.split(" rank")[1][0] for line in stopping} == {"0", "1"}, "both ranks report the stop"
    step = termination_message(workspace)["step"]
    assert len({line.rsplit("stopped at step ", 1)[1].split()[0] for line in stopping}) == 1, stopping
    checkpoint = checkpoint_dir(workspace, step)
    assert (checkpoint / CHECKPOINT_COMPLETE_MARKER).exists()
    assert (checkpoint / "rng_state_0.pth").exists() and (checkpoint / "rng_state_1.pth").exists()
    # One DDP job: every optimizer step consumed a batch on each of the two ranks.
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    train_rows = 240  # validationSplit 0
    assert state["epoch"] == pytest.approx(step * BATCH * 2 / train_rows, rel=0.05)

    result = run_launcher(recipe, workspace, **{Env.NPROC_PER_NODE: "2"})

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming from {checkpoint}" in result.stdout + result.stderr
    done = termination_message(workspace)
    assert done["reason"] == "Completed" and done["step"] == STEPS
    assert (workspace / "output" / "adapter" / "adapter_model.safetensors").is_file()


PEER_TIMEOUT = 6.0


def _rendezvous_port() -> int:
    """A free port whose next one (the peer watch's) is free too."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def _two_pods(recipe: Path, workspace: Path, folder: Path) -> list[subprocess.Popen[str]]:
    """Launchers as completion indexes 0 and 1 of an attempt run them, sharing the workspace (the PVC)."""
    port = _rendezvous_port()
    return [
        start_launcher(recipe, workspace, folder / f"pod{index}.log", **{
            Env.NNODES: "2", Env.NODE_RANK: str(index), Env.MASTER_ADDR: "127.0.0.1", Env.MASTER_PORT: str(port),
            Env.TERMINATION_LOG: str(folder / f"pod{index}.termination"), TIMEOUT_ENV: str(PEER_TIMEOUT),
        })
        for index in range(2)
    ]


def _pod_termination(folder: Path, index: int) -> dict[str, object]:
    return json.loads((folder / f"pod{index}.termination").read_text(encoding="utf-8"))


def _signal_pod(pod: subprocess.Popen[str], signum: int) -> None:
    """`signum` to every process of a pod (the launcher, torchrun and the trainer each have a session)."""
    root = psutil.Process(pod.pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def test_two_pods_stop_together_when_one_gets_sigterm(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    spec = sft_spec(tiny_llama, toy_data, dataset={"validationSplit": 0},
                    training={"maxSteps": STEPS, "saveSteps": 4, "batchSize": BATCH, "reportTo": []})
    workspace = tmp_path / "ws"
    pods = _two_pods(write_recipe(tmp_path, spec), workspace, tmp_path)
    try:
        wait_for_checkpoint(workspace, 4, pods[0])
        sigterm(pods[1])
        codes = [pod.wait(timeout=300) for pod in pods]
    finally:
        for pod in pods:
            pod.kill()
    logs = [(tmp_path / f"pod{index}.log").read_text()[-3000:] for index in range(2)]
    assert codes == [75, 75], logs
    ended = [_pod_termination(tmp_path, index) for index in range(2)]
    assert {body["reason"] for body in ended} == {"Stopped"}, ended
    assert ended[0]["step"] == ended[1]["step"], ended
    assert (checkpoint_dir(workspace, int(ended[0]["step"])) / CHECKPOINT_COMPLETE_MARKER).exists()


@pytest.mark.parametrize(
    ("signum", "lost"),
    [(signal.SIGKILL, 1), (signal.SIGSTOP, 1), (signal.SIGSTOP, 0)],
    ids=["pod-1-killed", "pod-1-frozen", "pod-0-frozen-with-the-store"],
)
def test_a_lost_pod_ends_the_other_within_the_bound(
    signum: int, lost: int, tiny_llama: Path, toy_data: Path, tmp_path: Path
) -> None:
    """Over gloo a killed pod also breaks the socket (gloo may fail first); a frozen one is seen by the watch alone."""
    spec = sft_spec(tiny_llama, toy_data, dataset={"validationSplit": 0},
                    training={"maxSteps": 100000, "saveSteps": 4, "batchSize": BATCH, "reportTo": []})
    workspace, survivor = tmp_path / "ws", 1 - lost
    pods = _two_pods(write_recipe(tmp_path, spec), workspace, tmp_path)
    try:
        wait_for_checkpoint(workspace, 4, pods[survivor])
        _signal_pod(pods[lost], signum)
        lost_at = time.monotonic()
        code = pods[survivor].wait(timeout=PEER_TIMEOUT + 60)
        after = time.monotonic() - lost_at
    finally:
        _signal_pod(pods[lost], signal.SIGKILL)
        for pod in pods:
            pod.kill()
    log = (tmp_path / f"pod{survivor}.log").read_text()[-3000:]
    assert code == 1, log
    ended = _pod_termination(tmp_path, survivor)
    if signum == signal.SIGSTOP:
        assert ended["reason"] == "PeerLost", ended
        assert str(ended["message"]).startswith(f"pod {lost} of the attempt stopped answering"), ended
        assert after >= PEER_TIMEOUT - 1, f"ended after {after:.1f} s, before the timeout: not by the watch"
    print(f"pod {survivor} exited {code} ({ended['reason']}) {after:.1f} s after pod {lost} got "
          f"{signal.Signals(signum).name}")
