"""OwnerConfig: every bound is checked, and the database remembers answers longer than memory."""

from __future__ import annotations

import pytest

from actors.owner import OwnerConfig


def test_defaults_are_valid() -> None:
    config = OwnerConfig(dsn="postgresql://x")
    assert config.answer_db_retention_s >= config.answer_retention_s


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_max", 0),
        ("queue_max", 0),
        ("answer_db_retention_s", 0),
        ("answer_db_prune_interval_s", -1),
    ],
)
def test_bad_bounds_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        OwnerConfig(dsn="postgresql://x", **{field: value})


def test_stored_answers_must_outlive_remembered_ones() -> None:
    with pytest.raises(ValueError, match="answer_db_retention_s must be >= answer_retention_s"):
        OwnerConfig(dsn="postgresql://x", answer_retention_s=600, answer_db_retention_s=60)
