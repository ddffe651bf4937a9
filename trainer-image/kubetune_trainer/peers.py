"""The launchers of an attempt's pods watch each other, so a lost pod ends the others within a bound.

Why the launcher: when a pod dies (kill -9, a lost node), the trainers of the other pods sit
in an NCCL collective. NCCL's watchdog fires only at the collective timeout, and then the
process can stay alive "dumping" for minutes (seen on 2x H200); a process blocked in a
collective never runs its SIGTERM handler either, so on a cluster every gang restart would
cost the whole grace period on every GPU. The launcher is not in any collective, so it can
tell, and end its trainer.

How: pod 0's launcher hosts a small `torch.distributed.TCPStore` (the store torchrun itself
uses) on the rendezvous port + 1, before its trainer starts. It is the launcher's own rather
than torchrun's (on the rendezvous port) because torchrun's closes with pod 0's trainer, and
pod 0 must be able to say that it finished. Every launcher adds 1 to its beat counter every
`interval` seconds and reads the others'; when its trainer ends it publishes its exit code.
`lost_peer` then decides, from what was seen and when (this pod's clock only):

- a pod that published 0 or 75 finished its part: never a reason (pod 0 may export for minutes
  after pod 1 is done);
- a pod that published another code is lost `timeout` seconds later (this pod's trainer had
  that long to fail on its own, as it does over gloo);
- a pod that was seen beating and then stopped for `timeout` seconds is lost (killed, its node
  gone, or frozen). A pod whose store host (pod 0) is gone sees every counter stop: the same rule;
- a pod never seen is not lost: torchrun's rendezvous already bounds how long pods wait to join.
"""

from __future__ import annotations

import datetime
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kubetune_api.contract import ExitCode

if TYPE_CHECKING:
    from torch.distributed import TCPStore

TIMEOUT_ENV = "KUBETUNE_PEER_TIMEOUT_SECONDS"
"""How long a pod may be silent (or failed) before the others end their trainers."""
DEFAULT_TIMEOUT_S = 30.0
"""With the beat every 3 s, a lost pod ends the others within ~35 s (issue 16 asks for <= 60 s)."""
FINISHED = frozenset({ExitCode.SUCCESS, ExitCode.STOPPED})


def watch_port(master_port: int) -> int:
    """The watch store's port: the one after the rendezvous port (pods reach each other on any port)."""
    return master_port + 1


def beat_interval(timeout: float) -> float:
    """Ten beats per timeout: one lost beat (a slow store round trip) never looks like a lost pod."""
    return max(0.1, timeout / 10)


@dataclass(frozen=True)
class PeerView:
    """What this pod has seen of one other pod, in this pod's monotonic clock."""

    beats: int = 0
    last_beat: float | None = None
    """When `beats` last went up; None while the pod was never seen."""
    exit_code: int | None = None
    exited_at: float | None = None

    def observed(self, beats: int, exit_code: int | None, now: float) -> PeerView:
        """This view after reading the pod's counter and exit code at `now`."""
        view = self
        if beats > self.beats:
            view = replace(view, beats=beats, last_beat=now)
        if exit_code is not None and self.exit_code is None:
            view = replace(view, exit_code=exit_code, exited_at=now)
        return view


def lost_peer(views: Mapping[int, PeerView], now: float, timeout: float) -> str | None:
    """Why this pod's trainer must be ended at `now` (the first lost pod, by index), or None to go on."""
    for node, view in sorted(views.items()):
        if view.exit_code is not None:
            if view.exit_code in FINISHED or view.exited_at is None:
                continue
            if now - view.exited_at >= timeout:
                return f"pod {node} of the attempt exited {view.exit_code} {now - view.exited_at:.0f} s ago"
        elif view.last_beat is not None and now - view.last_beat >= timeout:
            return f"pod {node} of the attempt stopped answering (no heartbeat for {now - view.last_beat:.0f} s)"
    return None


def _beat_key(node: int) -> str:
    return f"kubetune/beat/{node}"


def _exit_key(node: int) -> str:
    return f"kubetune/exit/{node}"


def _say(message: str) -> None:
    print(f"kubetune-trainer: {message}", file=sys.stderr, flush=True)


class PeerWatch:
    """This pod's side of the watch: a daemon thread beats and reads; `lost()` decides; `finish()` says goodbye."""

    def __init__(self, node: int, nnodes: int, host: str, port: int, timeout: float = DEFAULT_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node, self.host, self.port, self.timeout = node, host, port, timeout
        self.interval = beat_interval(timeout)
        self._clock = clock
        self._views = {peer: PeerView() for peer in range(nnodes) if peer != node}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._store: TCPStore | None = None
        self._thread = threading.Thread(target=self._run, name="kubetune-peer-watch", daemon=True)

    def start(self) -> None:
        """Pod 0 binds the store now (before its trainer starts); then the beats begin."""
        if self.node == 0:
            try:
                self._store = self._open(is_master=True)
            except RuntimeError as error:  # the port is taken: train anyway, unwatched, and say so
                _say(f"peer watch off: cannot listen on port {self.port}: {error}")
                return
        self._thread.start()

    def views(self) -> dict[int, PeerView]:
        """A copy of what was seen of the other pods so far."""
        with self._lock:
            return dict(self._views)

    def lost(self) -> str | None:
        """Why this pod's trainer must be ended now, or None (see `lost_peer`)."""
        return lost_peer(self.views(), self._clock(), self.timeout)

    def finish(self, code: int, linger: bool = True) -> None:
        """Publish this pod's exit code; pod 0 keeps the store up until every pod published (a few beats at most).

        No `linger` when a pod was lost: it will never publish, and this pod's exit is what the gang waits for.
        """
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self.interval)
        store = self._store
        if store is None or self._thread.is_alive():  # never connected, or stuck on a dead network
            return
        try:
            store.set(_exit_key(self.node), str(int(code)))
            deadline = self._clock() + 2 * self.interval + 1
            others = [_exit_key(peer) for peer in self._views]
            while linger and self.node == 0 and others and not store.check(others) and self._clock() < deadline:
                time.sleep(self.interval / 4)
        except RuntimeError:  # the host is gone: nobody is left to tell
            pass

    def _open(self, is_master: bool) -> TCPStore:
        from torch.distributed import TCPStore

        # The host's own client goes through loopback: its name behind the Service may not resolve yet.
        return TCPStore("localhost" if is_master else self.host, self.port, is_master=is_master, wait_for_workers=False,
                        timeout=datetime.timedelta(seconds=max(self.timeout, 1.0)))

    def _connect(self) -> TCPStore | None:
        """A client of pod 0's store, or None while nothing listens there (yet, or any more)."""
        try:
            # A plain probe first: TCPStore's own connect retries log a stack trace per try.
            socket.create_connection((self.host, self.port), timeout=self.interval).close()
            return self._open(is_master=False)
        except (OSError, RuntimeError):
            return None

    def _run(self) -> None:
        said_lost = False
        while not self._stopping.is_set():
            store = self._store if self._store is not None else self._connect()
            if store is not None:
                try:
                    self._beat_and_read(store)
                    self._store, said_lost = store, False
                except RuntimeError as error:  # DistNetworkError: pod 0's launcher is gone
                    if not said_lost:
                        _say(f"peer watch: lost the store at {self.host}:{self.port}: {str(error).splitlines()[0]}")
                        said_lost = True
                    if self.node != 0:
                        self._store = None  # reconnect if it comes back; meanwhile every counter stands still
            self._stopping.wait(self.interval)

    def _beat_and_read(self, store: TCPStore) -> None:
        store.add(_beat_key(self.node), 1)
        seen = {}
        for peer in self._views:
            beats = store.add(_beat_key(peer), 0)  # adding 0 reads without waiting for a missing key
            code = int(store.get(_exit_key(peer))) if store.check([_exit_key(peer)]) else None
            seen[peer] = (beats, code)
        now = self._clock()
        with self._lock:
            for peer, (beats, code) in seen.items():
                self._views[peer] = self._views[peer].observed(beats, code, now)
