"""The operator as a process of its own: `kill()` is a real SIGKILL (an operator pod OOM-killed or
evicted mid-reconcile), and the scale benchmark measures its RSS and CPU alone."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path


class ProcessOperator:
    """Runs an operator command in its own process group.

    `make_probe()` is called before each start and returns the readiness check of that start
    (e.g. "it opened its watches since now"), so a restarted operator is awaited afresh.
    """

    def __init__(self, argv: list[str], env: dict[str, str], log_file: Path,
                 make_probe: Callable[[], Callable[[], bool]] | None = None, ready_timeout: float = 60.0) -> None:
        self.argv = argv
        self.env = env
        self.log_file = log_file
        self.make_probe = make_probe
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process; return when the probe holds."""
        ready = self.make_probe() if self.make_probe is not None else None
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        if ready is None:
            return
        for _ in range(int(self.ready_timeout * 10)):
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.process.returncode}; log: {self.log_tail()}")
            if ready():
                return
            threading.Event().wait(0.1)
        raise RuntimeError(f"the operator was not ready within {self.ready_timeout} s; log: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then wait (SIGKILL after 30 s)."""
        self._end(signal.SIGTERM, 30)

    def kill(self) -> None:
        """SIGKILL the whole process group."""
        self._end(signal.SIGKILL, 10)

    def _end(self, sig: int, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the operator's log."""
        return self.log_file.read_text(errors="replace")[-chars:] if self.log_file.exists() else ""
