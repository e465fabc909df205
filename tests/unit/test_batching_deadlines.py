"""cluster.batching.Deadlines: one loop timer failing the futures whose deadline has passed.

What is checked: a future is failed only once its deadline has passed (the loop's clock at the
failure is at or past it), a discarded or done future is never failed, a deadline earlier than
every filed one re-arms the timer for it, futures under several ticks are all failed in turn, and
close() stops it. Outcomes and the loop's own clock only: no assertion on elapsed wall time.
"""

from __future__ import annotations

import asyncio

import pytest

from cluster.batching import Deadlines


class Recorder:
    """The ``expire`` callback: fails the future, notes the loop time it was called at."""

    def __init__(self) -> None:
        self.expired: list[tuple[asyncio.Future[int], float]] = []

    def __call__(self, future: asyncio.Future[int]) -> None:
        self.expired.append((future, asyncio.get_running_loop().time()))
        future.set_exception(TimeoutError())


def test_a_future_is_failed_only_after_its_deadline() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        recorder = Recorder()
        deadlines: Deadlines[int] = Deadlines(recorder, tick_s=0.005)
        future: asyncio.Future[int] = loop.create_future()
        deadline = loop.time() + 0.02
        deadlines.add(future, deadline)
        with pytest.raises(TimeoutError):
            await future
        assert len(recorder.expired) == 1
        assert recorder.expired[0][0] is future
        assert recorder.expired[0][1] >= deadline  # never early

    asyncio.run(scenario())


def test_discarded_and_done_futures_are_not_failed() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        recorder = Recorder()
        deadlines: Deadlines[int] = Deadlines(recorder, tick_s=0.005)
        answered: asyncio.Future[int] = loop.create_future()
        discarded: asyncio.Future[int] = loop.create_future()
        late: asyncio.Future[int] = loop.create_future()
        deadline = loop.time() + 0.01
        deadlines.add(answered, deadline)
        tick = deadlines.add(discarded, deadline)
        deadlines.add(late, deadline)
        answered.set_result(1)
        deadlines.discard(discarded, tick)
        with pytest.raises(TimeoutError):
            await late
        assert [future for future, _ in recorder.expired] == [late]
        assert answered.result() == 1
        assert not discarded.done()
        assert len(deadlines) == 0  # the tick was dropped once due

    asyncio.run(scenario())


def test_an_earlier_deadline_rearms_the_timer_and_every_tick_is_served() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        recorder = Recorder()
        deadlines: Deadlines[int] = Deadlines(recorder, tick_s=0.005)
        now = loop.time()
        slow: asyncio.Future[int] = loop.create_future()
        fast: asyncio.Future[int] = loop.create_future()
        middle: asyncio.Future[int] = loop.create_future()
        deadlines.add(slow, now + 0.06)  # armed for this one first
        deadlines.add(fast, now + 0.01)  # earlier: must not wait for the slow one's tick
        deadlines.add(middle, now + 0.03)
        with pytest.raises(TimeoutError):
            await fast
        assert not slow.done() and not middle.done()
        for future in (middle, slow):
            with pytest.raises(TimeoutError):
                await future
        assert [future for future, _ in recorder.expired] == [fast, middle, slow]
        for future, at in recorder.expired:
            assert at >= {fast: now + 0.01, middle: now + 0.03, slow: now + 0.06}[future]

    asyncio.run(scenario())


def test_close_stops_the_timer_without_failing_anything() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        recorder = Recorder()
        deadlines: Deadlines[int] = Deadlines(recorder, tick_s=0.005)
        future: asyncio.Future[int] = loop.create_future()
        deadlines.add(future, loop.time() + 0.01)
        deadlines.close()
        await asyncio.sleep(0.03)
        assert recorder.expired == []
        assert not future.done()

    asyncio.run(scenario())


def test_tick_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tick_s"):
        Deadlines(Recorder(), tick_s=0)
