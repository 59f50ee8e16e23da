"""Energy used by a training run, and what it cost.

`EnergyMeter` wraps the training as a context manager; `meter.reading()` then gives an
`EnergyReading` whose `as_metrics()` and `as_tags()` go to MLflow.

Three sources, from most to least precise:

- GPU through NVML (`pynvml`, package nvidia-ml-py). On Volta and newer the driver keeps a
  per-board energy counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ): the difference between
  start and end is the board's energy to within the driver's stated accuracy (a few percent).
  Where that counter is unsupported, the board power (`nvmlDeviceGetPowerUsage`, mW) is sampled
  every `sample_interval` seconds and integrated with the trapezoid rule: good for runs of
  minutes, coarse for runs of a second or two (spikes between samples are missed). Both
  measure the whole board, so another job on the same GPU counts too. Utilisation and memory
  used are sampled alongside; memory is the device's, not this process's.
- CPU through RAPL (`/sys/class/powercap/intel-rapl:N/energy_uj`, package domains only; AMD
  Zen exposes the same files). The package counter is measured by the processor itself and is
  precise, but it covers the whole socket (every process on it, uncore included; DRAM is not).
  It is often readable only by root, and absent in most VMs and containers. The counter wraps
  at `max_energy_range_uj` (minutes at full load), so it is read on every sample and the
  deltas summed.
- Otherwise the CPU energy is an estimate: CPU seconds used by this process and its
  children × `cpu_watts_per_core` (default 10 W, the busy power of one core of a typical server
  CPU: a ~200 W 20-core Xeon package runs at about 10 W per loaded core). It counts only this
  run's work, leaves out idle and uncore power, and is right to a factor of two at best; the
  tags say that it is an estimate and how it was made.

Nothing here may fail the training: a source that cannot be read degrades to None (GPU) or to
the estimate (CPU), with a logged warning.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

JOULES_PER_KWH = 3.6e6
# Busy power of one server core: a ~200 W, 20-core Xeon package at full load.
DEFAULT_CPU_WATTS_PER_CORE = 10.0
RAPL_ROOT = Path("/sys/class/powercap")
_PACKAGE_DOMAIN = re.compile(r"intel-rapl:\d+")  # not the subdomains intel-rapl:N:M


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


# ---- the reading --------------------------------------------------------------------------


@dataclass(frozen=True)
class EnergyReading:
    gpu_kwh: float | None
    cpu_kwh: float | None
    total_kwh: float
    cost: float
    price_per_kwh: float
    seconds: float
    gpu_source: str | None  # "nvml" or None
    cpu_source: str | None  # "rapl", "estimate", or None when even the estimate failed
    gpu_util_mean: float | None = None  # percent
    gpu_util_max: float | None = None
    gpu_memory_max_mib: float | None = None  # largest memory used on any one visible GPU
    note: str = ""

    def as_metrics(self) -> dict[str, float]:
        metrics = {
            "energy_kwh": self.total_kwh,
            "energy_cost": self.cost,
            "energy_price_per_kwh": self.price_per_kwh,
            "energy_seconds": self.seconds,
            "energy_gpu_kwh": self.gpu_kwh,
            "energy_cpu_kwh": self.cpu_kwh,
            "gpu_util_mean": self.gpu_util_mean,
            "gpu_util_max": self.gpu_util_max,
            "gpu_memory_max_mib": self.gpu_memory_max_mib,
        }
        return {name: float(value) for name, value in metrics.items() if value is not None}

    def as_tags(self) -> dict[str, str]:
        return {
            "energy_cpu_source": self.cpu_source or "none",
            "energy_gpu_source": self.gpu_source or "none",
            "energy_note": self.note,
        }


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


CpuTimes = tuple[float, dict[tuple[int, float], float]]


def _cpu_times() -> CpuTimes:
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
    """CPU seconds used between two `_cpu_times()`: this process's, and its descendants' that
    started since (in full) or ended since (their part after `start`). Descendants alive at
    both ends, such as a server started before the run, are left out."""
    (own0, live0), (own1, live1) = start, end
    started = sum(seconds for key, seconds in live1.items() if key not in live0)
    ended = sum(seconds for key, seconds in live0.items() if key not in live1)
    return max(own1 - own0 + started - ended, 0.0)


# ---- the meter ----------------------------------------------------------------------------


class EnergyMeter:
    """Measures the energy of the code run inside `with EnergyMeter(...) as meter:`."""

    def __init__(
        self,
        price_per_kwh: float = 0.30,
        cpu_watts_per_core: float = DEFAULT_CPU_WATTS_PER_CORE,
        sample_interval: float = 0.5,
        rapl_root: Path = RAPL_ROOT,
    ) -> None:
        self.price_per_kwh = price_per_kwh
        self.cpu_watts_per_core = cpu_watts_per_core
        self.sample_interval = sample_interval
        self.rapl_root = rapl_root
        self._notes: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reading: EnergyReading | None = None
        # CPU
        self._cpu_start: CpuTimes | None = None
        self._rapl_domains: list[Path] = []
        self._rapl_last: list[tuple[int, int]] = []
        self._rapl_uj = 0
        # GPU
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._energy_start: dict[int, int] = {}  # device position -> mJ, where the counter works
        self._power: dict[int, list[tuple[float, float]]] = {}  # elsewhere: (s, W) samples
        self._utils: list[float] = []
        self._memory_mib: list[float] = []
        self._warned: set[str] = set()

    # -- context manager

    def __enter__(self) -> EnergyMeter:
        self._t0 = time.monotonic()
        try:
            self._cpu_start = _cpu_times()
        except Exception as exc:  # never fail the training
            self._warn("cpu", f"cannot read CPU times: {exc}")
        self._start_rapl()
        self._start_gpu()
        if self._rapl_domains or self._handles:
            self._thread = threading.Thread(target=self._run, name="energy-meter", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._reading = self._finish()
        except Exception as error:  # never fail the training
            log.warning("energy: no reading: %s", error)
            seconds = time.monotonic() - self._t0
            self._reading = EnergyReading(
                gpu_kwh=None,
                cpu_kwh=None,
                total_kwh=0.0,
                cost=0.0,
                price_per_kwh=self.price_per_kwh,
                seconds=seconds,
                gpu_source=None,
                cpu_source=None,
                note=f"no reading: {error}",
            )

    def reading(self) -> EnergyReading:
        if self._reading is None:
            raise RuntimeError("EnergyMeter.reading() is available once the `with` block ends")
        return self._reading

    # -- sampling

    def _run(self) -> None:
        while not self._stop.wait(self.sample_interval):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            if self._rapl_domains:
                self._sample_rapl()
            if self._handles:
                self._sample_gpu()

    def _note(self, message: str, warn: bool = False) -> None:
        """A line for the `energy_note` tag, also logged (as a warning if something failed)."""
        self._notes.append(message)
        log.log(logging.WARNING if warn else logging.INFO, "energy: %s", message)

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("energy: %s", message)

    # -- CPU

    def _start_rapl(self) -> None:
        try:
            domains = _rapl_packages(self.rapl_root)
            if not domains:
                self._note(f"RAPL not readable: no package domain under {self.rapl_root}")
                return
            self._rapl_last = _read_rapl(domains)
            self._rapl_domains = domains
        except (OSError, ValueError) as exc:
            self._note(f"RAPL not readable: {exc}", warn=True)

    def _add_rapl(self) -> None:
        """Adds the energy since the last read; raises OSError/ValueError if unreadable."""
        now = _read_rapl(self._rapl_domains)
        self._rapl_uj += sum(
            rapl_delta_uj(start, end, max_range)
            for (start, _), (end, max_range) in zip(self._rapl_last, now, strict=True)
        )
        self._rapl_last = now

    def _sample_rapl(self) -> None:
        try:
            self._add_rapl()
        except (OSError, ValueError) as exc:
            self._warn("rapl", f"RAPL read failed, sample skipped: {exc}")

    def _cpu_reading(self) -> tuple[float | None, str | None]:
        if self._rapl_domains:
            try:
                self._add_rapl()  # the final read must succeed for the sum to be complete
                self._notes.insert(
                    0, f"cpu energy from RAPL: {len(self._rapl_domains)} package(s), whole socket"
                )
                return joules_to_kwh(self._rapl_uj / 1e6), "rapl"
            except (OSError, ValueError) as exc:
                self._note(f"RAPL read failed at the end, using the estimate: {exc}", warn=True)
        if self._cpu_start is None:
            return None, None
        try:
            cpu_seconds = cpu_seconds_between(self._cpu_start, _cpu_times())
        except Exception as exc:
            self._warn("cpu", f"cannot read CPU times: {exc}")
            return None, None
        self._notes.insert(
            0,
            f"cpu energy is an estimate: process CPU seconds ({cpu_seconds:.1f}) × "
            f"{self.cpu_watts_per_core:g} W per core",
        )
        return joules_to_kwh(cpu_seconds * self.cpu_watts_per_core), "estimate"

    # -- GPU

    def _start_gpu(self) -> None:
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
                    self._handles.append(pynvml.nvmlDeviceGetHandleByIndex(device))
                else:
                    self._handles.append(pynvml.nvmlDeviceGetHandleByUUID(device))
        except Exception as exc:
            self._warn("gpu", f"cannot list GPUs: {exc}")
        if not self._handles:
            self._note("no gpu reading: no visible GPU")
            self._shutdown_nvml()
            return
        for i, handle in enumerate(self._handles):
            try:
                self._energy_start[i] = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            except Exception:
                self._power[i] = []  # sampled from now on, first by _sample_gpu below
        if self._power:
            self._note(
                f"gpu energy of {len(self._power)} GPU(s) integrated from power samples "
                f"every {self.sample_interval:g} s (no energy counter)"
            )
        self._sample_gpu()

    def _sample_power(self, i: int, handle: Any, now: float) -> None:
        try:
            self._power[i].append((now, self._nvml.nvmlDeviceGetPowerUsage(handle) / 1000))
        except Exception as exc:
            self._warn(f"power{i}", f"GPU {i} power read failed: {exc}")

    def _sample_gpu(self) -> None:
        now = time.monotonic()
        for i, handle in enumerate(self._handles):
            if i in self._power:
                self._sample_power(i, handle, now)
            try:
                self._utils.append(float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                self._memory_mib.append(self._nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
            except Exception as exc:
                self._warn(f"util{i}", f"GPU {i} utilisation read failed: {exc}")

    def _gpu_reading(self) -> float | None:
        if not self._handles:
            return None
        self._sample_gpu()
        joules: float | None = None
        for i, handle in enumerate(self._handles):
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

    # -- the end

    def _finish(self) -> EnergyReading:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        seconds = time.monotonic() - self._t0
        with self._lock:
            gpu_kwh = self._gpu_reading()
            cpu_kwh, cpu_source = self._cpu_reading()
        total = (gpu_kwh or 0.0) + (cpu_kwh or 0.0)
        return EnergyReading(
            gpu_kwh=gpu_kwh,
            cpu_kwh=cpu_kwh,
            total_kwh=total,
            cost=total * self.price_per_kwh,
            price_per_kwh=self.price_per_kwh,
            seconds=seconds,
            gpu_source="nvml" if gpu_kwh is not None else None,
            cpu_source=cpu_source,
            gpu_util_mean=sum(self._utils) / len(self._utils) if self._utils else None,
            gpu_util_max=max(self._utils) if self._utils else None,
            gpu_memory_max_mib=max(self._memory_mib) if self._memory_mib else None,
            note="; ".join(self._notes),
        )
