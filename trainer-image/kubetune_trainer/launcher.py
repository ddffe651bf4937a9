"""`kubetune-trainer`: the trainer pod's main process (and `kubetune run`'s).

It reads everything from the environment (names in `contract.Env`), so the operator's
pods and a test kubelet can remap every path:

    KUBETUNE_RECIPE            recipe.json (default /etc/kubetune/recipe.json)
    KUBETUNE_WORKSPACE         the PVC's mount (default /workspace)
    KUBETUNE_TERMINATION_LOG   termination message file (default /dev/termination-log)
    KUBETUNE_NPROC_PER_NODE    trainer processes in this pod (default 1)
    KUBETUNE_NNODES, JOB_COMPLETION_INDEX, KUBETUNE_MASTER_ADDR, KUBETUNE_MASTER_PORT
                               the gang: pods, this pod's index, rendezvous host and port
    KUBETUNE_PEER_TIMEOUT_SECONDS  how long another pod may be silent (or failed) before this one
                               ends its trainer (default 30; the watch listens on the port after the rendezvous)

One trainer process runs directly; more go through torchrun (`torch.distributed.run`),
with gloo on the CPU. SIGTERM/SIGINT are forwarded once, as received; the trainers checkpoint
at an agreed step. The trainer gets SIGTERM when the launcher dies (`lifeline`), so a kill -9
of `kubetune run` leaves no orphan. With several pods the launchers watch each other
(`peers`): when a pod is lost, the others end their trainers (blocked in a collective, they
would not end on their own) and exit 1 with reason PeerLost, within
KUBETUNE_PEER_TIMEOUT_SECONDS (default 30) plus a beat.

torchrun reports 1 for every failure, so each rank writes its outcome to a file, and the launcher maps them to the documented exit codes:
0 success, 2 invalid recipe or data, 75 stopped after a checkpoint, 1 anything else.

The termination message is one JSON line under 2 KiB, written to the termination log
and printed last:

    {"exitCode": 0, "reason": "Completed", "message": "...", "step": 40, "totalSteps": 40,
     "loss": 1.2, "evalLoss": 1.3, "tokensPerSecond": 812.5,
     "checkpoint": {"step": 40, "path": "..."}, "output": {"adapterPath": "...", ...}}

reason is Completed, Stopped, InvalidRecipe, Failed or PeerLost (or a trainer's own, e.g. UploadFailed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from kubetune_api import contract
from kubetune_api.conditions import TerminationReason
from kubetune_api.contract import Env, ExitCode
from kubetune_trainer import lifeline, peers
from kubetune_trainer.peers import PeerWatch

REASONS = {
    ExitCode.SUCCESS: TerminationReason.COMPLETED,
    ExitCode.STOPPED: TerminationReason.STOPPED,
    ExitCode.INVALID: TerminationReason.INVALID_RECIPE,
    ExitCode.FAILED: TerminationReason.FAILED,
}
"""The termination reason of each exit code, where the trainer gave none of its own."""
# Saving a checkpoint of a large model can take minutes; Kubernetes' grace period is the real bound.
TORCHRUN_SHUTDOWN_TIMEOUT_S = 3600


@dataclass(frozen=True)
class LaunchSettings:
    """Where things are and how many processes to start, read from the environment."""

    recipe: Path
    workspace: Path
    termination_log: Path
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    peer_timeout: float = peers.DEFAULT_TIMEOUT_S

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> LaunchSettings:
        """Settings from `environ` (default os.environ), with the contract's defaults."""
        env = os.environ if environ is None else environ
        port = env.get(Env.MASTER_PORT)
        return cls(
            recipe=Path(env.get(Env.RECIPE, contract.RECIPE_PATH)),
            workspace=Path(env.get(Env.WORKSPACE, contract.WORKSPACE)),
            termination_log=Path(env.get(Env.TERMINATION_LOG, contract.TERMINATION_LOG)),
            nproc_per_node=int(env.get(Env.NPROC_PER_NODE, "1")),
            nnodes=int(env.get(Env.NNODES, "1")),
            node_rank=int(env.get(Env.NODE_RANK, "0")),
            master_addr=env.get(Env.MASTER_ADDR, "127.0.0.1"),
            master_port=int(port) if port else None,
            peer_timeout=float(env.get(peers.TIMEOUT_ENV, peers.DEFAULT_TIMEOUT_S)),
        )

    @property
    def distributed(self) -> bool:
        """Whether more than one trainer process takes part."""
        return self.nproc_per_node * self.nnodes > 1

    @property
    def rendezvous_port(self) -> int:
        """The port of torchrun's rendezvous (pods agree on it; one pod picks any free one)."""
        return self.master_port or (_free_port() if self.nnodes == 1 else contract.MASTER_PORT)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shutdown_timeout() -> list[str]:
    """torchrun's wait for the workers after forwarding SIGTERM; older torch (2.11) lacks the flag and waits 30 s."""
    from torch.distributed.run import get_args_parser

    flag = f"--shutdown-timeout={TORCHRUN_SHUTDOWN_TIMEOUT_S}"
    _, unknown = get_args_parser().parse_known_args([flag, "trainer.py"])
    return [] if unknown else [flag]


def trainer_command(settings: LaunchSettings, outcome_dir: Path) -> list[str]:
    """The command that starts this pod's trainer processes."""
    trainer = ["-m", "kubetune_trainer.train", "--recipe", str(settings.recipe),
               "--workspace", str(settings.workspace), "--outcome-dir", str(outcome_dir)]
    if not settings.distributed:
        return [sys.executable, *trainer]
    port = settings.rendezvous_port
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc-per-node={settings.nproc_per_node}",
        f"--nnodes={settings.nnodes}",
        f"--node-rank={settings.node_rank}",
        f"--master-addr={settings.master_addr}",
        f"--master-port={port}",
        "--max-restarts=0",
        *_shutdown_timeout(),
        *trainer,
    ]


def read_outcomes(outcome_dir: Path) -> list[dict[str, Any]]:
    """The outcomes the ranks of this pod wrote (a rank that was killed wrote none)."""
    outcomes = []
    for path in sorted(outcome_dir.glob("rank-*.json")):
        try:
            outcomes.append({"rank": int(path.stem.removeprefix("rank-")), **json.loads(path.read_text("utf-8"))})
        except (OSError, ValueError):
            continue
    return sorted(outcomes, key=lambda outcome: outcome["rank"])


def exit_code(outcomes: list[dict[str, Any]], expected: int, returncode: int) -> ExitCode:
    """The pod's exit code: invalid beats failed beats stopped; success needs every rank and rc 0."""
    statuses = {outcome["status"] for outcome in outcomes}
    if "invalid" in statuses:
        return ExitCode.INVALID
    if "failed" in statuses or len(outcomes) < expected:
        return ExitCode.FAILED
    if "stopped" in statuses:
        return ExitCode.STOPPED
    return ExitCode.SUCCESS if returncode == 0 else ExitCode.FAILED


def termination_message(
    code: ExitCode, outcomes: list[dict[str, Any]], returncode: int, lost: str | None = None
) -> str:
    """One JSON line under contract.TERMINATION_MESSAGE_LIMIT bytes describing how the run ended.

    `lost` says which other pod was lost when the launcher ended the trainer for it.
    """
    # The lowest rank that ended the way the pod ends explains it best (rank 0 holds the outputs).
    wanted = {ExitCode.INVALID: "invalid", ExitCode.FAILED: "failed", ExitCode.STOPPED: "stopped"}.get(code, "succeeded")
    main = next((o for o in outcomes if o["status"] == wanted), outcomes[0] if outcomes else {})
    message = main.get("message") or (
        f"a trainer process ended without reporting (exit status {returncode}); see the pod log"
    )
    progress = main.get("progress") or {}
    body: dict[str, Any] = {"exitCode": int(code), "reason": main.get("reason") or REASONS[code], "message": message}
    if lost is not None and code == ExitCode.FAILED:
        # What a rank said then is an echo of the loss (gloo's "connection closed by peer"), when it said anything.
        body.update(reason=TerminationReason.PEER_LOST,
                    message=f"{lost}; ended this pod's trainer so the attempt can restart")
    for key in ("step", "totalSteps", "loss", "evalLoss", "tokensPerSecond"):
        if key in progress:
            body[key] = round(progress[key], 4) if isinstance(progress[key], float) else progress[key]
    if main.get("checkpoint"):
        body["checkpoint"] = main["checkpoint"]
    if main.get("output"):
        body["output"] = main["output"]
    line = _dump(body)
    while len(line.encode()) >= contract.TERMINATION_MESSAGE_LIMIT and body["message"] != "...":
        # Only the free-text message can be long; the details are in the pod log and on the PVC.
        excess = len(line.encode()) - contract.TERMINATION_MESSAGE_LIMIT + 1
        kept = body["message"].removesuffix("...").encode()
        body["message"] = kept[: max(0, len(kept) - excess - 3)].decode(errors="ignore") + "..."
        line = _dump(body)
    return line


def _dump(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class _Forwarder:
    """Forwards the first SIGTERM/SIGINT to the trainer as received; later ones are ignored (it is already saving).

    As received, so the trainer's log says a Ctrl-C was an interrupt, not a kubelet's SIGTERM
    (torchrun passes on the signal it got, too).
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.received:
            self.received = True
            print(f"kubetune-trainer: {signal.Signals(signum).name}: asking the trainer to checkpoint and stop",
                  file=sys.stderr, flush=True)
            self.process.send_signal(signum)


def _child_env(settings: LaunchSettings, extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # Models and datasets download to the PVC, so a restarted pod does not fetch them again.
    env.setdefault("HF_HOME", contract.cache_dir(str(settings.workspace)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def peer_watch(settings: LaunchSettings) -> PeerWatch | None:
    """This pod's watch over the other pods of the attempt; None for a single pod."""
    if settings.nnodes <= 1:
        return None
    return PeerWatch(settings.node_rank, settings.nnodes, settings.master_addr,
                     peers.watch_port(settings.rendezvous_port), settings.peer_timeout)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant: torchrun starts each worker in a session of its own,
    and a worker blocked in a collective ignores SIGTERM."""
    import psutil  # in the trainer extra

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]  # listed first: once the root dies they are reparented
    except psutil.NoSuchProcess:
        return
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def supervise(process: subprocess.Popen[bytes], watch: PeerWatch | None) -> tuple[int, str | None]:
    """Wait for the trainer; end it when the watch says another pod is lost. The exit status, and why it was ended."""
    if watch is None:
        return process.wait(), None
    while True:
        try:
            return process.wait(timeout=watch.interval), None
        except subprocess.TimeoutExpired:
            lost = watch.lost()
            if lost is not None:
                print(f"kubetune-trainer: {lost}: ending this pod's trainer so the attempt can restart",
                      file=sys.stderr, flush=True)
                kill_tree(process.pid)
                return process.wait(), lost


def launch(
    settings: LaunchSettings, extra_env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()
) -> ExitCode:
    """Run the trainer processes to the end; write and print the termination message; return the exit code.

    `pass_fds` stay open in the trainer (`kubetune run`'s workspace lock lives as long as it does).
    """
    watch = peer_watch(settings)
    if watch is not None:
        watch.start()  # pod 0 listens before its trainer starts, so the other pods find it
    with tempfile.TemporaryDirectory(prefix="kubetune-outcome-") as folder:
        outcome_dir = Path(folder)
        # Its own session: a terminal's Ctrl-C reaches only the launcher, which forwards it once.
        process = subprocess.Popen(
            lifeline.wrap(trainer_command(settings, outcome_dir)), env=_child_env(settings, extra_env),
            start_new_session=True, pass_fds=pass_fds,
        )
        forwarder = _Forwarder(process)
        previous = {signum: signal.signal(signum, forwarder) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            returncode, lost = supervise(process, watch)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        outcomes = read_outcomes(outcome_dir)
    code = exit_code(outcomes, settings.nproc_per_node, returncode)
    if watch is not None:
        watch.finish(code, linger=lost is None)
    line = termination_message(code, outcomes, returncode, lost)
    _write_termination_log(settings.termination_log, line)
    print(line, flush=True)
    return code


def _write_termination_log(path: Path, line: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(line + "\n", encoding="utf-8")
    except OSError as error:
        print(f"kubetune-trainer: cannot write the termination message to {path}: {error}", file=sys.stderr)


def main() -> int:
    """Entry point of the `kubetune-trainer` console script."""
    return int(launch(LaunchSettings.from_env()))


if __name__ == "__main__":
    sys.exit(main())
