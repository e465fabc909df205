"""The owner's hot-path helpers: Ray's tracing wrappers bypassed for internal calls, the writer's
wake-up signal, and the vshard computed once per request."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from ray.util.tracing.tracing_helper import _inject_tracing_into_class

from actors._apply import Step, apply_one
from actors.messages import NotOwner, QueryRequest
from actors.owner import _bypass_ray_wrappers, _Signal, _unwrapped
from billing.state import ShardState
from billing.tariff import builtin_catalog
from sharding.vshard import vshard_of


class _Base:
    def public(self) -> str:
        return self._helper()

    def _helper(self) -> str:
        return "base"

    async def _wait(self) -> str:
        return "waited"

    @staticmethod
    def _static() -> str:
        return "static"


class _Override(_Base):
    def _helper(self) -> str:
        return "override"


def _wrapped(cls: type) -> type:
    """What Ray does to an actor class: every method wrapped for its tracing."""
    actor_cls = type(f"Ray{cls.__name__}", (cls,), {})
    _inject_tracing_into_class(actor_cls)
    return actor_cls


def _is_ray_wrapper(method: Any) -> bool:
    return bool(getattr(getattr(method, "__func__", method), "__ray_tracing_wrapped__", False))


@pytest.mark.parametrize("cls", [_Base, _Override])
def test_private_methods_are_bound_without_rays_wrappers(cls: type) -> None:
    actor_cls = _wrapped(cls)
    owner = actor_cls()
    assert _is_ray_wrapper(owner._helper)  # the premise: Ray wrapped the internal helper
    _bypass_ray_wrappers(owner)
    assert not _is_ray_wrapper(owner._helper)
    assert not _is_ray_wrapper(owner._wait)
    assert owner._helper() == cls()._helper()  # a subclass's override is what gets bound
    assert owner.public() == cls().public()
    assert asyncio.run(owner._wait()) == "waited"
    assert owner._static() == "static"
    assert _is_ray_wrapper(actor_cls.public)  # public methods (Ray calls) keep Ray's wrapper
    assert not _is_ray_wrapper(_unwrapped(owner, "public"))
    assert _unwrapped(owner, "public")() == cls().public()


def test_signal_wakes_its_waiter_and_remembers_a_set_before_the_wait() -> None:
    async def scenario() -> None:
        signal = _Signal(asyncio.get_running_loop())
        signal.set()
        await asyncio.wait_for(signal.wait(), 1.0)  # set before: returns at once
        signal.clear()
        assert not signal.is_set()
        waiter = asyncio.ensure_future(signal.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        signal.set()
        await asyncio.wait_for(waiter, 1.0)
        signal.clear()
        cancelled = asyncio.ensure_future(signal.wait())
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        signal.set()  # no waiter left: nothing to wake, no error
        assert signal.is_set()

    asyncio.run(scenario())


def test_apply_one_uses_the_given_vshard_else_computes_it() -> None:
    key = "491700000001"
    vshard = vshard_of(key, 64)
    step = Step(
        state=ShardState(),
        catalog=builtin_catalog(),
        epochs={},  # nothing held: the reply names the vshard the step used
        vshard_count=64,
        map_version=3,
        now=datetime.now(UTC),
        guests=set(),
    )
    request = QueryRequest("subscriber", key)
    assert apply_one(step, request) == NotOwner(vshard, 3)
    assert apply_one(step, request, vshard) == NotOwner(vshard, 3)
    assert apply_one(step, request, (vshard + 1) % 64) == NotOwner((vshard + 1) % 64, 3)
