"""A worker's freed memory goes back to the system once its load ends.

glibc keeps the pages a busy worker freed (decoded frames, request bodies, the model's batches)
inside its heap for the next allocation, so a worker's resident memory stays at its busiest
moment long after the load is gone. `IdleTrim` calls glibc's `malloc_trim(0)`, which hands
every wholly free page of the heap back, once a worker has started no prediction for a while:
never under load, where it would only slow allocations down, once per quiet spell.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from collections.abc import Callable

IDLE_SECONDS = 2.0  # no prediction started for this long: the load is over


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


class IdleTrim:
    """Trims the heap `idle_seconds` after the last `busy()`, once, from `run()`'s task."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self.trim = malloc_trim()
        self.trims = 0  # quiet spells trimmed so far
        self._last_busy: float | None = None  # None: nothing to trim since the last trim

    def busy(self) -> None:
        """A prediction starts now."""
        self._last_busy = time.monotonic()

    async def run(self) -> None:
        """Checks twice per `idle_seconds`, for as long as the task lives; does nothing without
        glibc."""
        if self.trim is None:
            return
        while True:
            await asyncio.sleep(self.idle_seconds / 2)
            last = self._last_busy
            if last is not None and time.monotonic() - last >= self.idle_seconds:
                self._last_busy = None
                await asyncio.to_thread(self.trim, 0)
                self.trims += 1
