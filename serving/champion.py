"""Following the alias `champion` in one worker process of the service.

What is served follows the alias: a poll every `serve_poll_seconds` and POST /reload have every
worker process load the new version beside the old one, then all switch at once
(serving/switch.py); a request in flight finishes on the model it started with. Each worker
also watches the switch file and loads the versions another worker wants or serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time

from prometheus_client import Gauge

from ml.config import Settings
from ml.registry import CHAMPION
from serving import registry_api
from serving.model import ServedModel, load_version
from serving.switch import WATCH_SECONDS, Switchboard

logger = logging.getLogger(__name__)

SWAP_TIMEOUT = 120.0  # seconds the workers get to load a new version before a swap gives up


@functools.cache
def model_version_gauge() -> Gauge:
    """The served version as a Prometheus gauge of this process, made on the first call.
    (BentoML's GET /metrics shows it from prometheus_client's multiprocess files.)"""
    return Gauge(
        "emoflow_model_version", "Registry version of the served model (0: none).",
        multiprocess_mode="livemostrecent",
    )  # fmt: skip


class ChampionFollower:
    """The versions worker `index` (1-based) of `workers` has loaded, and the one it serves."""

    def __init__(self, settings: Settings, workers: int, index: int) -> None:
        self.settings, self.workers = settings, workers
        self.load_error: str | None = None
        self.models: dict[int, ServedModel] = {}  # loaded in this worker, by version
        self.last_served: ServedModel | None = None
        self.switch = Switchboard(settings.home / "run", settings.serve_port, index, workers)
        self.threads = max(1, (os.cpu_count() or 1) // workers)  # inference threads per worker
        self.reload_lock, self.load_lock = asyncio.Lock(), asyncio.Lock()
        self.version_gauge = model_version_gauge()

    @property
    def served(self) -> ServedModel | None:
        """The model of the version all workers serve now; until this worker has it (just
        started), the one it served last."""
        model = self.models.get(self.switch.serving)
        if model is not None:
            self.last_served = model
        return self.last_served

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.serve_poll_seconds)
            with contextlib.suppress(Exception):  # logged; the served model stays
                await self.follow()

    async def watch(self) -> None:
        """Load the versions another worker wants or serves; forget the ones nobody needs."""
        failed: set[int] = set()
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            needed = {self.switch.wanted, self.switch.serving} - {0}
            for version in needed - set(self.models) - failed:
                try:
                    await self._load(version)
                except Exception:
                    logger.exception("could not load version %s that another worker wants", version)
                    failed.add(version)
            for version in set(self.models) - needed:
                del self.models[version]  # a request still using it keeps it until it answers
                self.switch.report_loaded(set(self.models))

    async def _load(self, version: int) -> ServedModel:
        """Version `version` loaded beside the others (download, inference session)."""
        async with self.load_lock:
            if version not in self.models:
                ref = await asyncio.to_thread(registry_api.version_ref, self.settings, version)
                self.models[version] = await asyncio.to_thread(
                    load_version, self.settings, ref, self.threads
                )
                self.switch.report_loaded(set(self.models))
            return self.models[version]

    async def _swap(self, version: int) -> None:
        """Make every worker serve `version`: all load it, then all switch (serving/switch.py)."""
        self.switch.want(version)
        await self._load(version)
        deadline = time.monotonic() + SWAP_TIMEOUT
        while missing := self.switch.missing(version):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"worker(s) {missing} of {self.workers} did not load version {version} within "
                    f"{SWAP_TIMEOUT:g} s; every worker goes on serving what it served"
                )
            await asyncio.sleep(WATCH_SECONDS / 2)
        if self.switch.wanted == version:  # else a newer champion came meanwhile: it goes next
            self.switch.serve(version)

    async def follow(self) -> dict:
        """Serve the version `champion` names if it is not the one served: every worker loads
        it beside the current one, then all swap at once."""
        async with self.reload_lock:
            old = self.served
            try:
                ref = await asyncio.to_thread(
                    registry_api.version_by_alias, self.settings, CHAMPION
                )
                if ref is not None and (old is None or old.ref.version != ref.version):
                    await self._swap(ref.version)
                self.load_error = None
            except Exception as exc:
                logger.exception("could not load the champion model")
                self.load_error = f"{type(exc).__name__}: {exc}"
                raise
            new = self.served
            version = new.ref.version if new else None
            self.version_gauge.set(version or 0)
            return {
                "reloaded": new is not old,
                "previous_version": old.ref.version if old else None,
                "model_version": version,
                "workers": self.workers,
            }
