"""The pure charging domain: money, tariffs, rating, accounts and buckets, sessions and
reservations, and the ledger.

Nothing here does I/O, reads the clock, or imports Ray, gRPC or psycopg: callers pass the time in
and persist what the domain hands back. That keeps the heart of the system testable, replayable
from a seed, and benchmarkable on its own.
"""
