"""Flush on idle (cluster/batching.py, ``hold_s``): a batch grows only while the loop is busy.

The batcher is driven by a fake owner client and two seams: ``busy`` (does the loop have other
work ready?) and ``clock``. The fake ``busy`` plays the part of a loop receiving requests: each
time the batcher looks, the next scripted request arrives. No assertion depends on real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from cluster.batching import BatchRecord, LoopProbe, OwnerBatcher
from cluster.frontdoor import Dispatcher


class GatedClient:
    """An owner that records batch sizes; the first batch waits for ``gate``."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = asyncio.Event()

    async def submit(self, requests: list[Any]) -> list[Any]:
        self.sizes.append(len(requests))
        if len(self.sizes) == 1:
            await self.gate.wait()
        return [("ok", r) for r in requests]


class Arrivals:
    """A busy loop: each look at it lets one more scripted request arrive; idle when none is
    left. Counts the looks (one per yield of a holding sender)."""

    def __init__(self, batcher: OwnerBatcher, names: list[str]) -> None:
        self.batcher = batcher
        self.names = list(names)
        self.futures: list[asyncio.Future[Any]] = []
        self.looks = 0

    def __call__(self) -> bool:
        self.looks += 1
        if not self.names:
            return False
        self.futures.append(self.batcher.submit(self.names.pop(0)))
        return True


class StepClock:
    """A clock that moves ``step`` seconds every time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(scenario())


async def _second_batch(
    hold_s: float, arrivals: list[str], **options: Any
) -> tuple[GatedClient, list[BatchRecord], Arrivals]:
    """One request in flight, two more queue behind it; the busy loop then brings ``arrivals``
    as the first batch returns. Returns the batch sizes and records."""
    client = GatedClient()
    records: list[BatchRecord] = []
    options = {"hold_min": 2, **options}  # b and c make a queue of two
    batcher = OwnerBatcher(
        "o0", client, hold_s=hold_s, clock=StepClock(0.0001), on_batch=records.append, **options
    )
    loop = Arrivals(batcher, arrivals)
    batcher._busy = loop  # the seam, set after construction: it submits to this batcher
    first = batcher.submit("a")
    await asyncio.sleep(0)
    queued = [batcher.submit("b"), batcher.submit("c")]
    client.gate.set()
    answers = await asyncio.gather(first, *queued)
    assert answers == [("ok", "a"), ("ok", "b"), ("ok", "c")]
    while loop.futures and not all(f.done() for f in loop.futures):
        await asyncio.gather(*loop.futures)
    await batcher.close()
    return client, records, loop


def test_a_busy_loop_grows_the_next_batch_and_an_idle_one_ends_the_wait() -> None:
    async def scenario() -> None:
        client, records, loop = await _second_batch(0.002, ["d", "e", "f"])
        # b and c waited; while the loop was busy d, e, f arrived and rode the same batch; the
        # fourth look found the loop idle and the batch left.
        assert client.sizes == [1, 5]
        assert [r.size for r in records] == [1, 5]
        assert records[0].held == 0.0 and records[1].held > 0.0
        assert loop.looks == 4

    run(scenario)


def test_without_hold_the_next_batch_leaves_at_once() -> None:
    async def scenario() -> None:
        client, records, loop = await _second_batch(0.0, ["d", "e", "f"])
        assert client.sizes == [1, 2]  # the plain rule: b and c leave as a returns
        assert loop.looks == 0 and all(r.held == 0.0 for r in records)

    run(scenario)


def test_the_wait_is_bounded_by_hold_s_even_if_the_loop_stays_busy() -> None:
    async def scenario() -> None:
        arrivals = [f"r{i}" for i in range(100)]
        # clock steps 0.1 ms per read, bound 0.5 ms: the batch leaves after ~5 looks.
        client, records, loop = await _second_batch(0.0005, arrivals)
        assert client.sizes[:2] == [1, 2 + loop.looks] and loop.looks <= 6
        assert records[1].held > 0.0004
        assert sum(client.sizes) == 3 + loop.looks  # every arrival was sent, none lost

    run(scenario)


def test_the_wait_ends_when_the_batch_is_full() -> None:
    async def scenario() -> None:
        client, _records, _loop = await _second_batch(
            0.05, [f"r{i}" for i in range(10)], batch_max=4
        )
        assert client.sizes == [1, 4]  # b, c + two arrivals fill it: it leaves at once

    run(scenario)


def test_a_lone_request_never_waits_even_on_a_busy_loop() -> None:
    async def scenario() -> None:
        client = GatedClient()
        client.gate.set()
        records: list[BatchRecord] = []
        looks = 0

        def busy() -> bool:
            nonlocal looks
            looks += 1
            return True

        batcher = OwnerBatcher(
            "o0", client, hold_s=0.05, busy=busy, clock=StepClock(0.001), on_batch=records.append
        )
        assert await batcher.submit("a") == ("ok", "a")
        assert await batcher.submit("b") == ("ok", "b")
        # One request queued when the batch could leave (below hold_min): no look, no wait.
        assert batcher.hold_min >= 2
        assert client.sizes == [1, 1] and looks == 0
        assert [r.held for r in records] == [0.0, 0.0]
        await batcher.close()

    run(scenario)


def test_an_idle_loop_sends_the_queued_batch_at_once() -> None:
    async def scenario() -> None:
        client, records, loop = await _second_batch(0.05, [])
        assert client.sizes == [1, 2] and loop.looks == 1 and records[1].held == 0.0

    run(scenario)


def test_a_request_given_up_while_its_batch_waits_is_dropped() -> None:
    async def scenario() -> None:
        client = GatedClient()
        batcher = OwnerBatcher("o0", client, hold_s=0.05, hold_min=2, clock=StepClock(0.0001))
        first = batcher.submit("a")
        await asyncio.sleep(0)
        gone = batcher.submit("b")
        kept = batcher.submit("c")
        looks = 0

        def busy() -> bool:
            nonlocal looks
            looks += 1
            if looks == 1:
                gone.cancel()  # its caller's deadline passed while the batch waited
            return looks < 3

        batcher._busy = busy
        client.gate.set()
        assert await first == ("ok", "a")
        assert await kept == ("ok", "c")
        assert client.sizes == [1, 1]
        await batcher.close()

    run(scenario)


def test_waiting_senders_do_not_keep_each_other_busy() -> None:
    """Two owners' senders wait at once on a real loop with nothing else to do: each sees only
    the other in the ready queue, which does not count, so both leave after one look (with a
    clock that never moves, a sender counting the other as work would never leave)."""

    async def scenario() -> None:
        clients = [GatedClient(), GatedClient()]
        reads = 0

        def frozen_clock() -> float:  # moves past the bound only after 100 reads
            nonlocal reads
            reads += 1
            return 0.0 if reads < 100 else 1.0

        batchers = [
            OwnerBatcher(f"o{i}", client, hold_s=0.05, hold_min=2, clock=frozen_clock)
            for i, client in enumerate(clients)
        ]
        firsts = [b.submit(f"{b.owner}-a") for b in batchers]
        await asyncio.sleep(0)
        queued = [b.submit(f"{b.owner}-{x}") for b in batchers for x in ("b", "c")]
        for client in clients:
            client.gate.set()
        await asyncio.gather(*firsts, *queued)
        assert [c.sizes for c in clients] == [[1, 2], [1, 2]]
        assert reads < 10, "senders kept each other waiting"
        for batcher in batchers:
            await batcher.close()

    run(scenario)


def test_loop_probe_counts_work_but_not_waiting_senders() -> None:
    class FakeLoop:
        def __init__(self) -> None:
            self._ready: list[object] = []

    loop = FakeLoop()
    probe = LoopProbe(loop)  # type: ignore[arg-type]
    probe.holding = 1  # the caller
    assert not probe.busy()
    loop._ready.append("a callback")
    assert probe.busy()
    probe.holding = 2  # the caller and another waiting sender, which is the one ready
    assert not probe.busy()
    loop._ready.append("a callback")
    assert probe.busy()
    assert not LoopProbe(object()).busy()  # type: ignore[arg-type]  # no ready queue: never busy


@pytest.mark.parametrize("hold_s", [-0.001, 0.5])
def test_hold_is_bounded(hold_s: float) -> None:
    with pytest.raises(ValueError, match="hold_s"):
        OwnerBatcher("o0", GatedClient(), hold_s=hold_s)
    with pytest.raises(ValueError, match="hold_s"):
        Dispatcher(None, None, hold_s=hold_s)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hold_min"):
        OwnerBatcher("o0", GatedClient(), hold_s=0.001, hold_min=0)
    with pytest.raises(ValueError, match="hold_min"):
        Dispatcher(None, None, hold_s=0.001, hold_min=0)  # type: ignore[arg-type]


def test_hold_min_sets_how_much_load_a_batch_needs_before_it_waits() -> None:
    async def scenario() -> None:
        # Two queued requests when the first batch returns: hold_min=3 sends them at once.
        client, _records, loop = await _second_batch(0.002, ["d", "e"], hold_min=3)
        assert client.sizes == [1, 2] and loop.looks == 0

    run(scenario)


def test_start_frontdoor_checks_the_hold_before_anything_starts() -> None:
    from cluster.bootstrap import StartupError, start_frontdoor

    with pytest.raises(StartupError, match="batch_hold_s"):
        asyncio.run(start_frontdoor(batch_hold_s=1.0))
