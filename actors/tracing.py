"""Traces across the owner: the batch a front door sent, and the group commit that made it durable.

A front door's ``billing.owner.submit`` span covers one micro-batch on its way to an owner. The
frame (or Ray call) carries that span's W3C trace context (:func:`inject`, a small dict); the
owner opens ``billing.owner.batch`` as its child (:func:`batch_span`). The owner's writer then
applies and commits whatever batches are queued together, so one ``billing.owner.commit`` span
serves several traces: it is a root span of its own, started with a *link* to every batch it makes durable (OpenTelemetry's
model for batching, :func:`commit_span`), and the batch span ends only after its commit, so each
trace reads front door -> owner batch -> (linked) commit, with the commit's duration and size.

Tracing is on in a process when a real (SDK) tracer provider is installed globally: in an owner
that is Ray's tracing start-up hook (:func:`cluster.telemetry.ray_tracing_startup`, run in every
worker of a cluster started with ``BILLING_OTEL`` set). Off, every function here returns at once
(one cached boolean), so the hot path pays nothing measurable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

Carrier = dict[str, str]
"""The W3C ``traceparent``/``tracestate`` headers of a span, as a plain picklable dict."""

_MAX_LINKS = 64  # a commit of thousands of batches links the first 64 (the count is an attribute)

_enabled: bool | None = None
_provider: Any = None  # a provider given to use(), else the global one


def enabled() -> bool:
    """True when this process exports traces: a provider was given to :func:`use`, or an SDK
    tracer provider is installed globally (Ray's tracing hook in an owner)."""
    global _enabled
    if _enabled is None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        _enabled = _provider is not None or isinstance(trace.get_tracer_provider(), TracerProvider)
    return _enabled


def use(provider: Any) -> None:
    """Record spans with ``provider`` (None: back to the global one; re-checks :func:`enabled`)."""
    global _enabled, _provider
    _provider = provider
    _enabled = None


def inject() -> Carrier | None:
    """The current span's context as headers to send along, or None when there is no span."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: Carrier = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier


def current_span() -> Any | None:
    """The span current in this task (an owner's batch span), or None."""
    from opentelemetry import trace

    span = trace.get_current_span()
    return span if span.get_span_context().is_valid else None


def _tracer() -> Any:
    from opentelemetry import trace

    provider = _provider if _provider is not None else trace.get_tracer_provider()
    return provider.get_tracer("billing.owner")


@contextlib.contextmanager
def batch_span(carrier: Mapping[str, str] | None, owner: str, size: int) -> Iterator[Any | None]:
    """The owner's span for one received batch, a child of the sender's span when ``carrier``
    holds its context. Yields the span (None when tracing is off) so the commit can link to it."""
    if not enabled():
        yield None
        return
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(dict(carrier)) if carrier else None
    attributes = {"billing.owner": owner, "billing.batch.size": size}
    with _tracer().start_as_current_span(
        "billing.owner.batch", context=parent, kind=SpanKind.SERVER, attributes=attributes
    ) as span:
        yield span


@contextlib.contextmanager
def commit_span(batches: Sequence[Any | None], owner: str, requests: int) -> Iterator[Any | None]:
    """One group commit, linked to every batch span it makes durable. Yields the span (None
    when tracing is off); record the outcome with :func:`commit_outcome`."""
    if not enabled():
        yield None
        return
    from opentelemetry.context import Context
    from opentelemetry.trace import Link

    links = [Link(s.get_span_context()) for s in batches if s is not None][:_MAX_LINKS]
    attributes = {
        "billing.owner": owner,
        "billing.commit.requests": requests,
        "billing.commit.batches": len(batches),
    }
    with _tracer().start_as_current_span(
        "billing.owner.commit", context=Context(), links=links, attributes=attributes
    ) as span:
        yield span


def commit_outcome(span: Any | None, *, error: str | None, rows: int | None = None) -> None:
    """Record a commit's outcome on its span: an error marks the span failed with the reason."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    if rows is not None:
        span.set_attribute("billing.commit.rows", rows)
    if error is None:
        span.set_status(Status(StatusCode.OK))
    else:
        span.set_status(Status(StatusCode.ERROR, error))
