"""Virtual shard (vshard) hashing: which vshard a subscriber or account belongs to.

The vshard is the unit of ownership, persistence and movement (DESIGN.md section 5). Every front
door, owner and tool must compute the same vshard for the same id forever, across processes,
machines and Python versions, so the hash is BLAKE2b of the UTF-8 bytes (never Python's salted
``hash()``), and the vshard count is fixed when a deployment is created.

>>> vshard_of("491700000001", 1024) == vshard_of("491700000001", 1024)
True
"""

from __future__ import annotations

import hashlib

VSHARD_COUNT_DEFAULT = 1024
VSHARD_COUNT_MAX = 1 << 20

_DIGEST_SIZE = 8  # 64 bits: uniform enough for any vshard count we allow


def stable_hash(key: str) -> int:
    """Return a 64-bit hash of ``key`` that never changes (BLAKE2b-64 of its UTF-8, big endian)."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {type(key).__name__}")
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=_DIGEST_SIZE).digest()
    return int.from_bytes(digest, "big")


def check_vshard_count(vshard_count: int) -> int:
    """Return ``vshard_count`` if valid (1..VSHARD_COUNT_MAX), else raise naming the field."""
    if isinstance(vshard_count, bool) or not isinstance(vshard_count, int):
        raise TypeError(f"vshard_count must be an int, got {vshard_count!r}")
    if not 1 <= vshard_count <= VSHARD_COUNT_MAX:
        raise ValueError(f"vshard_count must be in 1..{VSHARD_COUNT_MAX}, got {vshard_count}")
    return vshard_count


def vshard_of(subscriber_id: str, vshard_count: int) -> int:
    """Return the vshard (0 .. vshard_count-1) of a subscriber or account id.

    Stable: depends only on the id's UTF-8 bytes and the count. An empty id is an error, not a
    vshard, because it would silently route every malformed request to one place.
    """
    check_vshard_count(vshard_count)
    if not isinstance(subscriber_id, str):
        raise TypeError(f"subscriber_id must be a str, got {type(subscriber_id).__name__}")
    if not subscriber_id:
        raise ValueError("subscriber_id must not be empty")
    return stable_hash(subscriber_id) % vshard_count
