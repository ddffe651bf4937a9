"""The event-driven sync loop that the test Job controller and the test kubelet share."""

from __future__ import annotations

import asyncio

BATCH_SECONDS = 0.02  # a sync waits this long after a wake-up, to handle a burst of events in one pass


class SyncLoop:
    """Calls `sync()` after every wake-up (batched) and at least every `resync_seconds`, like a controller."""

    loop_name = "test-sync-loop"

    def __init__(self, resync_seconds: float) -> None:
        self.resync_seconds = resync_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def wake(self) -> None:
        """Ask for a sync soon (an event arrived)."""
        self._wake.set()

    def start(self) -> None:
        """Start the sync loop (call from the emulator's loop)."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.loop_name)

    def stop_loop(self) -> None:
        """Stop syncing."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    async def sync(self) -> None:
        """One pass over the objects this loop drives."""
        raise NotImplementedError

    async def _loop(self) -> None:
        while not self._stopped:  # a flag, too: Python 3.11's wait_for can swallow a cancellation
            try:
                await asyncio.wait_for(self._wake.wait(), self.resync_seconds)
            except TimeoutError:
                pass
            await asyncio.sleep(BATCH_SECONDS)  # let a burst of events land, then sync once for all
            self._wake.clear()
            await self.sync()
