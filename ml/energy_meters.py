"""The sources `ml.energy.EnergyMeter` reads, and the arithmetic over their readings.

- `GpuSampler`: the GPUs through NVML (`pynvml`, package nvidia-ml-py). On Volta and newer the
  driver keeps a per-board energy counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ): the
  difference between start and end is the board's energy to within the driver's stated accuracy
  (a few percent). Where that counter is unsupported, the board power (`nvmlDeviceGetPowerUsage`,
  mW) is sampled every `sample_interval` seconds and integrated with the trapezoid rule: good for
  runs of minutes, coarse for runs of a second or two (spikes between samples are missed). Both
  measure the whole board, so another job on the same GPU counts too. Utilisation and memory
  used are sampled alongside; memory is the device's, not this process's.
- `RaplCounter`: the CPU through RAPL (`/sys/class/powercap/intel-rapl:N/energy_uj`, package
  domains only; AMD Zen exposes the same files). The package counter is measured by the
  processor itself and is precise, but it covers the whole socket (every process on it, uncore
  included; DRAM is not). It is often readable only by root, and absent in most VMs and
  containers. The counter wraps at `max_energy_range_uj` (minutes at full load), so it is read
  on every sample and the deltas summed.
- `cpu_times` / `cpu_seconds_between`: the CPU seconds used by this process and its children,
  which the meter's CPU estimate multiplies by a power per core.

A source that cannot be read is reported through the `note` and `warn` callables the meter
passes in (they become the `energy_note` tag and logged warnings), not raised: only
`RaplCounter.add` raises, for the meter to fall back to the estimate.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

JOULES_PER_KWH = 3.6e6
RAPL_ROOT = Path("/sys/class/powercap")
_PACKAGE_DOMAIN = re.compile(r"intel-rapl:\d+")  # not the subdomains intel-rapl:N:M


class Note(Protocol):
    """Adds a line to the `energy_note` tag, logged (as a warning if something failed)."""

    def __call__(self, message: str, warn: bool = False) -> None: ...


Warn = Callable[[str, str], None]
"""Logs a warning ``(key, message)``, once per key."""


# ---- pure helpers -------------------------------------------------------------------------


def rapl_delta_uj(start: int, end: int, max_range_uj: int) -> int:
    """Energy between two readings of a RAPL counter that wraps to 0 past `max_range_uj`
    (at most one wrap between the readings)."""
    if end >= start:
        return end - start
    return end + max_range_uj - start


def integrate_power(samples: Sequence[tuple[float, float]]) -> float:
    """Joules from (time in s, power in W) samples, by the trapezoid rule; 0 for fewer than
    two samples."""
    return sum(
        (t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(samples, samples[1:], strict=False)
    )


def joules_to_kwh(joules: float) -> float:
    return joules / JOULES_PER_KWH


def visible_gpus(cuda_visible_devices: str | None, count: int) -> list[int | str]:
    """NVML indices (or GPU UUIDs) of the GPUs this process can see: all `count` when
    CUDA_VISIBLE_DEVICES is unset; else its entries up to the first invalid one, as CUDA does.
    Indices follow NVML's (PCI bus) order, which is CUDA's when CUDA_DEVICE_ORDER=PCI_BUS_ID
    or the GPUs are all alike."""
    if cuda_visible_devices is None:
        return list(range(count))
    devices: list[int | str] = []
    for entry in cuda_visible_devices.split(","):
        entry = entry.strip()
        if entry.isdigit() and int(entry) < count:
            devices.append(int(entry))
        elif entry.startswith("GPU-"):
            devices.append(entry)
        else:
            break
    return devices


# ---- CPU ----------------------------------------------------------------------------------


def _rapl_packages(root: Path) -> list[Path]:
    """Package domains under `root`; a platform ("psys") domain is left out, as it contains
    the packages."""
    domains = []
    for path in sorted(root.glob("intel-rapl:*")):
        if not _PACKAGE_DOMAIN.fullmatch(path.name):
            continue
        try:
            name = (path / "name").read_text().strip()
        except OSError:
            name = "package"
        if name.startswith("package"):
            domains.append(path)
    return domains


def _read_rapl(domains: list[Path]) -> list[tuple[int, int]]:
    """(energy_uj, max_energy_range_uj) per domain; raises OSError/ValueError if unreadable."""
    return [
        (int((d / "energy_uj").read_text()), int((d / "max_energy_range_uj").read_text()))
        for d in domains
    ]


class RaplCounter:
    """The RAPL package counters under `root`, summed in `uj` across their wraps."""

    def __init__(self, root: Path, note: Note, warn: Warn) -> None:
        self.root = root
        self._note = note
        self._warn = warn
        self.domains: list[Path] = []  # empty: RAPL is not read
        self._last: list[tuple[int, int]] = []
        self.uj = 0

    def start(self) -> None:
        """Finds the package domains and reads them a first time; a note if it cannot."""
        try:
            domains = _rapl_packages(self.root)
            if not domains:
                self._note(f"RAPL not readable: no package domain under {self.root}")
                return
            self._last = _read_rapl(domains)
            self.domains = domains
        except (OSError, ValueError) as exc:
            self._note(f"RAPL not readable: {exc}", warn=True)

    def add(self) -> None:
        """Adds the energy since the last read; raises OSError/ValueError if unreadable."""
        now = _read_rapl(self.domains)
        self.uj += sum(
            rapl_delta_uj(start, end, max_range)
            for (start, _), (end, max_range) in zip(self._last, now, strict=True)
        )
        self._last = now

    def sample(self) -> None:
        try:
            self.add()
        except (OSError, ValueError) as exc:
            self._warn("rapl", f"RAPL read failed, sample skipped: {exc}")


CpuTimes = tuple[float, dict[tuple[int, float], float]]


def cpu_times() -> CpuTimes:
    """CPU seconds (user + system) used so far by this process and its reaped children, and
    by each live descendant, keyed by (pid, create time): a live one's time is added to its
    parent's children's times only once it is waited for."""
    try:
        import psutil
    except ImportError:
        times = os.times()
        return times.user + times.system + times.children_user + times.children_system, {}

    def used(process: Any) -> float:
        t = process.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    me = psutil.Process()
    live = {}
    for child in me.children(recursive=True):
        try:
            live[(child.pid, child.create_time())] = used(child)
        except psutil.Error:
            pass  # gone or a zombie meanwhile
    return used(me), live


def cpu_seconds_between(start: CpuTimes, end: CpuTimes) -> float:
    """CPU seconds used between two `cpu_times()`: this process's, and its descendants' that
    started since (in full) or ended since (their part after `start`). Descendants alive at
    both ends, such as a server started before the run, are left out."""
    (own0, live0), (own1, live1) = start, end
    started = sum(seconds for key, seconds in live1.items() if key not in live0)
    ended = sum(seconds for key, seconds in live0.items() if key not in live1)
    return max(own1 - own0 + started - ended, 0.0)


# ---- GPU ----------------------------------------------------------------------------------


class GpuSampler:
    """The GPUs this process can see, through NVML: energy (from the boards' counters, else
    from power samples), and utilisation and memory used, sampled."""

    def __init__(self, sample_interval: float, note: Note, warn: Warn) -> None:
        self.sample_interval = sample_interval
        self._note = note
        self._warn = warn
        self._nvml: Any = None
        self.handles: list[Any] = []  # empty: no GPU is read
        self._energy_start: dict[int, int] = {}  # device position -> mJ, where the counter works
        self._power: dict[int, list[tuple[float, float]]] = {}  # elsewhere: (s, W) samples
        self.utils: list[float] = []  # percent
        self.memory_mib: list[float] = []

    def start(self) -> None:
        """Opens NVML and the visible GPUs, reads their energy counters and takes a first
        sample; a note (and NVML closed again) if there is no GPU to read."""
        try:
            import pynvml
        except ImportError:
            self._note("no gpu reading: pynvml not installed")
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            self._note(f"no gpu reading: NVML init failed ({exc})")
            return
        self._nvml = pynvml
        try:
            for device in visible_gpus(
                os.environ.get("CUDA_VISIBLE_DEVICES"), pynvml.nvmlDeviceGetCount()
            ):
                if isinstance(device, int):
                    self.handles.append(pynvml.nvmlDeviceGetHandleByIndex(device))
                else:
                    self.handles.append(pynvml.nvmlDeviceGetHandleByUUID(device))
        except Exception as exc:
            self._warn("gpu", f"cannot list GPUs: {exc}")
        if not self.handles:
            self._note("no gpu reading: no visible GPU")
            self._shutdown_nvml()
            return
        for i, handle in enumerate(self.handles):
            try:
                self._energy_start[i] = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            except Exception:
                self._power[i] = []  # sampled from now on, first by sample() below
        if self._power:
            self._note(
                f"gpu energy of {len(self._power)} GPU(s) integrated from power samples "
                f"every {self.sample_interval:g} s (no energy counter)"
            )
        self.sample()

    def _sample_power(self, i: int, handle: Any, now: float) -> None:
        try:
            self._power[i].append((now, self._nvml.nvmlDeviceGetPowerUsage(handle) / 1000))
        except Exception as exc:
            self._warn(f"power{i}", f"GPU {i} power read failed: {exc}")

    def sample(self) -> None:
        now = time.monotonic()
        for i, handle in enumerate(self.handles):
            if i in self._power:
                self._sample_power(i, handle, now)
            try:
                self.utils.append(float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                self.memory_mib.append(self._nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
            except Exception as exc:
                self._warn(f"util{i}", f"GPU {i} utilisation read failed: {exc}")

    def kwh(self) -> float | None:
        """The GPUs' energy since `start` (None if none could be read), after a last sample;
        closes NVML."""
        if not self.handles:
            return None
        self.sample()
        joules: float | None = None
        for i, handle in enumerate(self.handles):
            if i in self._energy_start:
                try:
                    end = self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                    joules = (joules or 0.0) + (end - self._energy_start[i]) / 1000
                except Exception as exc:
                    self._warn(f"energy{i}", f"GPU {i} energy read failed: {exc}")
            elif len(self._power[i]) >= 2:
                joules = (joules or 0.0) + integrate_power(self._power[i])
        self._shutdown_nvml()
        return None if joules is None else joules_to_kwh(joules)

    def _shutdown_nvml(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass
