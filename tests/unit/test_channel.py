"""The owner's direct channel (actors/channel.py) and its front-door client (cluster/owners.py),
over real TCP on localhost, with an in-process handler in place of the owner's submit.

What must hold: replies come back matched to their calls; nothing is unpickled from a peer that
did not prove the secret (either way); a frame over the bound, truncated or garbled closes that
connection with a logged reason; a call whose connection drops or times out fails as an unknown
outcome (never resent); the client finds a restarted owner (new port, new secret) by asking for
the endpoint again.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from actors.channel import (
    CALL,
    HEADER,
    MAGIC,
    NONCE_BYTES,
    CallFailed,
    ChannelClosed,
    ChannelConnection,
    ChannelServer,
    Endpoint,
    HandshakeError,
    _mac,
    encode_frame,
)
from actors.messages import Unavailable
from cluster.batching import OwnerBatcher
from cluster.owners import DirectOwnerClient


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


class Recorder:
    """A handler that echoes each request tagged, remembering every call it ran."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def __call__(self, requests: list[Any]) -> Sequence[Any]:
        self.calls.append(requests)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("database down")
        return [("ok", request) for request in requests]


async def _raw_authenticated(
    endpoint: Endpoint,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made client that passes the handshake (to send bad frames afterwards)."""
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    front = secrets.token_bytes(NONCE_BYTES)
    writer.write(MAGIC + front)
    hello = await reader.readexactly(len(MAGIC) + NONCE_BYTES + 32)
    owner = hello[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    writer.write(_mac(endpoint.secret, b"front", owner, front))
    await writer.drain()
    return reader, writer


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


def test_calls_round_trip_multiplexed_and_matched_by_id() -> None:
    async def scenario() -> None:
        handler = Recorder()
        server = ChannelServer(handler, host="127.0.0.1")
        endpoint = await server.start()
        connection = await ChannelConnection.open(endpoint, timeout_s=5)
        try:
            replies = await asyncio.gather(
                *(connection.call([f"r{i}", i], timeout_s=5) for i in range(20))
            )
            assert replies == [[("ok", f"r{i}"), ("ok", i)] for i in range(20)]
            assert len(handler.calls) == 20  # each call ran exactly once
            assert connection.in_flight == 0
        finally:
            await connection.close()
            await server.close()

    run(scenario)


def test_owner_failure_of_a_call_is_reported_and_the_connection_stays_usable() -> None:
    async def scenario() -> None:
        handler = Recorder()
        server = ChannelServer(handler, host="127.0.0.1")
        connection = await ChannelConnection.open(await server.start(), timeout_s=5)
        try:
            handler.fail = True
            with pytest.raises(CallFailed, match="database down"):
                await connection.call(["a"], timeout_s=5)
            handler.fail = False
            assert await connection.call(["b"], timeout_s=5) == [("ok", "b")]
        finally:
            await connection.close()
            await server.close()

    run(scenario)


def test_a_client_with_the_wrong_secret_is_refused_and_nothing_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        handler = Recorder()
        server = ChannelServer(handler, host="127.0.0.1")
        endpoint = await server.start()
        wrong = Endpoint(endpoint.host, endpoint.port, secrets.token_bytes(32))
        try:
            # The owner's proof does not verify under the wrong secret: the client stops.
            with pytest.raises(HandshakeError, match="did not prove"):
                await ChannelConnection.open(wrong, timeout_s=5)
            # A peer that skips the proof and sends a call at once is dropped unheard.
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            writer.write(MAGIC + secrets.token_bytes(NONCE_BYTES))
            await reader.readexactly(len(MAGIC) + NONCE_BYTES + 32)
            writer.write(encode_frame(CALL, 1, pickle.dumps(["charge me"])))
            assert await _closed_by_peer(reader)
            writer.close()
            assert handler.calls == []
            assert server.refused >= 1
        finally:
            await server.close()

    with caplog.at_level(logging.WARNING, logger="actors.channel"):
        run(scenario)
    assert "bad secret" in caplog.text


def test_a_client_that_never_finishes_the_handshake_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        server = ChannelServer(Recorder(), host="127.0.0.1", handshake_timeout_s=0.2)
        endpoint = await server.start()
        try:
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            assert await _closed_by_peer(reader)
            writer.close()
        finally:
            await server.close()

    with caplog.at_level(logging.WARNING, logger="actors.channel"):
        run(scenario)
    assert "no handshake within" in caplog.text


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (HEADER.pack(1_000_001, 1, CALL), "over the bound"),
        (HEADER.pack(100, 1, CALL) + b"x" * 10, "truncated frame"),
        (HEADER.pack(5, 1, 99) + b"hello", "unknown frame kind"),
        (encode_frame(CALL, 1, b"\x80\x05garbage"), "does not unpickle"),
        (encode_frame(CALL, 1, pickle.dumps({"not": "a list"})), "not a list"),
    ],
    ids=["oversized", "truncated", "bad-kind", "not-pickle", "not-a-list"],
)
def test_a_malformed_frame_closes_the_connection_with_a_logged_reason(
    frame: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        handler = Recorder()
        server = ChannelServer(handler, host="127.0.0.1", frame_max=1_000_000)
        endpoint = await server.start()
        try:
            reader, writer = await _raw_authenticated(endpoint)
            writer.write(frame)
            await writer.drain()
            writer.write_eof()  # a truncated frame ends here
            assert await _closed_by_peer(reader)
            writer.close()
            assert handler.calls == []
            # The owner still serves well-behaved connections.
            connection = await ChannelConnection.open(endpoint, timeout_s=5)
            assert await connection.call(["fine"], timeout_s=5) == [("ok", "fine")]
            await connection.close()
        finally:
            await server.close()

    with caplog.at_level(logging.WARNING, logger="actors.channel"):
        run(scenario)
    assert reason in caplog.text


def test_a_call_larger_than_the_bound_is_not_sent() -> None:
    async def scenario() -> None:
        handler = Recorder()
        server = ChannelServer(handler, host="127.0.0.1")
        connection = await ChannelConnection.open(await server.start(), timeout_s=5, frame_max=1000)
        try:
            with pytest.raises(Exception, match="over the bound"):
                await connection.call(["x" * 5000], timeout_s=5)
            assert await connection.call(["small"], timeout_s=5) == [("ok", "small")]
            assert len(handler.calls) == 1
        finally:
            await connection.close()
            await server.close()

    run(scenario)


def test_a_dropped_connection_fails_every_call_in_flight_as_unknown_outcome() -> None:
    async def scenario() -> None:
        handler = Recorder()
        handler.gate = asyncio.Event()  # the owner received the calls and is "committing"
        server = ChannelServer(handler, host="127.0.0.1")
        connection = await ChannelConnection.open(await server.start(), timeout_s=5)
        calls = [asyncio.ensure_future(connection.call([i], timeout_s=10)) for i in range(3)]
        while len(handler.calls) < 3:
            await asyncio.sleep(0.01)
        await server.close()  # the owner process dies
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, ChannelClosed) for o in outcomes), outcomes
        assert connection.closed
        with pytest.raises(ChannelClosed):  # nothing is sent on a broken connection
            await connection.call(["later"], timeout_s=5)
        assert len(handler.calls) == 3
        handler.gate.set()

    run(scenario)


def test_a_call_that_times_out_breaks_the_connection_for_every_call_on_it() -> None:
    async def scenario() -> None:
        handler = Recorder()
        handler.gate = asyncio.Event()  # a frozen owner: the calls arrive, nothing answers
        server = ChannelServer(handler, host="127.0.0.1")
        connection = await ChannelConnection.open(await server.start(), timeout_s=5)
        try:
            slow = asyncio.ensure_future(connection.call(["slow"], timeout_s=30))
            await asyncio.sleep(0.05)
            with pytest.raises(ChannelClosed, match="no reply within"):
                await connection.call(["fast"], timeout_s=0.2)
            with pytest.raises(ChannelClosed):
                await slow
            assert connection.closed
        finally:
            handler.gate.set()
            await connection.close()
            await server.close()

    run(scenario)


def test_client_reconnects_to_a_restarted_owner_with_a_new_port_and_secret() -> None:
    async def scenario() -> None:
        handler = Recorder()
        servers = [ChannelServer(handler, host="127.0.0.1")]
        asked: list[Endpoint] = []

        async def endpoint() -> Endpoint:  # the owner's endpoint() over Ray
            asked.append(await servers[-1].start())
            return asked[-1]

        client: Any = DirectOwnerClient("o0", endpoint=endpoint, call_timeout_s=5)
        try:
            assert await client.submit(["a"]) == [("ok", "a")]
            assert await client.submit(["b"]) == [("ok", "b")]
            assert len(asked) == 1  # one connection, reused
            handler.gate = asyncio.Event()
            in_flight = asyncio.ensure_future(client.submit(["c"]))
            while len(handler.calls) < 3:
                await asyncio.sleep(0.01)
            await servers[0].close()  # the owner crashes with "c" in flight ...
            with pytest.raises(ChannelClosed):
                await in_flight  # ... whose outcome is unknown: raised, not resent
            handler.gate = None
            servers.append(ChannelServer(handler, host="127.0.0.1"))  # Ray restarts it
            assert await client.submit(["d"]) == [("ok", "d")]
            assert len(asked) == 2
            assert asked[0].secret != asked[1].secret
            assert [call[0] for call in handler.calls] == ["a", "b", "c", "d"]
            assert client.connects == 2
        finally:
            await client.close()
            for server in servers:
                await server.close()

    run(scenario)


def test_an_unreachable_owner_fails_the_batch_as_unavailable_within_the_connect_bound() -> None:
    async def scenario() -> None:
        never = asyncio.Event()

        async def frozen_endpoint() -> Endpoint:  # a frozen owner: endpoint() never answers
            await never.wait()
            raise AssertionError("unreachable")

        client = DirectOwnerClient("o0", endpoint=frozen_endpoint, connect_timeout_s=0.2)
        batcher: Any = OwnerBatcher("o0", client)
        reply = await batcher.submit("r1")
        assert isinstance(reply, Unavailable), reply
        await batcher.close()
        await client.close()

    run(scenario)


def test_batcher_over_a_dropping_connection_answers_unavailable_then_recovers() -> None:
    async def scenario() -> None:
        handler = Recorder()
        servers = [ChannelServer(handler, host="127.0.0.1")]

        async def endpoint() -> Endpoint:
            return await servers[-1].start()

        client = DirectOwnerClient("o0", endpoint=endpoint, call_timeout_s=5)
        batcher: Any = OwnerBatcher("o0", client, max_in_flight=2)
        try:
            handler.gate = asyncio.Event()
            first = batcher.submit("r1")
            while not handler.calls:
                await asyncio.sleep(0.01)
            await servers[0].close()
            assert isinstance(await first, Unavailable)
            handler.gate = None
            servers.append(ChannelServer(handler, host="127.0.0.1"))
            assert await batcher.submit("r2") == ("ok", "r2")
        finally:
            await batcher.close()
            await client.close()
            for server in servers:
                await server.close()

    run(scenario)


def test_batcher_keeps_at_most_max_in_flight_batches_and_batches_the_rest() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        sizes: list[int] = []
        in_flight = 0
        peak = 0

        class Client:
            async def submit(self, requests: list[Any]) -> list[Any]:
                nonlocal in_flight, peak
                sizes.append(len(requests))
                in_flight += 1
                peak = max(peak, in_flight)
                await gate.wait()
                in_flight -= 1
                return list(requests)

        batcher: Any = OwnerBatcher("o0", Client(), max_in_flight=2)
        futures = [batcher.submit(i) for i in range(1)]
        await asyncio.sleep(0.01)
        futures += [batcher.submit(i) for i in range(1, 2)]
        await asyncio.sleep(0.01)
        futures += [batcher.submit(i) for i in range(2, 7)]
        await asyncio.sleep(0.01)
        assert sizes == [1, 1]  # two single-request batches left at once; five wait
        assert batcher.depth == 5
        gate.set()
        assert await asyncio.gather(*futures) == list(range(7))
        assert sizes == [1, 1, 5] and peak == 2
        await batcher.close()
        with pytest.raises(ValueError, match="max_in_flight"):
            OwnerBatcher("o0", Client(), max_in_flight=0)

    run(scenario)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"max_in_flight": 0}, "max_in_flight"), ({"transport": "pigeon"}, "transport must be")],
)
def test_front_door_settings_are_checked_before_anything_starts(
    options: dict[str, Any], message: str
) -> None:
    from cluster.bootstrap import StartupError, start_frontdoor

    with pytest.raises(StartupError, match=message):
        asyncio.run(start_frontdoor(**options))


def test_calls_in_progress_and_connections_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        handler = Recorder()
        handler.gate = asyncio.Event()
        server = ChannelServer(handler, host="127.0.0.1", calls_max=2, connections_max=1)
        endpoint = await server.start()
        connection = await ChannelConnection.open(endpoint, timeout_s=5)
        try:
            calls = [asyncio.ensure_future(connection.call([i], timeout_s=10)) for i in range(3)]
            while len(handler.calls) < 2:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert len(handler.calls) == 2  # the third waits unread until one finishes
            # A second connection is over the bound: dropped before any handshake.
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            assert await _closed_by_peer(reader)
            writer.close()
            handler.gate.set()
            assert await asyncio.gather(*calls) == [[("ok", i)] for i in range(3)]
        finally:
            await connection.close()
            await server.close()

    with caplog.at_level(logging.WARNING, logger="actors.channel"):
        run(scenario)
    assert "connections already open" in caplog.text


class FastRecorder:
    """A fast handler: takes calls whose first request is not "slow" (the future is resolved
    when the test releases it), declines the others (None: the ordinary handler runs them)."""

    def __init__(self) -> None:
        self.taken: list[tuple[list[Any], asyncio.Future[list[Any]]]] = []
        self.declined: list[list[Any]] = []
        self.raise_on: str | None = None

    def __call__(self, requests: list[Any]) -> asyncio.Future[list[Any]] | None:
        if requests and requests[0] == self.raise_on:
            raise RuntimeError("classification bug")
        if requests and requests[0] == "slow":
            self.declined.append(requests)
            return None
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.taken.append((requests, future))
        return future


def test_a_fast_call_is_answered_when_its_future_resolves_and_declined_ones_run_the_handler() -> (
    None
):
    async def scenario() -> None:
        handler, fast = Recorder(), FastRecorder()
        server = ChannelServer(handler, host="127.0.0.1", fast=fast)
        connection = await ChannelConnection.open(await server.start(), timeout_s=5)
        try:
            first = asyncio.ensure_future(connection.call(["a", 1], timeout_s=5))
            declined = await connection.call(["slow"], timeout_s=5)
            assert declined == [("ok", "slow")] and handler.calls == [["slow"]]
            while not fast.taken:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert not first.done()  # no reply before the future (the commit) resolves
            requests, future = fast.taken[0]
            assert requests == ["a", 1]
            future.set_result([("fast", r) for r in requests])
            assert await first == [("fast", "a"), ("fast", 1)]
            second = asyncio.ensure_future(connection.call(["b"], timeout_s=5))
            while len(fast.taken) < 2:
                await asyncio.sleep(0.01)
            fast.taken[1][1].set_exception(RuntimeError("commit failed"))
            with pytest.raises(CallFailed, match="commit failed"):
                await second
            third = asyncio.ensure_future(connection.call(["c"], timeout_s=5))
            while len(fast.taken) < 3:
                await asyncio.sleep(0.01)
            fast.taken[2][1].cancel()
            with pytest.raises(CallFailed, match="cancelled"):
                await third
            fast.raise_on = "d"
            with pytest.raises(CallFailed, match="classification bug"):
                await connection.call(["d"], timeout_s=5)
            assert handler.calls == [["slow"]]  # what the fast handler took never ran twice
            assert await connection.call(["slow", 2], timeout_s=5) == [("ok", "slow"), ("ok", 2)]
        finally:
            await connection.close()
            await server.close()

    run(scenario)


def test_a_traced_call_never_takes_the_fast_path() -> None:
    async def scenario() -> None:
        handler, fast = Recorder(), FastRecorder()
        seen: list[dict[str, str]] = []

        async def traced(requests: list[Any], headers: Any) -> Sequence[Any]:
            seen.append(dict(headers))
            return await handler(requests)

        server = ChannelServer(handler, host="127.0.0.1", fast=fast, traced=traced)
        connection = await ChannelConnection.open(await server.start(), timeout_s=5)
        try:
            trace = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
            assert await connection.call(["a"], timeout_s=5, trace=trace) == [("ok", "a")]
            assert seen == [trace] and not fast.taken and not fast.declined
        finally:
            await connection.close()
            await server.close()

    run(scenario)


def test_fast_calls_in_progress_are_bounded_too() -> None:
    async def scenario() -> None:
        handler, fast = Recorder(), FastRecorder()
        server = ChannelServer(handler, host="127.0.0.1", fast=fast, calls_max=2)
        connection = await ChannelConnection.open(await server.start(), timeout_s=5)
        try:
            calls = [asyncio.ensure_future(connection.call([i], timeout_s=10)) for i in range(3)]
            while len(fast.taken) < 2:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert len(fast.taken) == 2  # the third waits unread until one is answered
            fast.taken[0][1].set_result(["done0"])
            while len(fast.taken) < 3:
                await asyncio.sleep(0.01)
            for requests, future in fast.taken[1:]:
                future.set_result([f"done{requests[0]}"])
            assert await asyncio.gather(*calls) == [["done0"], ["done1"], ["done2"]]
        finally:
            await connection.close()
            await server.close()

    run(scenario)
