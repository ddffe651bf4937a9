"""`python -m kubetune_trainer.lifeline PARENT_PID -- COMMAND...`: COMMAND gets SIGTERM when its parent dies.

The launcher starts the trainer in a session of its own (a terminal's Ctrl-C must reach only
the launcher, which forwards it once), so a kill -9 of `kubetune run` used to leave the trainer
running as an orphan, writing into the same workspace. Linux's PR_SET_PDEATHSIG signals a
process when its parent dies, and it survives execve; setting it from Popen's preexec_fn is
unsafe once the launcher has threads (the peer watch's, TCPStore's), so this module sets it in
the child and then execs the real command. SIGTERM, not SIGKILL: the trainer saves a checkpoint
at the next step and exits (torchrun forwards it to its workers), as on a pod's deletion.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def set_parent_death_signal(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `signum` to this process when its parent dies; False where that is not Linux."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def wrap(command: list[str], parent: int | None = None) -> list[str]:
    """`command` run through this module, tied to `parent` (default: this process)."""
    return [sys.executable, "-m", "kubetune_trainer.lifeline", str(parent or os.getpid()), "--", *command]


def main(argv: list[str] | None = None) -> None:
    """Set the parent-death signal, check the parent is still the one named, exec the command."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: python -m kubetune_trainer.lifeline PARENT_PID -- COMMAND...")
    parent, command = int(args[0]), args[2:]
    set_parent_death_signal()
    if os.getppid() != parent:  # the parent died before the line above: no signal would ever come
        sys.exit(f"kubetune lifeline: parent {parent} is gone; not starting {command[0]}")
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
