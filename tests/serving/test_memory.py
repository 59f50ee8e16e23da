"""A worker hands its freed memory back once its load ends (serving/memory.py), with glibc's
real malloc_trim on this process's own heap."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from serving.memory import IdleTrim, malloc_trim

pytestmark = pytest.mark.skipif(malloc_trim() is None, reason="needs glibc's malloc_trim")


async def _for(seconds: float, trim: IdleTrim, busy_every: float | None = None) -> None:
    task = asyncio.create_task(trim.run())
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        if busy_every is not None:
            trim.busy()
        await asyncio.sleep(busy_every or seconds)
    task.cancel()


def test_the_heap_is_trimmed_once_per_quiet_spell_and_never_under_load() -> None:
    trim = IdleTrim(idle_seconds=0.2)
    asyncio.run(_for(0.6, trim))
    assert trim.trims == 0  # nothing was busy: nothing to trim
    asyncio.run(_for(0.8, trim, busy_every=0.05))
    assert trim.trims == 0  # a prediction every 50 ms: never idle for 200 ms
    trim.busy()
    asyncio.run(_for(1.0, trim))
    assert trim.trims == 1  # one quiet spell, one trim, however long it lasts


def test_a_trim_gives_back_the_pages_freed_inside_the_heap() -> None:
    """Blocks of 4 KiB come from the heap; with every 16th kept, the heap cannot shrink from
    its top, so only malloc_trim gives the freed pages back."""
    process = psutil.Process()
    blocks = [bytearray(4096) for _ in range(40_000)]  # about 160 MiB, touched
    kept = blocks[::16]
    del blocks
    before = process.memory_info().rss
    trim = IdleTrim(idle_seconds=0.1)
    trim.busy()
    asyncio.run(_for(0.5, trim))
    assert trim.trims == 1
    freed = before - process.memory_info().rss
    assert freed > 100 * 2**20, f"{freed / 2**20:.0f} MiB given back"
    assert len(kept) == 2500
