"""Cyclic garbage collector settings of a shard owner process (and of the benchmark modelling it).

An owner is a long-lived server with a large, stable heap: the loaded vshards (accounts,
subscribers, buckets, indexes) live as long as the owner holds them, while each request allocates a
few short-lived records. CPython's defaults (thresholds ``(700, 10, 10)``) are tuned for small
programs: with hundreds of thousands of long-lived tracked objects, the young-generation
collections run every 700 allocations and the full collections walk the whole loaded state again
and again, finding nothing (measured on the domain benchmark: ~25 % of CPU at 10,000
subscribers). Two settings, both kept here so the owner and ``benchmarks/bench_domain.py`` run
with exactly the same ones:

- :func:`tune_gc` raises the thresholds: a young collection every ``GEN0`` allocations (most
  request records die by reference counting long before), and older generations examined less
  often. Reference counting still frees everything acyclic at once; only cyclic garbage waits
  longer, and the owner's domain records are not cyclic.
- :func:`freeze_loaded` moves what is alive after a load, a takeover or bulk provisioning into the
  permanent generation (``gc.freeze()``), so no collection walks the loaded state again. It first
  unfreezes and collects, so state dropped by a reload (which may hold cycles) is reclaimed
  rather than kept frozen forever. Frozen objects are still freed by reference counting when the
  owner drops them.

No Ray, no billing import: a plain helper.
"""

from __future__ import annotations

import gc

# Measured with benchmarks/bench_domain.py (10,000 subscribers, see benchmarks/README.md).
GEN0 = 50_000
GEN1 = 20
GEN2 = 100


def tune_gc() -> tuple[int, int, int]:
    """Set the owner's collector thresholds; returns the previous ones (for a benchmark to
    restore)."""
    previous = gc.get_threshold()
    gc.set_threshold(GEN0, GEN1, GEN2)
    return previous[0], previous[1], previous[2]


def freeze_loaded() -> None:
    """Collect, then move every object alive now out of the collector's reach.

    Call after the state is loaded (start, takeover, reload) or bulk provisioned, when what is
    alive is the long-lived state. Previously frozen objects are unfrozen first so a full
    collection can reclaim dropped state that holds reference cycles.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
