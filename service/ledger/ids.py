"""Sortable prediction ids: UUID version 7 (RFC 9562), which Python 3.11's `uuid` module does not make yet.

Layout (big-endian, 128 bits): 48-bit Unix time in milliseconds | version 7 (4 bits) | 12-bit counter |
variant 0b10 (2 bits) | 62 random bits. Ids sort by creation time; within one process they are strictly
increasing (RFC 9562 §6.2, method 1: a counter in `rand_a`, seeded randomly each millisecond with headroom, and the
timestamp carried forward when the counter overflows or the clock steps back).
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_COUNTER_BITS = 12
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
# The counter starts in the lower half of its range each millisecond, so at least 2048 ids fit in one millisecond
# before the timestamp has to be carried forward.
_COUNTER_SEED_MASK = _COUNTER_MAX >> 1


class _Uuid7Clock:
    """The last (millisecond, counter) handed out, so the next id is greater; one per process, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def next(self, now_ms: int) -> tuple[int, int]:
        with self._lock:
            if now_ms > self._last_ms:
                self._last_ms = now_ms
                self._counter = int.from_bytes(os.urandom(2), "big") & _COUNTER_SEED_MASK
            elif self._counter < _COUNTER_MAX:
                self._counter += 1
            else:  # counter exhausted in this millisecond (or the clock went back): borrow the next millisecond
                self._last_ms += 1
                self._counter = int.from_bytes(os.urandom(2), "big") & _COUNTER_SEED_MASK
            return self._last_ms, self._counter

    def take(self, now_ms: int, n: int) -> list[tuple[int, int]]:
        """`next` n times under one lock: the same sequence, for a request's rows at once."""
        with self._lock:
            taken = []
            for _ in range(n):
                if now_ms > self._last_ms:
                    self._last_ms = now_ms
                    self._counter = int.from_bytes(os.urandom(2), "big") & _COUNTER_SEED_MASK
                elif self._counter < _COUNTER_MAX:
                    self._counter += 1
                else:
                    self._last_ms += 1
                    self._counter = int.from_bytes(os.urandom(2), "big") & _COUNTER_SEED_MASK
                taken.append((self._last_ms, self._counter))
            return taken


_CLOCK = _Uuid7Clock()


def uuid7_from_parts(unix_ms: int, counter: int, random_62: int) -> uuid.UUID:
    """The UUIDv7 with these fields (each masked to its width)."""
    value = (unix_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (counter & _COUNTER_MAX) << 64
    value |= 0b10 << 62
    value |= random_62 & ((1 << 62) - 1)
    return uuid.UUID(int=value)


def new_prediction_id() -> uuid.UUID:
    """A fresh UUIDv7: unique, sortable by time, strictly increasing within this process."""
    unix_ms, counter = _CLOCK.next(time.time_ns() // 1_000_000)
    return uuid7_from_parts(unix_ms, counter, int.from_bytes(os.urandom(8), "big"))


def new_prediction_ids(n: int) -> list[uuid.UUID]:
    """`n` fresh UUIDv7s in increasing order: `new_prediction_id` n times, with one lock and one read of the
    random source (a 10,000-row request pays ~1 µs per id instead of ~5)."""
    parts = _CLOCK.take(time.time_ns() // 1_000_000, n)
    randoms = os.urandom(8 * n)
    return [uuid7_from_parts(unix_ms, counter, int.from_bytes(randoms[8 * i:8 * i + 8], "big"))
            for i, (unix_ms, counter) in enumerate(parts)]


def uuid7_unix_ms(value: uuid.UUID) -> int:
    """The millisecond timestamp a UUIDv7 carries."""
    return value.int >> 80
