"""Energy used by a training run, and what it cost.

`EnergyMeter` wraps the training as a context manager; `meter.reading()` then gives an
`EnergyReading` whose `as_metrics()` and `as_tags()` go to MLflow.

Three sources, from most to least precise (`ml.energy_meters` reads the first two, and says
what each measures and how well):

- GPU through NVML (`pynvml`): the boards' energy counters, or else their power sampled every
  `sample_interval` seconds and integrated; each measures the whole board.
- CPU through RAPL (`/sys/class/powercap/intel-rapl:N/energy_uj`): the packages' own precise
  counters, covering the whole socket; often readable only by root, and absent in most VMs and
  containers.
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ml.energy_meters import (
    RAPL_ROOT,
    CpuTimes,
    GpuSampler,
    RaplCounter,
    cpu_seconds_between,
    cpu_times,
    joules_to_kwh,
)

log = logging.getLogger(__name__)

# Busy power of one server core: a ~200 W, 20-core Xeon package at full load.
DEFAULT_CPU_WATTS_PER_CORE = 10.0


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
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reading: EnergyReading | None = None
        self._cpu_start: CpuTimes | None = None
        self._rapl = RaplCounter(rapl_root, self._note, self._warn)
        self._gpu = GpuSampler(sample_interval, self._note, self._warn)

    # -- context manager

    def __enter__(self) -> EnergyMeter:
        self._t0 = time.monotonic()
        try:
            self._cpu_start = cpu_times()
        except Exception as exc:  # never fail the training
            self._warn("cpu", f"cannot read CPU times: {exc}")
        self._rapl.start()
        self._gpu.start()
        if self._rapl.domains or self._gpu.handles:
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
            if self._rapl.domains:
                self._rapl.sample()
            if self._gpu.handles:
                self._gpu.sample()

    def _note(self, message: str, warn: bool = False) -> None:
        """A line for the `energy_note` tag, also logged (as a warning if something failed)."""
        self._notes.append(message)
        log.log(logging.WARNING if warn else logging.INFO, "energy: %s", message)

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("energy: %s", message)

    # -- CPU

    def _cpu_reading(self) -> tuple[float | None, str | None]:
        if self._rapl.domains:
            try:
                self._rapl.add()  # the final read must succeed for the sum to be complete
                self._notes.insert(
                    0, f"cpu energy from RAPL: {len(self._rapl.domains)} package(s), whole socket"
                )
                return joules_to_kwh(self._rapl.uj / 1e6), "rapl"
            except (OSError, ValueError) as exc:
                self._note(f"RAPL read failed at the end, using the estimate: {exc}", warn=True)
        if self._cpu_start is None:
            return None, None
        try:
            cpu_seconds = cpu_seconds_between(self._cpu_start, cpu_times())
        except Exception as exc:
            self._warn("cpu", f"cannot read CPU times: {exc}")
            return None, None
        self._notes.insert(
            0,
            f"cpu energy is an estimate: process CPU seconds ({cpu_seconds:.1f}) × "
            f"{self.cpu_watts_per_core:g} W per core",
        )
        return joules_to_kwh(cpu_seconds * self.cpu_watts_per_core), "estimate"

    # -- the end

    def _finish(self) -> EnergyReading:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        seconds = time.monotonic() - self._t0
        with self._lock:
            gpu_kwh = self._gpu.kwh()
            cpu_kwh, cpu_source = self._cpu_reading()
        total = (gpu_kwh or 0.0) + (cpu_kwh or 0.0)
        utils, memory = self._gpu.utils, self._gpu.memory_mib
        return EnergyReading(
            gpu_kwh=gpu_kwh,
            cpu_kwh=cpu_kwh,
            total_kwh=total,
            cost=total * self.price_per_kwh,
            price_per_kwh=self.price_per_kwh,
            seconds=seconds,
            gpu_source="nvml" if gpu_kwh is not None else None,
            cpu_source=cpu_source,
            gpu_util_mean=sum(utils) / len(utils) if utils else None,
            gpu_util_max=max(utils) if utils else None,
            gpu_memory_max_mib=max(memory) if memory else None,
            note="; ".join(self._notes),
        )
