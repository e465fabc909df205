"""A direct data channel from a front door to a shard owner: framed calls over one TCP stream.

Why: a Ray actor call from the front door to an owner costs ~1.3 ms round trip on an idle
machine (``owner.ping``), a one-request ``submit`` ~3.2 ms, plus driver CPU per batch
(``.remote()``, result deserialisation, a cross-thread wake-up). Charging batches go over this
channel instead; Ray keeps placement, naming, restart and the control calls (status, apply_map,
provisioning, owner-to-owner forwarding). A front door learns an owner's endpoint and secret
through the owner's ``endpoint()`` Ray method, so Ray's authenticated calls vouch for it.

Protocol (integers big-endian):

1. Handshake, a mutual proof of the owner's per-incarnation secret (the secret itself never
   crosses the wire; fresh nonces on both sides, so a recorded handshake cannot be replayed)::

       front door -> MAGIC + front nonce (16 bytes)
       owner      -> MAGIC + owner nonce (16) + HMAC-SHA256(secret, b"owner" + front + owner nonce)
       front door -> HMAC-SHA256(secret, b"front" + owner nonce + front nonce)

   Either side closes the connection (logging why) when the other's proof is wrong or late.
   The payload is pickle: nothing is unpickled before the peer has proved the secret.
2. Frames: a header (body length u32, call id u64, kind u8) and the body. ``CALL``: a pickled
   list of owner requests; ``TRACED_CALL``: a pickled ``(trace headers, list of owner requests)``
   pair, sent when the front door traces (the W3C context of its batch span, actors/tracing.py); ``REPLY``: the pickled list of replies, one per request, in order;
   ``FAILED``: UTF-8 text (the owner's handler raised: the outcome is unknown). A body longer than
   ``frame_max``, an unknown kind, a truncated frame or a body that is not a pickled list closes
   that connection, with the reason logged.

Semantics are those of a Ray call with ``max_task_retries=0``: a call is sent once; a connection
that breaks or times out fails every call in flight on it as an unknown outcome
(:class:`ChannelClosed`), and the caller retries with the same idempotency key (DESIGN.md
invariant 3). Bounded: frame size, calls in progress per connection (the owner stops reading
past ``calls_max``), connections per owner, handshake time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import pickle
import secrets
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MAGIC = b"BCH1"
NONCE_BYTES = 16
MAC_BYTES = 32
SECRET_BYTES = 32
HEADER = struct.Struct(">IQB")  # body length, call id, kind
CALL, REPLY, FAILED, TRACED_CALL = 1, 2, 3, 4
FRAME_MAX_DEFAULT = 32 * 1024 * 1024  # a front door batch of 2,048 requests is ~1 MB
CALLS_MAX_DEFAULT = 64  # calls in progress per connection before the owner stops reading
CONNECTIONS_MAX_DEFAULT = 256  # per owner: front doors x reconnects in progress
HANDSHAKE_TIMEOUT_S_DEFAULT = 5.0
_ERROR_TEXT_MAX = 2000

Handler = Callable[[list[Any]], Awaitable[Sequence[Any]]]
TracedHandler = Callable[[list[Any], Mapping[str, str]], Awaitable[Sequence[Any]]]
# Takes the call at once when it can: the future of its reply list (no task, no coroutine per
# call), or None to run ``Handler`` instead (see ChannelServer).
FastHandler = Callable[[list[Any]], "asyncio.Future[list[Any]] | None"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an owner's channel listens, and the secret of this owner incarnation."""

    host: str
    port: int
    secret: bytes = field(repr=False)  # never logged

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if len(self.secret) < 16:
            raise ValueError(f"secret must be at least 16 bytes, got {len(self.secret)}")


class ChannelError(Exception):
    """A call over the channel failed; its outcome on the owner is unknown."""


class ChannelClosed(ChannelError):
    """The connection broke or timed out while the call was in flight (outcome unknown)."""


class HandshakeError(ChannelError):
    """The peer did not prove the secret (or not in time): nothing was sent."""


class FrameError(ChannelError):
    """A frame broke the protocol (size, kind, body); the connection is closed."""


class CallFailed(ChannelError):
    """The owner's handler raised while running the call (outcome unknown)."""


def _mac(secret: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.digest(secret, label + first + second, hashlib.sha256)


def encode_frame(kind: int, call_id: int, body: bytes) -> bytes:
    return HEADER.pack(len(body), call_id, kind) + body


async def read_frame(reader: asyncio.StreamReader, frame_max: int) -> tuple[int, int, bytes]:
    """The next frame ``(kind, call id, body)``. Raises FrameError (too long, unknown kind) or
    asyncio.IncompleteReadError (closed; ``partial`` is non-empty when a frame was cut short)."""
    header = await reader.readexactly(HEADER.size)
    length, call_id, kind = HEADER.unpack(header)
    if kind not in (CALL, REPLY, FAILED, TRACED_CALL):
        raise FrameError(f"unknown frame kind {kind}")
    if length > frame_max:
        raise FrameError(f"frame of {length} bytes is over the bound of {frame_max}")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as cut:
        raise asyncio.IncompleteReadError(header + cut.partial, HEADER.size + length) from None
    return kind, call_id, body


async def client_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes
) -> None:
    """Prove the secret to the owner after the owner proved it to us. Raises HandshakeError."""
    front = secrets.token_bytes(NONCE_BYTES)
    writer.write(MAGIC + front)
    try:
        hello = await reader.readexactly(len(MAGIC) + NONCE_BYTES + MAC_BYTES)
    except asyncio.IncompleteReadError:
        raise HandshakeError("the owner closed the connection during the handshake") from None
    if hello[: len(MAGIC)] != MAGIC:
        raise HandshakeError("the peer does not speak the owner channel protocol")
    owner = hello[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    if not hmac.compare_digest(hello[-MAC_BYTES:], _mac(secret, b"owner", front, owner)):
        raise HandshakeError("the owner did not prove the secret (stale endpoint?)")
    writer.write(_mac(secret, b"front", owner, front))
    await writer.drain()


async def server_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes
) -> None:
    """Check the front door's proof of the secret. Raises HandshakeError."""
    try:
        hello = await reader.readexactly(len(MAGIC) + NONCE_BYTES)
    except asyncio.IncompleteReadError:
        raise HandshakeError("closed during the handshake") from None
    if hello[: len(MAGIC)] != MAGIC:
        raise HandshakeError("not the owner channel protocol")
    front = hello[len(MAGIC) :]
    owner = secrets.token_bytes(NONCE_BYTES)
    writer.write(MAGIC + owner + _mac(secret, b"owner", front, owner))
    try:
        proof = await reader.readexactly(MAC_BYTES)
    except asyncio.IncompleteReadError:
        raise HandshakeError("closed before proving the secret") from None
    if not hmac.compare_digest(proof, _mac(secret, b"front", owner, front)):
        raise HandshakeError("bad secret")


# ---------------------------------------------------------------------------------------------
# Owner side
# ---------------------------------------------------------------------------------------------


class ChannelServer:
    """The owner's listener: runs each authenticated CALL through ``handler`` (the owner's
    ``submit``) and writes the reply with the call's id. Lives on the owner's event loop."""

    def __init__(
        self,
        handler: Handler,
        *,
        host: str,
        port: int = 0,
        frame_max: int = FRAME_MAX_DEFAULT,
        calls_max: int = CALLS_MAX_DEFAULT,
        connections_max: int = CONNECTIONS_MAX_DEFAULT,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S_DEFAULT,
        secret: bytes | None = None,
        traced: TracedHandler | None = None,
        fast: FastHandler | None = None,
    ) -> None:
        if frame_max < 1 or calls_max < 1 or connections_max < 1:
            raise ValueError("frame_max, calls_max and connections_max must be >= 1")
        if not handshake_timeout_s > 0:
            raise ValueError(f"handshake_timeout_s must be > 0, got {handshake_timeout_s}")
        self._handler = handler
        self._traced = traced  # a TRACED_CALL's handler (else ``handler``, headers ignored)
        self._fast = fast  # tried first for an untraced CALL; None from it: ``handler``
        self._host = host
        self._port = port
        self._frame_max = frame_max
        self._calls_max = calls_max
        self._connections_max = connections_max
        self._handshake_timeout_s = handshake_timeout_s
        self._secret = secret if secret is not None else secrets.token_bytes(SECRET_BYTES)
        self._server: asyncio.Server | None = None
        self._starting: asyncio.Future[Endpoint] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._draining: set[asyncio.Future[None]] = set()  # replies waiting for a full buffer
        self._closed = False
        self.refused = 0  # connections dropped for a failed handshake or a bad frame

    def start_soon(self) -> None:
        """Start listening in the background (for a synchronous ``__init__``)."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._listen())
            self._starting.add_done_callback(_log_start_failure)

    async def start(self) -> Endpoint:
        """Listen (once) and return the endpoint front doors connect to."""
        self.start_soon()
        assert self._starting is not None
        return await asyncio.shield(self._starting)

    async def _listen(self) -> Endpoint:
        if self._closed:
            raise ChannelError("channel server is closed")
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        port = self._server.sockets[0].getsockname()[1]
        log.info("owner channel listening on %s:%d", self._host, port)
        return Endpoint(self._host, port, self._secret)

    async def close(self) -> None:
        """Stop listening and drop every connection (calls in flight lose their replies)."""
        self._closed = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def _refuse(self, peer: object, why: str) -> None:
        self.refused += 1
        log.warning("owner channel: dropped connection from %s: %s", peer, why)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._closed or len(self._writers) >= self._connections_max:
            self._refuse(peer, f"{len(self._writers)} connections already open")
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            try:
                async with asyncio.timeout(self._handshake_timeout_s):
                    await server_handshake(reader, writer, self._secret)
            except TimeoutError:
                self._refuse(peer, f"no handshake within {self._handshake_timeout_s} s")
                return
            except HandshakeError as refused:
                self._refuse(peer, str(refused))
                return
            await self._calls(reader, writer, peer)
        except ConnectionError as error:
            log.debug("owner channel: connection from %s lost: %r", peer, error)
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _calls(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object
    ) -> None:
        slots = asyncio.Semaphore(self._calls_max)
        running: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()  # once: each lookup is a getpid() call in Python 3.11
        while True:
            await slots.acquire()  # past calls_max in progress: stop reading (backpressure)
            try:
                kind, call_id, body = await read_frame(reader, self._frame_max)
            except asyncio.IncompleteReadError as cut:
                if cut.partial:
                    self._refuse(peer, f"truncated frame ({len(cut.partial)} of {cut.expected})")
                return
            except FrameError as bad:
                self._refuse(peer, str(bad))
                return
            if kind != CALL and kind != TRACED_CALL:
                self._refuse(peer, f"frame kind {kind} is not a call")
                return
            try:
                requests = pickle.loads(body)
            except Exception as bad:  # authenticated but garbled: a bug, not a charge
                self._refuse(peer, f"call {call_id} does not unpickle: {type(bad).__name__}")
                return
            headers: dict[str, str] | None = None
            if kind == TRACED_CALL:
                if not (
                    type(requests) is tuple and len(requests) == 2 and type(requests[0]) is dict
                ):
                    self._refuse(peer, f"traced call {call_id} is not a (headers, list) pair")
                    return
                headers, requests = requests
            if type(requests) is not list:
                self._refuse(peer, f"call {call_id} is a {type(requests).__name__}, not a list")
                return
            if headers is None and self._fast is not None:
                try:
                    future = self._fast(requests)
                except Exception as error:  # nothing was queued; the caller learns it failed
                    self._write_reply(writer, call_id, slots, None, error)
                    continue
                if future is not None:  # the usual call: answered from a done callback
                    future.add_done_callback(
                        functools.partial(self._answer, writer, call_id, slots)
                    )
                    continue
            task = loop.create_task(self._call(writer, call_id, requests, slots, headers))
            running.add(task)
            task.add_done_callback(running.discard)

    def _answer(
        self,
        writer: asyncio.StreamWriter,
        call_id: int,
        slots: asyncio.Semaphore,
        done: asyncio.Future[list[Any]],
    ) -> None:
        """Write the reply of a call taken by the fast handler, once its future is done."""
        if done.cancelled():
            self._write_reply(writer, call_id, slots, None, ChannelError("call cancelled"))
        elif (error := done.exception()) is not None:
            self._write_reply(writer, call_id, slots, None, error)
        else:
            self._write_reply(writer, call_id, slots, done.result(), None)

    def _write_reply(
        self,
        writer: asyncio.StreamWriter,
        call_id: int,
        slots: asyncio.Semaphore,
        replies: Sequence[Any] | None,
        error: BaseException | None,
    ) -> None:
        """Write a call's REPLY (or FAILED) frame; the call's slot is released once the
        transport has taken it (at once unless its buffer is over the high-water mark: then
        after a drain, in a task of its own)."""
        frame = self._frame(call_id, replies, error)
        transport = writer.transport
        if transport.is_closing():
            slots.release()  # the front door left: the reply is dropped (it retries with the key)
            return
        try:
            writer.write(frame)
        except ConnectionError:
            slots.release()
            return
        if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
            slots.release()
            return
        task = asyncio.ensure_future(self._drained(writer, slots))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drained(self, writer: asyncio.StreamWriter, slots: asyncio.Semaphore) -> None:
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            slots.release()

    def _frame(
        self, call_id: int, replies: Sequence[Any] | None, error: BaseException | None
    ) -> bytes:
        """The REPLY frame of ``replies``, or a FAILED frame when the call raised ``error`` (or
        its reply cannot be sent): the caller then learns the outcome is unknown."""
        if error is None and replies is not None:
            try:
                body = pickle.dumps(replies if type(replies) is list else list(replies), protocol=5)
                if len(body) > self._frame_max:
                    raise FrameError(f"reply of {len(body)} bytes is over {self._frame_max}")
                return encode_frame(REPLY, call_id, body)
            except Exception as failed:
                error = failed
        log.warning("owner channel: call %d failed: %r", call_id, error)
        text = f"{type(error).__name__}: {error}"[:_ERROR_TEXT_MAX]
        return encode_frame(FAILED, call_id, text.encode())

    async def _call(
        self,
        writer: asyncio.StreamWriter,
        call_id: int,
        requests: list[Any],
        slots: asyncio.Semaphore,
        headers: dict[str, str] | None = None,
    ) -> None:
        try:
            if headers is not None and self._traced is not None:
                replies = await self._traced(requests, headers)
            else:
                replies = await self._handler(requests)
        except Exception as error:  # the caller learns the outcome is unknown
            self._write_reply(writer, call_id, slots, None, error)
        except BaseException:  # cancelled (the server closing): no reply
            slots.release()
            raise
        else:
            self._write_reply(writer, call_id, slots, replies, None)


def _log_start_failure(future: asyncio.Future[Endpoint]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("owner channel did not start: %r", future.exception())


# ---------------------------------------------------------------------------------------------
# Front door side
# ---------------------------------------------------------------------------------------------


class ChannelConnection:
    """One authenticated connection to an owner; calls multiplexed by id, replies matched by id.

    A call is written once and never again. When the connection breaks, a frame is malformed or
    a call waits longer than its timeout, the connection is closed and every call in flight on it
    fails with :class:`ChannelClosed` (outcome unknown); the caller opens a new connection.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frame_max: int
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._frame_max = frame_max
        self._pending: dict[int, asyncio.Future[list[Any]]] = {}
        self._next_id = 1
        self._broken: ChannelClosed | None = None
        self._receiver = asyncio.create_task(self._receive(), name="owner-channel-receive")

    @classmethod
    async def open(
        cls, endpoint: Endpoint, *, timeout_s: float, frame_max: int = FRAME_MAX_DEFAULT
    ) -> ChannelConnection:
        """Connect and authenticate within ``timeout_s``. Raises OSError, TimeoutError or
        HandshakeError; nothing has been sent then."""
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            try:
                await client_handshake(reader, writer, endpoint.secret)
            except BaseException:
                writer.transport.abort()
                raise
        return cls(reader, writer, frame_max)

    @property
    def closed(self) -> bool:
        return self._broken is not None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def call(
        self, payload: list[Any], timeout_s: float, trace: Mapping[str, str] | None = None
    ) -> list[Any]:
        """Send ``payload`` once (with ``trace``, the caller's span context, when given); the
        reply list. Raises ChannelClosed (outcome unknown), CallFailed (the owner raised: outcome
        unknown) or FrameError (too big: not sent)."""
        if self._broken is not None:
            raise ChannelClosed(str(self._broken))
        kind = CALL
        if trace:
            kind = TRACED_CALL
            body = pickle.dumps((dict(trace), payload), protocol=5)
        else:
            body = pickle.dumps(payload, protocol=5)
        if len(body) > self._frame_max:
            raise FrameError(f"call of {len(body)} bytes is over the bound of {self._frame_max}")
        call_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            self._writer.write(encode_frame(kind, call_id, body))
            async with asyncio.timeout(timeout_s):
                await self._writer.drain()
                return await future
        except TimeoutError:
            self._pending.pop(call_id, None)
            self._fail(f"no reply within {timeout_s} s")
            raise ChannelClosed(f"no reply within {timeout_s} s; outcome unknown") from None
        except ConnectionError as error:
            self._pending.pop(call_id, None)
            self._fail(f"connection lost: {type(error).__name__}")
            raise ChannelClosed(f"connection lost: {type(error).__name__}") from None
        finally:
            self._pending.pop(call_id, None)

    async def _receive(self) -> None:
        try:
            while True:
                kind, call_id, body = await read_frame(self._reader, self._frame_max)
                future = self._pending.pop(call_id, None)
                if kind == REPLY:
                    replies = pickle.loads(body)  # the owner proved the secret
                    if type(replies) is not list:
                        raise FrameError(f"reply {call_id} is a {type(replies).__name__}")
                    if future is not None and not future.done():
                        future.set_result(replies)
                elif kind == FAILED:
                    if future is not None and not future.done():
                        text = body.decode(errors="replace")
                        future.set_exception(CallFailed(f"owner failed the call: {text}"))
                else:
                    raise FrameError(f"frame kind {kind} is not a reply")
        except asyncio.CancelledError:
            raise
        except asyncio.IncompleteReadError as cut:
            if cut.partial:
                self._fail(f"truncated frame ({len(cut.partial)} of {cut.expected} bytes)", True)
            else:
                self._fail("connection closed by the owner")
        except Exception as error:  # FrameError, a reply that does not unpickle, reset
            self._fail(f"{type(error).__name__}: {error}", True)

    def _fail(self, why: str, loud: bool = False) -> None:
        """Close the connection; every call in flight fails as an unknown outcome."""
        if self._broken is not None:
            return
        (log.warning if loud else log.debug)("owner channel closed: %s", why)
        self._broken = ChannelClosed(f"owner connection closed ({why}); outcome unknown")
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ChannelClosed(str(self._broken)))
        self._writer.transport.abort()
        if self._receiver is not asyncio.current_task():
            self._receiver.cancel()

    async def close(self) -> None:
        self._fail("closed by the front door")
        with contextlib.suppress(asyncio.CancelledError):
            await self._receiver
