"""Filling a batch under load (cluster/batching.py, ``hold_s``/``hold_min``/``hold_target``): under sustained load a
batch waits, on one timer, until ``hold_target`` requests are queued or ``hold_s`` has passed;
at low load (fewer than ``hold_min`` waiting as it could leave) it leaves at once.

Driven by a fake owner whose first call waits for a gate, so the test decides what is queued when
the next batch could leave. The assertions are about batch sizes and whether a batch waited; the
one bounded wait (``hold_s`` passing) uses a short real timer and asserts only the outcome.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.messages import Unavailable
from cluster.batching import (
    HOLD_MIN_DEFAULT,
    HOLD_S_DEFAULT,
    HOLD_TARGET_DEFAULT,
    BatchRecord,
    OwnerBatcher,
)
from cluster.frontdoor import Dispatcher


class GatedClient:
    """An owner that records batch sizes; its first call waits for ``gate``."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = asyncio.Event()

    async def submit(self, requests: list[Any]) -> list[Any]:
        self.sizes.append(len(requests))
        if len(self.sizes) == 1:
            await self.gate.wait()
        return [("ok", r) for r in requests]


def _batcher(
    client: GatedClient, records: list[BatchRecord], *, hold_s: float = 0.1, **options: Any
) -> OwnerBatcher:
    options = {"hold_min": 3, "hold_target": 8, **options}
    return OwnerBatcher("o0", client, hold_s=hold_s, on_batch=records.append, **options)


async def _after_first(batcher: OwnerBatcher, client: GatedClient, queued: int) -> list[Any]:
    """One request in flight, ``queued`` more behind it; then the first batch returns."""
    futures = [batcher.submit("first")]
    await asyncio.sleep(0)
    futures += [batcher.submit(f"q{i}") for i in range(queued)]
    client.gate.set()
    await asyncio.sleep(0.001)  # the first call returns; the next batch decides whether to wait
    return futures


def test_under_load_the_next_batch_waits_until_the_target_is_queued() -> None:
    async def scenario() -> None:
        client, records = GatedClient(), []
        batcher = _batcher(client, records, hold_s=0.1)  # the limit: never reached here
        futures = await _after_first(batcher, client, queued=3)
        assert client.sizes == [1]  # three waiting (hold_min): the batch waits for more
        futures += [batcher.submit(f"late{i}") for i in range(4)]
        await asyncio.sleep(0)
        assert client.sizes == [1]  # seven queued: still below the target of eight
        futures.append(batcher.submit("eighth"))
        await asyncio.gather(*futures)
        assert client.sizes == [1, 8]
        assert records[1].held > 0.0
        await batcher.close()

    asyncio.run(scenario())


def test_at_low_load_the_next_batch_leaves_at_once() -> None:
    async def scenario() -> None:
        client, records = GatedClient(), []
        batcher = _batcher(client, records, hold_s=0.1)
        futures = await _after_first(batcher, client, queued=2)  # below hold_min
        await asyncio.gather(*futures)
        assert client.sizes == [1, 2]
        assert [r.held for r in records] == [0.0, 0.0]
        await batcher.close()

    asyncio.run(scenario())


def test_the_wait_ends_after_hold_s_with_what_is_queued() -> None:
    async def scenario() -> None:
        client, records = GatedClient(), []
        batcher = _batcher(client, records, hold_s=0.005)
        futures = await _after_first(batcher, client, queued=4)
        answers = await asyncio.wait_for(asyncio.gather(*futures), 5.0)
        assert client.sizes == [1, 4] and len(answers) == 5
        await batcher.close()

    asyncio.run(scenario())


def test_a_request_given_up_during_the_wait_is_not_sent() -> None:
    async def scenario() -> None:
        client, records = GatedClient(), []
        batcher = _batcher(client, records, hold_s=0.1)
        futures = await _after_first(batcher, client, queued=3)
        futures[1].cancel()  # its caller's deadline passed while the batch waited
        rest = [batcher.submit(f"late{i}") for i in range(5)]
        await asyncio.gather(*futures[2:], *rest, futures[0])
        assert client.sizes == [1, 7]
        await batcher.close()

    asyncio.run(scenario())


def test_closing_releases_a_waiting_batch_and_fails_what_is_queued() -> None:
    async def scenario() -> None:
        client, records = GatedClient(), []
        batcher = _batcher(client, records, hold_s=0.1)
        futures = await _after_first(batcher, client, queued=3)
        await asyncio.wait_for(batcher.close(), 5.0)
        replies = [f.result() for f in futures[1:]]
        assert all(isinstance(r, Unavailable) and "closing" in r.message for r in replies)
        assert client.sizes == [1]

    asyncio.run(scenario())


def test_hold_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="hold_target"):
        OwnerBatcher("o0", GatedClient(), hold_s=0.001, hold_target=-1)
    for hold_s in (-0.001, 0.5):
        with pytest.raises(ValueError, match="hold_s"):
            OwnerBatcher("o0", GatedClient(), hold_s=hold_s)
        with pytest.raises(ValueError, match="hold_s"):
            Dispatcher(None, None, hold_s=hold_s)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hold_min"):
        OwnerBatcher("o0", GatedClient(), hold_s=0.001, hold_min=0)
    with pytest.raises(ValueError, match="hold_min"):
        Dispatcher(None, None, hold_s=0.001, hold_min=0)  # type: ignore[arg-type]


def test_start_frontdoor_checks_the_hold_before_anything_starts() -> None:
    from cluster.bootstrap import StartupError, start_frontdoor

    with pytest.raises(StartupError, match="batch_hold_s"):
        asyncio.run(start_frontdoor(batch_hold_s=1.0))


def test_the_front_door_fills_batches_by_default() -> None:
    dispatcher = Dispatcher(None, None)  # type: ignore[arg-type]
    assert (dispatcher._hold_s, dispatcher._hold_min, dispatcher._hold_target) == (
        HOLD_S_DEFAULT,
        HOLD_MIN_DEFAULT,
        HOLD_TARGET_DEFAULT,
    )
    assert HOLD_S_DEFAULT > 0 and HOLD_MIN_DEFAULT < HOLD_TARGET_DEFAULT
