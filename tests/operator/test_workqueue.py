"""The coalescing work queue: one turn per key however many events, never two workers on one key."""

from __future__ import annotations

import asyncio

from kubetune_operator.workqueue import WorkQueue


async def test_a_burst_of_adds_for_one_key_is_one_turn() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    assert [await queue.get(), await queue.get()] == ["a", "b"]


async def test_an_add_during_a_turn_queues_exactly_one_more_after_it() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    key = await queue.get()
    queue.add("a")
    queue.add("a")
    assert len(queue) == 0  # never handed to a second worker while the first has it
    queue.done(key)
    assert len(queue) == 1 and await queue.get() == "a"


async def test_a_later_turn_fires_after_its_delay_and_the_earliest_schedule_wins() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a", delay=0.2)
    queue.add("a", delay=5.0)  # later than what is scheduled: ignored
    assert queue.scheduled("a") and len(queue) == 0
    assert await asyncio.wait_for(queue.get(), 1.0) == "a"
    queue.done("a")
    queue.add("a", delay=5.0)
    queue.add("a")  # an event now wins over the scheduled turn
    assert not queue.scheduled("a") and await queue.get() == "a"


async def test_forget_drops_a_scheduled_turn() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("gone", delay=0.05)
    queue.forget("gone")
    await asyncio.sleep(0.1)
    assert len(queue) == 0


async def test_workers_handle_each_key_once_at_a_time() -> None:
    queue: WorkQueue[int] = WorkQueue()
    running: set[int] = set()
    seen: list[int] = []

    async def handle(key: int) -> None:
        assert key not in running
        running.add(key)
        await asyncio.sleep(0.01)
        seen.append(key)
        running.discard(key)

    workers = [asyncio.create_task(queue.work(handle)) for _ in range(3)]
    for key in [1, 2, 1, 3, 1, 2]:
        queue.add(key)
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.2)
    for worker in workers:
        worker.cancel()
    assert sorted(set(seen)) == [1, 2, 3] and len(seen) <= 6


async def test_an_urgent_key_is_handed_out_before_routine_ones() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("pod-event-1")
    queue.add("pod-event-2")
    queue.add("new-finetunejob", urgent=True)
    assert [await queue.get() for _ in range(3)] == ["new-finetunejob", "pod-event-1", "pod-event-2"]
