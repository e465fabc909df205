"""OpenTelemetry traces and metrics for the online path, chosen by configuration.

``BILLING_OTEL`` (or the ``--otel`` flag) selects the exporter: ``off`` (default), ``console``
or ``otlp`` (endpoint from the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``, default
localhost:4317). When off, :func:`current` returns a :class:`Telemetry` whose ``enabled`` is
False and whose methods return at once: the hot path checks ``enabled`` before building any
attribute, so off costs one attribute read per request.

What is recorded:
- metrics: ``billing.requests`` (counter, by method and result code), ``billing.request.duration``
  (histogram, seconds, by method), ``billing.batch.size`` (histogram, by owner),
  ``billing.owner.queue_depth`` (observable gauge, by owner), ``billing.owner.batch.duration``;
- traces: a span per gRPC request at the front door (``billing.frontdoor/<method>``) with the
  session id, request number, subscriber's vshard and owner as attributes, and a span per owner
  batch (``billing.owner.submit``). Its context travels with the batch (in the direct channel's
  frame, or in Ray's call when the Ray transport is used) to the owner, whose
  ``billing.owner.batch`` span is its child; the owner's group commit is a
  ``billing.owner.commit`` span linked to every batch it makes durable (actors/tracing.py). Owners
  export through the global provider that :func:`ray_tracing_startup` installs in each worker.

Providers are private to this module (not installed globally), so tests and several front doors
in one process do not interfere.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

MODES = ("off", "console", "otlp")
ENV = "BILLING_OTEL"

AttributeValue = str | int | float | bool


class Telemetry:
    """The no-op telemetry: every method returns at once. :class:`OtelTelemetry` records."""

    enabled = False

    def request_done(self, method: str, code: str, seconds: float) -> None:
        """Count one finished request and record its latency."""

    def batch_done(self, owner: str, size: int, seconds: float, failed: bool) -> None:
        """Record one owner batch."""

    def observe_queues(self, read: Callable[[], Mapping[str, int]]) -> None:
        """Report the queue depth per owner from ``read`` whenever metrics are collected."""

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, AttributeValue]) -> Iterator[None]:
        """A trace span around a block (no-op here)."""
        yield

    def shutdown(self) -> None:
        """Flush and stop exporters."""


class OtelTelemetry(Telemetry):
    """Telemetry through the OpenTelemetry SDK with a console or OTLP exporter."""

    enabled = True

    def __init__(self, mode: str, service_name: str) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({"service.name": service_name})
        span_exporter: Any
        metric_exporter: Any
        if mode == "console":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            # The exporters' default stream is bound when their module is first imported;
            # pass the current one so redirected output (tests, log capture) gets the records.
            span_exporter = ConsoleSpanExporter(out=sys.stdout)
            metric_exporter = ConsoleMetricExporter(out=sys.stdout)
        else:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            span_exporter, metric_exporter = OTLPSpanExporter(), OTLPMetricExporter()
        self._tracer_provider = TracerProvider(resource=resource)
        self._tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=10_000)
        self._meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        self._tracer = self._tracer_provider.get_tracer("billing")
        meter = self._meter_provider.get_meter("billing")
        self._requests = meter.create_counter("billing.requests", description="requests by code")
        self._latency = meter.create_histogram(
            "billing.request.duration", unit="s", description="request latency at the front door"
        )
        self._batch_size = meter.create_histogram(
            "billing.batch.size", description="requests per owner micro-batch"
        )
        self._batch_latency = meter.create_histogram(
            "billing.owner.batch.duration", unit="s", description="owner micro-batch round trip"
        )
        self._meter = meter
        self._queue_readers: list[Callable[[], Mapping[str, int]]] = []
        self._meter.create_observable_gauge(
            "billing.owner.queue_depth",
            callbacks=[self._observe_queue_depth],
            description="requests waiting per owner at this front door",
        )

    def _observe_queue_depth(self, _options: Any) -> Iterator[Any]:
        from opentelemetry.metrics import Observation

        for read in self._queue_readers:
            for owner, depth in read().items():
                yield Observation(depth, {"billing.owner": owner})

    def request_done(self, method: str, code: str, seconds: float) -> None:
        self._requests.add(1, {"rpc.method": method, "billing.result": code})
        self._latency.record(seconds, {"rpc.method": method})

    def batch_done(self, owner: str, size: int, seconds: float, failed: bool) -> None:
        attributes: dict[str, str | bool] = {"billing.owner": owner, "billing.failed": failed}
        self._batch_size.record(size, attributes)
        self._batch_latency.record(seconds, attributes)

    def observe_queues(self, read: Callable[[], Mapping[str, int]]) -> None:
        self._queue_readers.append(read)

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, AttributeValue]) -> Iterator[None]:
        with self._tracer.start_as_current_span(name, attributes=dict(attributes)):
            yield

    def shutdown(self) -> None:
        self._tracer_provider.shutdown()
        self._meter_provider.shutdown()


_NOOP = Telemetry()
_current: Telemetry = _NOOP


def mode_from_env(value: str | None = None) -> str:
    """The configured mode; an unknown value is an error naming the variable."""
    mode = (value if value is not None else os.environ.get(ENV, "off")).strip().lower() or "off"
    if mode not in MODES:
        raise ValueError(f"{ENV}: must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def setup(mode: str | None = None, *, service_name: str = "billing") -> Telemetry:
    """Configure this process's telemetry (from ``BILLING_OTEL`` when ``mode`` is None)."""
    global _current
    chosen = mode_from_env(mode)
    _current.shutdown()
    _current = _NOOP if chosen == "off" else OtelTelemetry(chosen, service_name)
    return _current


def current() -> Telemetry:
    """This process's telemetry (no-op until :func:`setup` chose an exporter)."""
    return _current


RAY_TRACING_HOOK = "cluster.telemetry:ray_tracing_startup"


def ray_tracing_startup() -> None:
    """Ray's ``_tracing_startup_hook``: runs in every worker of a cluster started with tracing.

    Installs a global tracer provider with the exporter ``BILLING_OTEL`` names (passed to the
    workers in the job's runtime environment). Ray then propagates the trace context of each
    actor call, so an owner's ``submit`` span (and any span the owner records inside it, such as
    its commit) is a child of the front door's ``billing.owner.submit`` span.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    mode = mode_from_env()
    if mode == "off":
        return
    provider = TracerProvider(resource=Resource.create({"service.name": "billing-owner"}))
    exporter: Any
    if mode == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
