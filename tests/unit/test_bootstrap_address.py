"""Joining a Ray cluster by address: a mistyped or dead ``--address`` fails at once with an error
naming it, instead of ``ray.init`` retrying for about five minutes."""

from __future__ import annotations

import socket

import pytest

from cluster.bootstrap import StartupError, _check_reachable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


@pytest.mark.parametrize("prefix", ["", "ray://"])
def test_nothing_listening_fails_naming_the_address(prefix: str) -> None:
    address = f"{prefix}127.0.0.1:{_closed_port()}"
    with pytest.raises(StartupError) as failed:
        _check_reachable(address, timeout_s=2.0)
    assert repr(address) in str(failed.value) and "--address" in str(failed.value)


def test_a_listening_address_passes() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        _check_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=2.0)


@pytest.mark.parametrize("address", ["auto", "localhost", "ray://head"])
def test_forms_without_a_port_are_left_to_ray(address: str) -> None:
    _check_reachable(address, timeout_s=0.1)  # no probe: must not raise
