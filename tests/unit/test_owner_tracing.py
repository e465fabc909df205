"""Owner-side spans: a batch is the child of the sender's span, a commit links every batch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from actors import tracing


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


def test_off_yields_nothing_and_injects_nothing() -> None:
    tracing.use(None)
    assert not tracing.enabled()  # the test process installs no global SDK provider
    assert tracing.inject() is None
    with tracing.batch_span({"traceparent": "junk"}, "o", 3) as span:
        assert span is None
    with tracing.commit_span([None], "o", 3) as commit:
        assert commit is None
    tracing.commit_outcome(None, error="ignored")


def test_batch_is_child_of_sender_and_commit_links_batches(spans: InMemorySpanExporter) -> None:
    tracer = tracing._tracer()
    with tracer.start_as_current_span("billing.owner.submit") as sender:
        carrier = tracing.inject()
    assert carrier is not None and "traceparent" in carrier
    with tracing.batch_span(carrier, "owner-0", 2) as first:
        pass
    with tracing.batch_span(None, "owner-0", 1) as second:
        pass
    with tracing.commit_span([first, second], "owner-0", 3) as commit:
        tracing.commit_outcome(commit, error=None, rows=7)
    by_name: dict[str, list[object]] = {}
    for span in spans.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    commit_span = by_name["billing.owner.commit"][0]
    batches = by_name["billing.owner.batch"]
    linked = {link.context.span_id for link in commit_span.links}  # type: ignore[attr-defined]
    assert linked == {b.context.span_id for b in batches}  # type: ignore[attr-defined]
    child = next(b for b in batches if b.parent is not None)  # type: ignore[attr-defined]
    assert child.parent.span_id == sender.get_span_context().span_id  # type: ignore[attr-defined]
    assert child.context.trace_id == sender.get_span_context().trace_id  # type: ignore[attr-defined]
    assert commit_span.parent is None  # type: ignore[attr-defined]
    assert commit_span.attributes["billing.commit.requests"] == 3  # type: ignore[attr-defined]
    assert commit_span.attributes["billing.commit.rows"] == 7  # type: ignore[attr-defined]
    assert commit_span.status.status_code is StatusCode.OK  # type: ignore[attr-defined]


def test_failed_commit_is_marked_with_its_reason(spans: InMemorySpanExporter) -> None:
    with tracing.commit_span([], "owner-1", 5) as commit:
        tracing.commit_outcome(commit, error="commit failed, nothing acknowledged: boom")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert "nothing acknowledged" in (span.status.description or "")


def test_trace_context_crosses_the_owner_channel(spans: InMemorySpanExporter) -> None:
    """A front door's batch span travels in a TRACED_CALL frame over real TCP; the owner's
    handler opens ``billing.owner.batch`` as its child, and an untraced call carries nothing."""
    import asyncio

    from actors.channel import ChannelConnection, ChannelServer

    seen: list[tuple[str, object]] = []

    async def plain(requests: list[object]) -> list[object]:
        seen.append(("plain", None))
        return requests

    async def traced(requests: list[object], headers: object) -> list[object]:
        with tracing.batch_span(headers, "owner-0", len(requests)) as span:  # type: ignore[arg-type]
            seen.append(("traced", span))
        return requests

    async def scenario() -> None:
        server = ChannelServer(plain, host="127.0.0.1", traced=traced)
        connection = await ChannelConnection.open(await server.start(), timeout_s=5)
        try:
            with tracing._tracer().start_as_current_span("billing.owner.submit") as sender:
                assert await connection.call(["a", "b"], 5, tracing.inject()) == ["a", "b"]
            assert await connection.call(["c"], 5) == ["c"]
        finally:
            await connection.close()
            await server.close()
        (batch,) = [s for s in spans.get_finished_spans() if s.name == "billing.owner.batch"]
        assert batch.parent is not None
        assert batch.parent.span_id == sender.get_span_context().span_id
        assert batch.attributes is not None and batch.attributes["billing.batch.size"] == 2

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert [kind for kind, _ in seen] == ["traced", "plain"]
