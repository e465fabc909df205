"""Telemetry configuration: off is the no-op object; a bad setting is an error naming it."""

from __future__ import annotations

import pytest

from cluster import telemetry


def test_off_by_default_is_the_no_op() -> None:
    assert telemetry.mode_from_env("") == "off"
    chosen = telemetry.setup("off")
    assert chosen is telemetry.current()
    assert not chosen.enabled
    with chosen.span("x", {"a": 1}):
        chosen.request_done("CreditControl", "SUCCESS", 0.001)
        chosen.batch_done("o", 3, 0.002, False)


def test_unknown_mode_names_the_variable() -> None:
    with pytest.raises(ValueError, match="BILLING_OTEL: must be one of off, console, otlp"):
        telemetry.mode_from_env("loud")


def test_console_mode_records_spans_and_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    chosen = telemetry.setup("console", service_name="billing-test")
    try:
        assert chosen.enabled
        chosen.observe_queues(lambda: {"billing-owner-0": 2})
        with chosen.span("billing.frontdoor/CreditControl", {"billing.session_id": "s1"}):
            chosen.request_done("CreditControl", "SUCCESS", 0.003)
        chosen.batch_done("billing-owner-0", 5, 0.004, False)
    finally:
        telemetry.setup("off")  # shuts the exporters down, which flushes them
    printed = capsys.readouterr().out
    assert "billing.frontdoor/CreditControl" in printed
    assert "billing.requests" in printed
    assert "billing.owner.queue_depth" in printed
