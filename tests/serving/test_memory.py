"""A worker hands its freed memory back once its load ends (serving/memory.py), with glibc's
real malloc_trim on this process's own heap."""

from __future__ import annotations

import asyncio

import psutil

from serving.memory import IdleTrim, malloc_trim


def test_this_c_library_has_malloc_trim() -> None:
    """The service's images and CI run on glibc; without it `IdleTrim` would do nothing."""
    assert malloc_trim() is not None


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
    trim = IdleTrim(idle_seconds=0.5)  # far above the 50 ms between predictions below
    asyncio.run(_for(0.6, trim))
    assert trim.trims == 0  # nothing was busy: nothing to trim
    asyncio.run(_for(1.2, trim, busy_every=0.05))
    assert trim.trims == 0  # a prediction every 50 ms: never idle for 500 ms
    trim.busy()
    asyncio.run(_for(1.8, trim))
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
    del kept  # alive until here: they pin the heap's top
    assert freed > 100 * 2**20, f"{freed / 2**20:.0f} MiB given back"
