"""The launcher: processes to start, outcomes to exit codes, the termination message, the watch over
the other pods (its decision as a table, its beats over a real TCPStore), the trainer dying with
its launcher, and `kubetune run`'s workspace lock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from kubetune_api.conditions import TerminationReason
from kubetune_api.contract import CHECKPOINT_COMPLETE_MARKER, TERMINATION_MESSAGE_LIMIT, Env, ExitCode
from kubetune_trainer.launcher import (
    LaunchSettings,
    exit_code,
    peer_watch,
    read_outcomes,
    termination_message,
    trainer_command,
)
from kubetune_trainer.local import WorkspaceBusy, lock_workspace
from kubetune_trainer.peers import TIMEOUT_ENV, PeerView, PeerWatch, lost_peer
from kubetune_trainer.train import Outcome

from tests.trainer.sft_runs import (
    free_port,
    kubetune_run,
    launcher_env,
    sft_spec,
    wait_for,
    wait_for_checkpoint,
    write_manifest,
)


def _settings(**kwargs: object) -> LaunchSettings:
    return LaunchSettings(recipe=Path("/r.json"), workspace=Path("/ws"), termination_log=Path("/t"), **kwargs)


def test_settings_come_from_the_contract_env() -> None:
    settings = LaunchSettings.from_env(
        {Env.RECIPE: "/x/recipe.json", Env.WORKSPACE: "/pvc", Env.NPROC_PER_NODE: "4", Env.NNODES: "2",
         Env.NODE_RANK: "1", Env.MASTER_ADDR: "job-0.job", Env.MASTER_PORT: "29501"}
    )
    assert settings.recipe == Path("/x/recipe.json") and settings.workspace == Path("/pvc")
    assert (settings.nproc_per_node, settings.nnodes, settings.node_rank) == (4, 2, 1)
    assert settings.distributed
    defaults = LaunchSettings.from_env({})
    assert defaults.recipe == Path("/etc/kubetune/recipe.json") and defaults.workspace == Path("/workspace")
    assert not defaults.distributed
    assert defaults.peer_timeout == 30.0 and LaunchSettings.from_env({TIMEOUT_ENV: "7.5"}).peer_timeout == 7.5


def test_only_several_pods_watch_each_other_on_the_port_after_the_rendezvous() -> None:
    assert peer_watch(_settings(nproc_per_node=2)) is None
    watch = peer_watch(_settings(nnodes=2, node_rank=1, master_addr="job-0.job", master_port=29500, peer_timeout=20))
    assert watch is not None and (watch.node, watch.host, watch.port, watch.timeout) == (1, "job-0.job", 29501, 20)
    assert watch.interval == 2.0


def test_one_process_runs_the_trainer_directly(tmp_path: Path) -> None:
    command = trainer_command(_settings(), tmp_path)
    assert command[1:3] == ["-m", "kubetune_trainer.train"]
    assert "--outcome-dir" in command


def test_several_processes_go_through_torchrun(tmp_path: Path) -> None:
    command = trainer_command(
        _settings(nproc_per_node=2, nnodes=2, node_rank=1, master_addr="job-0.job", master_port=29500), tmp_path
    )
    assert command[1:3] == ["-m", "torch.distributed.run"]
    for flag in ("--nproc-per-node=2", "--nnodes=2", "--node-rank=1", "--master-addr=job-0.job",
                 "--master-port=29500", "--max-restarts=0"):
        assert flag in command
    assert command[command.index("-m", 3) + 1] == "kubetune_trainer.train"


def test_outcomes_map_to_exit_codes() -> None:
    ok, stopped = {"status": "succeeded"}, {"status": "stopped"}
    assert exit_code([ok, ok], 2, 0) is ExitCode.SUCCESS
    assert exit_code([stopped, stopped], 2, 1) is ExitCode.STOPPED
    assert exit_code([{"status": "invalid"}, {"status": "failed"}], 2, 1) is ExitCode.INVALID
    assert exit_code([ok, {"status": "failed"}], 2, 1) is ExitCode.FAILED
    # A rank killed before reporting (OOM, SIGKILL) is a failure, whatever the others said.
    assert exit_code([stopped], 2, 1) is ExitCode.FAILED
    assert exit_code([ok], 1, -9) is ExitCode.FAILED


def test_outcomes_round_trip_through_files(tmp_path: Path) -> None:
    Outcome("stopped", "stopped at step 7", {"step": 7}, {"step": 5, "path": "/c"}).write(tmp_path, 1)
    Outcome("stopped", "stopped at step 7", {"step": 7}).write(tmp_path, 0)
    outcomes = read_outcomes(tmp_path)
    assert [o["rank"] for o in outcomes] == [0, 1]
    assert outcomes[1]["checkpoint"] == {"step": 5, "path": "/c"}


def test_termination_message_is_one_json_line_with_the_details() -> None:
    outcome = {"status": "succeeded", "message": "training completed",
               "progress": {"step": 40, "totalSteps": 40, "loss": 1.234567, "evalLoss": 1.5, "tokensPerSecond": 812.25,
                            "learningRate": 1e-5},
               "checkpoint": {"step": 40, "path": "/ws/output/checkpoints/checkpoint-40"},
               "output": {"adapterPath": "/ws/output/adapter"}}
    line = termination_message(ExitCode.SUCCESS, [outcome], 0)
    assert "\n" not in line
    body = json.loads(line)
    assert body["exitCode"] == 0 and body["reason"] == "Completed"
    assert body["step"] == 40 and body["loss"] == 1.2346 and body["tokensPerSecond"] == 812.25
    assert body["output"]["adapterPath"] == "/ws/output/adapter"
    assert "learningRate" not in body


def test_a_long_reason_is_cut_to_stay_under_the_limit() -> None:
    outcome = {"status": "invalid", "message": "dataset.path /d.jsonl line 3: " + "é" * 5000}
    line = termination_message(ExitCode.INVALID, [outcome], 2)
    assert len(line.encode()) < TERMINATION_MESSAGE_LIMIT
    body = json.loads(line)
    assert body["reason"] == "InvalidRecipe" and body["message"].startswith("dataset.path /d.jsonl line 3")


def test_no_outcome_at_all_still_explains() -> None:
    body = json.loads(termination_message(ExitCode.FAILED, [], -9))
    assert body["reason"] == "Failed" and "exit status -9" in body["message"]


def test_a_lost_pod_is_named_in_the_termination_message() -> None:
    body = json.loads(termination_message(ExitCode.FAILED, [], -9, lost="pod 1 of the attempt stopped answering"))
    assert body["reason"] == TerminationReason.PEER_LOST and body["message"].startswith("pod 1 of the attempt stopped answering")
    # A pod whose ranks all stopped before it was ended keeps their answer.
    stopped = {"status": "stopped", "message": "stopped at step 6 on request", "rank": 0}
    body = json.loads(termination_message(ExitCode.STOPPED, [stopped], -9, lost="pod 1 ..."))
    assert body["reason"] == "Stopped"


TIMEOUT = 30.0
NOW = 1000.0


def _beating(last: float) -> PeerView:
    return PeerView(beats=7, last_beat=last)


def _exited(code: int, at: float) -> PeerView:
    return PeerView(beats=7, last_beat=at, exit_code=code, exited_at=at)


@pytest.mark.parametrize(
    ("views", "lost"),
    [
        pytest.param({1: PeerView()}, None, id="never seen: torchrun's rendezvous bounds the wait to join"),
        pytest.param({1: _beating(NOW - 1)}, None, id="beating"),
        pytest.param({1: _beating(NOW - TIMEOUT + 0.5)}, None, id="silent just under the timeout"),
        pytest.param({1: _beating(NOW - TIMEOUT)}, "pod 1 of the attempt stopped answering (no heartbeat for 30 s)",
                     id="silent for the timeout"),
        pytest.param({1: _exited(0, NOW - 500)}, None, id="succeeded long ago (pod 0 may export for minutes)"),
        pytest.param({1: _exited(75, NOW - 500)}, None, id="stopped after the agreed checkpoint long ago"),
        pytest.param({1: _exited(1, NOW - 5)}, None, id="failed just now: this pod may still fail on its own"),
        pytest.param({1: _exited(1, NOW - TIMEOUT)}, "pod 1 of the attempt exited 1 30 s ago",
                     id="failed a timeout ago"),
        pytest.param({1: _exited(2, NOW - 40)}, "pod 1 of the attempt exited 2 40 s ago", id="invalid a while ago"),
        pytest.param({2: _beating(NOW - 60), 1: _beating(NOW - 45)}, "pod 1 of", id="the first lost pod by index"),
        pytest.param({0: _beating(NOW), 2: _beating(NOW - 31)}, "pod 2 of", id="one lost among beating ones"),
        pytest.param({1: _exited(0, NOW - 90), 2: _beating(NOW - 2)}, None, id="one finished, one beating"),
    ],
)
def test_when_a_pod_counts_as_lost(views: dict[int, PeerView], lost: str | None) -> None:
    verdict = lost_peer(views, NOW, TIMEOUT)
    assert verdict == lost if lost is None else verdict is not None and verdict.startswith(lost), verdict


def test_a_view_moves_only_when_the_counter_does() -> None:
    view = PeerView().observed(0, None, 1.0)
    assert view.last_beat is None  # the counter is still 0: never seen
    view = view.observed(3, None, 2.0).observed(3, None, 9.0)
    assert (view.beats, view.last_beat) == (3, 2.0)
    view = view.observed(4, 1, 10.0).observed(4, 1, 11.0)
    assert (view.exit_code, view.exited_at) == (1, 10.0)


WATCHING_POD = """
import sys, time
from kubetune_trainer.peers import PeerWatch
PeerWatch(int(sys.argv[1]), int(sys.argv[2]), "127.0.0.1", int(sys.argv[3]), timeout=float(sys.argv[4])).start()
print("watching", flush=True)
time.sleep(600)
"""


def _watching_pod(node: int, nnodes: int, port: int, timeout: float) -> subprocess.Popen[str]:
    """A launcher's watch alone in a process of its own, to be killed -9 as a lost pod is."""
    process = subprocess.Popen([sys.executable, "-c", WATCHING_POD, str(node), str(nnodes), str(port), str(timeout)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "watching"
    return process


def _lost_within(watch: PeerWatch, bound: float) -> tuple[str, float]:
    started = time.monotonic()
    while (lost := watch.lost()) is None:
        assert time.monotonic() - started < bound, f"nothing lost within {bound} s: {watch.views()}"
        time.sleep(0.05)
    return lost, time.monotonic() - started


def _seen(watch: PeerWatch, *nodes: int) -> None:
    deadline = time.monotonic() + 60
    while not all(watch.views()[node].beats for node in nodes):
        assert time.monotonic() < deadline, watch.views()
        time.sleep(0.05)


def test_watches_over_a_real_store_tell_a_killed_pod_from_a_finished_one() -> None:
    port, timeout = free_port(), 1.0
    host = PeerWatch(0, 3, "127.0.0.1", port, timeout=timeout)
    host.start()
    finished = PeerWatch(1, 3, "127.0.0.1", port, timeout=timeout)
    finished.start()
    killed = _watching_pod(2, 3, port, timeout)
    try:
        _seen(host, 1, 2)
        finished.finish(ExitCode.SUCCESS)
        killed.kill()
        killed.wait()
        lost, after = _lost_within(host, bound=10 * timeout)
        assert lost.startswith("pod 2 of the attempt stopped answering"), lost
        assert host.views()[1].exit_code == 0, "the finished pod said so, and is not the lost one"
    finally:
        killed.kill()
        host.finish(ExitCode.FAILED)


def test_a_pod_sees_the_store_host_lost_when_pod_0_dies() -> None:
    port, timeout = free_port(), 1.0
    pod0 = _watching_pod(0, 2, port, timeout)
    pod1 = PeerWatch(1, 2, "127.0.0.1", port, timeout=timeout)
    pod1.start()
    try:
        _seen(pod1, 0)
        pod0.kill()
        pod0.wait()
        lost, _ = _lost_within(pod1, bound=10 * timeout)
        assert lost.startswith("pod 0 of the attempt stopped answering"), lost
    finally:
        pod0.kill()
        pod1.finish(ExitCode.FAILED)


LAUNCHER_STAND_IN = """
import subprocess, sys, time
from kubetune_trainer import lifeline
child = subprocess.Popen(lifeline.wrap([sys.executable, "-c", "import time; time.sleep(300)"]), start_new_session=True)
print(child.pid, flush=True)
time.sleep(300)
"""


def test_the_trainer_dies_with_its_launcher_though_in_a_session_of_its_own() -> None:
    parent = subprocess.Popen([sys.executable, "-c", LAUNCHER_STAND_IN], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        wait_for(lambda: "sleep(300)" in " ".join(child.cmdline()), parent, timeout=30)  # exec'd past the lifeline
        parent.kill()
        parent.wait()
        child.wait(timeout=30)  # raises psutil.TimeoutExpired if it outlives its parent
    finally:
        parent.kill()
        if child.is_running():
            child.kill()


def test_an_output_that_cannot_be_written_is_one_line_and_exit_2(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, sft_spec("m", "d.jsonl"))
    (tmp_path / "file").write_text("not a folder")
    result = subprocess.run(kubetune_run(manifest, tmp_path / "file" / "out"), capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "cannot write the output folder" in result.stderr, result.stderr
    assert "--output DIR" in result.stderr


def _kubetune_run_past_checkpoint_5(
    tiny_llama: Path, toy_data: Path, tmp_path: Path
) -> tuple[subprocess.Popen[str], list[str], dict[str, str], Path]:
    """A `kubetune run` that checkpoints every 5 steps and never ends, once checkpoint 5 is complete.

    The process (its output in tmp_path/run.log), its command and environment, its workspace.
    """
    spec = sft_spec(tiny_llama, toy_data, training={"maxSteps": 100000, "saveSteps": 5, "reportTo": []})
    manifest, workspace = write_manifest(tmp_path, spec), tmp_path / "ws"
    command = kubetune_run(manifest, workspace)
    env = launcher_env(manifest, workspace)
    with open(tmp_path / "run.log", "w", encoding="utf-8") as log:
        run = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(workspace, 5, run)
    return run, command, env, workspace


@pytest.mark.slow
def test_ctrl_c_of_kubetune_run_is_logged_as_an_interrupt_and_stops_at_a_checkpoint_with_75(
    tiny_llama: Path, toy_data: Path, tmp_path: Path
) -> None:
    """The launcher forwards SIGINT as SIGINT: the trainer says it was interrupted, saves the step it stops at."""
    run, _, _, workspace = _kubetune_run_past_checkpoint_5(tiny_llama, toy_data, tmp_path)
    try:
        run.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends to the foreground process
        code = run.wait(timeout=300)
    finally:
        run.kill()
    output = (tmp_path / "run.log").read_text()
    assert code == ExitCode.STOPPED, output[-3000:]
    assert "interrupted (Ctrl-C): saving a checkpoint" in output, output[-3000:]
    assert "got SIGTERM" not in output and "Traceback" not in output and "KeyboardInterrupt" not in output
    message = json.loads((workspace / "termination-log").read_text(encoding="utf-8"))
    assert message["reason"] == "Stopped" and message["checkpoint"]["step"] == message["step"] > 5, message
    assert (Path(message["checkpoint"]["path"]) / CHECKPOINT_COMPLETE_MARKER).exists()


@pytest.mark.slow
def test_kill_9_of_kubetune_run_leaves_no_trainer_and_a_busy_workspace_is_refused(
    tiny_llama: Path, toy_data: Path, tmp_path: Path
) -> None:
    """The trainer gets SIGTERM when `kubetune run` is killed, checkpoints and ends; the lock goes with it."""
    run, command, env, workspace = _kubetune_run_past_checkpoint_5(tiny_llama, toy_data, tmp_path)
    try:
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.count("\n") == 1 and "in use by another kubetune run" in second.stderr, second.stderr
        trainers = psutil.Process(run.pid).children()
        assert trainers, "kubetune run started no trainer"
    finally:
        run.kill()
        run.wait()
    _, alive = psutil.wait_procs(trainers, timeout=120)
    assert not alive, f"the trainer outlived kubetune run: {alive}"
    output = (tmp_path / "run.log").read_text()
    assert "got SIGTERM: saving a checkpoint" in output, output[-3000:]
    steps = [int(p.parent.name.split("-")[1]) for p in (workspace / "output" / "checkpoints").glob(
        f"checkpoint-*/{CHECKPOINT_COMPLETE_MARKER}")]
    assert max(steps) > 5, f"no checkpoint at the stop step: {steps}"
    lock = lock_workspace(workspace)  # the kernel dropped the lock with the last process of the run
    try:
        with pytest.raises(WorkspaceBusy, match="in use by another kubetune run"):
            lock_workspace(workspace)
    finally:
        os.close(lock)
