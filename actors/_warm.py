"""Which committed subscribers an owner keeps hot (as objects) instead of packing them at once.

An owner keeps idle subscribers packed (actors/compact.py): a commit's touched subscribers used to
be packed right after it, and hydrated again by their next request. Packing and hydrating cost
several microseconds per request (measured: ~8 µs of an owner's ~38 µs per streamed SMS debit,
most of it the usage counters' JSON), paid again and again by a subscriber that charges often.

So the subscribers touched by the most recent commits stay hot, up to ``limit`` of them (their
memory is bounded: ~1 KB each over a packed record), oldest packed first once past the limit, and
any left untouched for ``idle_s`` are packed by the owner's periodic sweep, so an idle owner
returns to fully packed. Packing is unchanged otherwise: only committed state is packed, never a
key of a commit in flight (the caller passes those as ``busy``), and the packer itself leaves
records with reservations hot (:meth:`actors.compact.Directory.freeze`).

No I/O, no clock reads: times are passed in (``time.monotonic()`` in the owner).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, KeysView


class WarmSet:
    """The keys kept hot after their commit, least recently committed first; bounded."""

    __slots__ = ("_at", "idle_s", "limit")

    def __init__(self, limit: int, idle_s: float) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if not idle_s > 0:
            raise ValueError(f"idle_s must be > 0, got {idle_s}")
        self.limit = limit
        self.idle_s = idle_s
        self._at: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._at)

    def keys(self) -> KeysView[str]:
        return self._at.keys()

    def committed(self, keys: Iterable[str], now: float, busy: Collection[str]) -> list[str]:
        """Note ``keys`` as just committed; return the keys to pack now: the least recently
        committed past ``limit``, except those in ``busy`` (in a commit in flight: kept)."""
        at = self._at
        move = at.move_to_end
        for key in keys:
            if key in at:
                move(key)
            at[key] = now
        limit = self.limit
        if len(at) <= limit:
            return []
        return self._take_oldest(busy, lambda _when, kept: len(at) + kept > limit)

    def idle(self, now: float, busy: Collection[str]) -> list[str]:
        """Remove and return the keys committed ``idle_s`` or longer ago (not in ``busy``)."""
        cutoff = now - self.idle_s
        return self._take_oldest(busy, lambda when, _kept: when <= cutoff)

    def _take_oldest(self, busy: Collection[str], more: Callable[[float, int], bool]) -> list[str]:
        """Remove keys from the least recently committed end while ``more(committed at, keys
        kept so far)``; return them, except those in ``busy``, which stay, back at that end in
        their order."""
        at = self._at
        out: list[str] = []
        kept: list[tuple[str, float]] = []
        while at:
            key, when = next(iter(at.items()))
            if not more(when, len(kept)):
                break
            del at[key]
            if key in busy:
                kept.append((key, when))
            else:
                out.append(key)
        for key, when in reversed(kept):
            at[key] = when
            at.move_to_end(key, last=False)
        return out

    def take_all(self, busy: Collection[str]) -> list[str]:
        """Remove and return every key not in ``busy`` (to pack them all)."""
        out = [key for key in self._at if key not in busy]
        for key in out:
            del self._at[key]
        return out

    def clear(self) -> None:
        self._at.clear()
