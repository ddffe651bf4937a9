"""A coalescing, rate-free work queue of FineTuneJob keys: one reconcile per key at a time.

Watch events arrive in bursts: creating one attempt fires the FineTuneJob's
own event, the Job's, then each pod's (pending, scheduled, running...). A
reconcile reads the whole state anyway, so N events for one key before its
turn come are one reconcile, and an event during a key's reconcile queues
exactly one more after it (the reconcile may have read the state before the
event). Keys can also be scheduled later (`add(key, delay)`): a backoff, a
deadline, the next progress poll; an earlier add wins over a later one.

Two lanes: an `urgent` add (a new FineTuneJob, a spec change: a user waits for
the first attempt) is handed out before the keys of routine pod and Job events.

Written by hand because kopf runs one handler call per event (no coalescing)
and controller-runtime's workqueue is Go; this is its delaying, de-duplicating
part, without rate limiting (the operator's own backoffs are in the status).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Keys waiting for a worker, each at most once; keys being worked on are never handed out twice."""

    def __init__(self) -> None:
        self._ready: asyncio.PriorityQueue[tuple[int, int, K]] = asyncio.PriorityQueue()
        self._order = 0  # FIFO within a lane
        self._queued: set[K] = set()  # in _ready, not yet taken
        self._active: set[K] = set()  # taken by a worker
        self._again: set[K] = set()  # added while active: queue once more when done
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._due: dict[K, float] = {}

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: K, delay: float = 0.0, urgent: bool = False) -> None:
        """Queue a key now (`urgent`: ahead of routine keys), or after `delay` seconds (kept if an earlier
        turn is already scheduled)."""
        if delay > 0:
            self._add_later(key, delay)
            return
        self._cancel_timer(key)
        if key in self._active:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._order += 1
            self._ready.put_nowait((0 if urgent else 1, self._order, key))

    def _add_later(self, key: K, delay: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if key in self._due and self._due[key] <= due:
            return  # an earlier turn is already scheduled
        self._cancel_timer(key)
        self._due[key] = due
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self._due.pop(key, None)
        self.add(key)

    def _cancel_timer(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        self._due.pop(key, None)
        if timer is not None:
            timer.cancel()

    def forget(self, key: K) -> None:
        """Drop a scheduled later turn (the object is gone); a queued or active turn still runs."""
        self._cancel_timer(key)

    def scheduled(self, key: K) -> bool:
        """Whether the key has a later turn scheduled."""
        return key in self._timers

    async def get(self) -> K:
        """The next key; it stays this worker's until `done(key)`."""
        _, _, key = await self._ready.get()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: K) -> None:
        """The worker finished the key; queue it again if events came meanwhile."""
        self._active.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    async def work(self, handle: Callable[[K], Awaitable[None]]) -> None:
        """A worker: take keys forever, handle each, always mark it done (run several as tasks)."""
        while True:
            key = await self.get()
            try:
                await handle(key)
            finally:
                self.done(key)
