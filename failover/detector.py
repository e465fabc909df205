"""Failure detection of shard owners, as a pure state machine (the clock is passed in).

The failover monitor probes every owner of the shard map each period (a status call with a
timeout) and asks Ray whether the owner's node is alive; it feeds each result to
:meth:`Detector.observe` and acts on the :class:`Transition` it gets back. Keeping the decision
here, free of Ray and of the clock, lets the tests drive it by hand (Ray Serve's controller tests
its state managers the same way).

Three ways an owner stops serving, and how each is seen:

- its process crashed: Ray restarts it (``max_restarts=-1``) and it takes its own vshards back
  when it is up again. Ray marks the actor RESTARTING at once; if that lasts longer than
  ``restart_grace_ms`` the owner is DEAD and its vshards go to the surviving owners (a new worker
  process needs seconds to start on a loaded machine; a takeover by a running owner needs tens
  of milliseconds). When it answers again it is RETURNED and gets a share back;
- its node was lost: Ray's GCS declares the node dead (tuned health checks: ~2 s); the monitor
  sees ``node_alive=False`` and the owner is DEAD at once: its vshards go to surviving owners;
- it is frozen (SIGSTOP, a long pause, a partition): the process exists, so Ray sees nothing;
  only the probes time out. After ``failures_to_dead`` failures in a row spanning at least
  ``dead_after_ms``, it is DEAD and its vshards move; if it wakes up, its commits are rejected
  by the epoch check (DESIGN.md invariant 5) and it is RETURNED: the manager may give it vshards
  again.

Invariant: a verdict of DEAD is only ever a reason to move vshards, never a proof that the owner
has stopped writing; safety comes from the epoch in PostgreSQL, not from the detector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Verdict(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"  # probes failing, not yet long enough to act
    DEAD = "dead"  # its vshards should move to other owners


class Transition(StrEnum):
    NONE = "none"
    DIED = "died"  # ALIVE/SUSPECT -> DEAD: reassign its vshards
    RETURNED = "returned"  # DEAD -> ALIVE: it answers again (restarted, or resumed zombie)


@dataclass(slots=True)
class _Track:
    verdict: Verdict = Verdict.ALIVE
    failures: int = 0
    first_failure_ms: int | None = None
    died_at_ms: int | None = None


@dataclass(slots=True)
class Detector:
    """Per-owner verdicts from probe results.

    ``failures_to_dead`` probes in a row must fail, spanning at least ``dead_after_ms``, before a
    live node's owner is declared dead; a dead node's owner is dead at once.
    """

    failures_to_dead: int = 3
    dead_after_ms: int = 1500
    restart_grace_ms: int = 500
    _tracks: dict[str, _Track] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.failures_to_dead < 1:
            raise ValueError(f"failures_to_dead={self.failures_to_dead} must be >= 1")
        if self.dead_after_ms < 0:
            raise ValueError(f"dead_after_ms={self.dead_after_ms} must be >= 0")
        if self.restart_grace_ms < 0:
            raise ValueError(f"restart_grace_ms={self.restart_grace_ms} must be >= 0")

    def observe(
        self, owner: str, *, ok: bool, node_alive: bool, now_ms: int, restarting: bool = False
    ) -> Transition:
        """Record one probe of ``owner`` at ``now_ms``; say what changed.

        ``restarting``: Ray reports the actor as restarting on a live node: its process is known
        to be gone (no zombie doubt), so its vshards move after ``restart_grace_ms`` rather than
        ``dead_after_ms``. A restart faster than the grace moves nothing; a slower one (a new
        Python worker takes seconds to start on a loaded machine) would leave its vshards
        unserved, while surviving owners can take them over in tens of milliseconds.
        """
        track = self._tracks.setdefault(owner, _Track())
        was = track.verdict
        if ok and node_alive:
            track.failures = 0
            track.first_failure_ms = None
            track.verdict = Verdict.ALIVE
            if was is Verdict.DEAD:
                track.died_at_ms = None
                return Transition.RETURNED
            return Transition.NONE
        if was is Verdict.DEAD:
            return Transition.NONE
        track.failures += 1
        if track.first_failure_ms is None:
            track.first_failure_ms = now_ms
        failing_for = now_ms - track.first_failure_ms
        if (
            not node_alive
            or (restarting and failing_for >= self.restart_grace_ms)
            or (track.failures >= self.failures_to_dead and failing_for >= self.dead_after_ms)
        ):
            track.verdict = Verdict.DEAD
            track.died_at_ms = now_ms
            return Transition.DIED
        track.verdict = Verdict.SUSPECT
        return Transition.NONE

    def verdict(self, owner: str) -> Verdict:
        track = self._tracks.get(owner)
        return Verdict.ALIVE if track is None else track.verdict

    def dead(self) -> frozenset[str]:
        return frozenset(o for o, t in self._tracks.items() if t.verdict is Verdict.DEAD)

    def forget(self, owner: str) -> None:
        """Drop an owner that no longer exists (scaled in, or its node removed for good)."""
        self._tracks.pop(owner, None)
