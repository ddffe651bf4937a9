"""Ways to run an operator against the emulated API server, each stoppable and restartable.

- `ThreadOperator`: a coroutine (kopf.operator or the project's run_operator)
  in its own thread and event loop: on stop, kopf cancels every task of its
  loop, so it must not share one with the test or the emulator. Stopping is
  graceful only (a thread cannot be killed).
- `ProcessOperator`: a command line in its own process: `kill()` is a real
  SIGKILL (an operator pod OOM-killed or evicted mid-reconcile), and the
  benchmark measures its RSS and CPU alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

OperatorMain = Callable[[threading.Event, threading.Event], Coroutine[Any, Any, Any]]
"""(stop_flag, ready_flag) -> the operator's coroutine, e.g. `kopf.operator(..., stop_flag=, ready_flag=)`."""


class OperatorRunner(Protocol):
    """An operator that can be started, stopped and killed."""

    def start(self) -> None:
        """Start it and return once it is ready (or raise)."""

    def stop(self) -> None:
        """Stop it gracefully and wait."""

    def kill(self) -> None:
        """Stop it as abruptly as the runner can."""

    def alive(self) -> bool:
        """Whether it runs."""


class ThreadOperator:
    """Runs an operator coroutine in a thread with its own event loop."""

    def __init__(self, main: OperatorMain, ready_timeout: float = 30.0) -> None:
        self.main = main
        self.ready_timeout = ready_timeout
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> None:
        """Start the thread; return when the operator says it is ready."""
        self._stop, ready = threading.Event(), threading.Event()
        self.error = None
        self._thread = threading.Thread(target=self._run, args=(self._stop, ready), name="operator", daemon=True)
        self._thread.start()
        deadline = self.ready_timeout
        while not ready.wait(0.1):
            deadline -= 0.1
            if self.error is not None or not self._thread.is_alive():
                raise RuntimeError(f"the operator stopped before it was ready: {self.error!r}") from self.error
            if deadline <= 0:
                raise RuntimeError(f"the operator was not ready within {self.ready_timeout} s")

    def _run(self, stop: threading.Event, ready: threading.Event) -> None:
        try:
            asyncio.run(self.main(stop, ready))
        except BaseException as error:  # noqa: BLE001 - kept for start() and the tests
            self.error = error

    def stop(self) -> None:
        """Set the stop flag and join."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            if self._thread.is_alive():
                raise RuntimeError("the operator thread did not stop within 60 s")

    def kill(self) -> None:
        """Threads cannot be killed: the same as stop()."""
        self.stop()

    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread is not None and self._thread.is_alive()


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
