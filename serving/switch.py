"""One served model version for all of the service's worker processes.

The service runs several worker processes (one per core by default), each with its own copy of
the model. A swap must still look like one swap to clients: once any answer names the new
version, every later answer does, whichever worker gives it. So a swap has two phases, through
a small file that every worker maps into memory, `<home>/run/service-<port>.switch`:

1. *wanted*: the worker that finds a new champion (POST /reload or its poll) writes the version
   there. Every worker sees it within `WATCH_SECONDS`, loads that version beside the one it
   serves, and lists what it has loaded in its own file, `service-<port>.worker-<index>`.
2. *serving*: once every worker has it loaded, the leading worker writes the version as
   served. Each request reads that number from the mapped file, so all workers switch at the
   same moment; a request in flight finishes on the model it started with.

A worker that does not load the wanted version in time stops the swap: every worker goes on
serving the version it served.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

WATCH_SECONDS = 0.1  # how often a worker looks at the switch file
_FIELDS = struct.Struct("<ii")  # wanted, serving (0: none); 4-byte stores, never torn
_WANTED, _SERVING = 0, 4


class Switchboard:
    """The switch file of one service (its port), as seen by worker `index` of `workers`."""

    def __init__(self, folder: Path, port: int, index: int, workers: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.index, self.workers = index, workers
        self._worker_file = folder / f"service-{port}.worker-{{}}"
        fd = os.open(folder / f"service-{port}.switch", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < _FIELDS.size:
                os.ftruncate(fd, _FIELDS.size)
            self._map = mmap.mmap(fd, _FIELDS.size)
        finally:
            os.close(fd)
        self.report_loaded(set())  # until now this index's file may be a dead worker's

    @property
    def wanted(self) -> int:
        return struct.unpack_from("<i", self._map, _WANTED)[0]

    @property
    def serving(self) -> int:
        return struct.unpack_from("<i", self._map, _SERVING)[0]

    def want(self, version: int) -> None:
        struct.pack_into("<i", self._map, _WANTED, version)

    def serve(self, version: int) -> None:
        struct.pack_into("<i", self._map, _SERVING, version)

    def report_loaded(self, versions: set[int]) -> None:
        """Tell the other workers which versions this one has loaded."""
        path = Path(str(self._worker_file).format(self.index))
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "loaded": sorted(versions)}))
        tmp.replace(path)

    def missing(self, version: int) -> list[int]:
        """The worker indexes (1-based) that have not loaded `version`: no file, a dead
        process's file, or a list without it."""
        missing = []
        for index in range(1, self.workers + 1):
            try:
                state = json.loads(Path(str(self._worker_file).format(index)).read_text())
                os.kill(state["pid"], 0)
                loaded = version in state["loaded"]
            except (OSError, ValueError, KeyError, TypeError):
                loaded = False
            if not loaded:
                missing.append(index)
        return missing
