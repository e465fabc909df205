"""``--batch-hold-us`` is checked when the command line is read, before anything starts."""

from __future__ import annotations

import pytest

from cluster.cli import build_parser


@pytest.mark.parametrize("command", ["serve", "frontdoor"])
@pytest.mark.parametrize("bad", ["-1", "100001", "3ms", ""])
def test_a_bad_hold_is_refused_naming_the_flag(
    command: str, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--batch-hold-us", bad])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--batch-hold-us" in err
    assert "0..100000" in err


@pytest.mark.parametrize("value", ["0", "3000", "100000"])
def test_a_hold_in_range_is_taken(value: str) -> None:
    args = build_parser().parse_args(["frontdoor", "--batch-hold-us", value])
    assert args.batch_hold_us == int(value)
    assert build_parser().parse_args(["frontdoor"]).batch_hold_us is None
