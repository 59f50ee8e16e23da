"""EnergyMeter on this machine's real CPU, and its pure parts with numbers.

This machine has no /sys/class/powercap (no RAPL) and no NVML library, so the real runs here
take the CPU estimate and no GPU reading. The RAPL file path is exercised on a small sysfs-like
tree written under tmp_path (the meter's `rapl_root`); the GPU path is exercised on a lent GPU
machine by bench/gpu_train.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ml.energy import EnergyMeter, EnergyReading
from ml.energy_meters import (
    JOULES_PER_KWH,
    RAPL_ROOT,
    cpu_seconds_between,
    integrate_power,
    rapl_delta_uj,
    visible_gpus,
)


def burn(rounds: int) -> None:
    """Single-threaded CPU work whose amount grows with `rounds`."""
    a = np.random.default_rng(0).random(200_000)
    for _ in range(rounds):
        a = np.sqrt(a * a + 1.0) - 0.5


def rounds_for(seconds: float) -> int:
    """How many rounds of `burn` take about `seconds` of CPU time here."""
    start = time.process_time()
    burn(50)
    per_round = max((time.process_time() - start) / 50, 1e-6)
    return max(int(seconds / per_round), 50)


def rapl_readable() -> bool:
    """Whether this machine's RAPL package counters can be read (independently of the meter)."""
    domains = [
        d for d in RAPL_ROOT.glob("intel-rapl:*") if d.name.count(":") == 1
    ]  # package domains, not the subdomains intel-rapl:N:M
    try:
        for d in domains:
            int((d / "energy_uj").read_text())
            int((d / "max_energy_range_uj").read_text())
    except (OSError, ValueError):
        return False
    return bool(domains)


def nvml_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True


def test_cpu_burn_is_measured() -> None:
    price = 0.30
    with EnergyMeter(price_per_kwh=price) as meter:
        burn(rounds_for(1.0))
    reading = meter.reading()

    assert isinstance(reading, EnergyReading)
    assert reading.cpu_kwh is not None and reading.cpu_kwh > 0
    assert reading.seconds > 0.5
    # On this machine RAPL is absent (no /sys/class/powercap), so this is "estimate"; where
    # RAPL is readable it must be "rapl".
    assert reading.cpu_source == ("rapl" if rapl_readable() else "estimate")
    assert reading.total_kwh == pytest.approx((reading.gpu_kwh or 0.0) + reading.cpu_kwh)
    assert reading.cost == pytest.approx(reading.total_kwh * price)

    metrics = reading.as_metrics()
    for name in ("energy_kwh", "energy_cost", "energy_cpu_kwh", "energy_seconds"):
        assert name in metrics
    assert all(type(value) is float for value in metrics.values())
    assert metrics["energy_kwh"] == reading.total_kwh

    tags = reading.as_tags()
    assert set(tags) == {"energy_cpu_source", "energy_gpu_source", "energy_note"}
    assert all(isinstance(value, str) for value in tags.values())
    assert tags["energy_cpu_source"] == reading.cpu_source
    if reading.cpu_source == "estimate":
        assert "estimate" in tags["energy_note"]
        assert "10 W per core" in tags["energy_note"]
        # about 1 CPU second at 10 W: a few mWh at most, not zero
        assert 0 < reading.cpu_kwh < 10 * 10 / JOULES_PER_KWH


def test_estimate_grows_with_the_work(tmp_path: Path) -> None:
    # An empty rapl_root forces the estimate even where RAPL is readable: RAPL measures the
    # whole socket, and other load on it could make this comparison flake.
    rounds = rounds_for(0.4)
    readings = []
    for work in (rounds, 2 * rounds):
        with EnergyMeter(rapl_root=tmp_path) as meter:
            burn(work)
        readings.append(meter.reading())
    assert [r.cpu_source for r in readings] == ["estimate", "estimate"]
    assert readings[1].cpu_kwh > readings[0].cpu_kwh  # more, not a ratio: CPU time is noisy


def test_watts_per_core_is_used(tmp_path: Path) -> None:
    with EnergyMeter(cpu_watts_per_core=25, rapl_root=tmp_path) as meter:
        burn(rounds_for(0.2))
    reading = meter.reading()
    assert reading.cpu_source == "estimate"
    assert "25 W per core" in reading.as_tags()["energy_note"]


def test_rapl_delta_handles_the_wrap() -> None:
    assert rapl_delta_uj(100, 350, 1000) == 250
    assert rapl_delta_uj(900, 100, 1000) == 200  # wrapped past 1000 back to 0
    assert rapl_delta_uj(500, 500, 1000) == 0
    big = 262_143_328_850  # a real max_energy_range_uj
    assert rapl_delta_uj(big - 5, 7, big) == 12


def test_integrate_power_is_a_trapezoid() -> None:
    assert integrate_power([]) == 0
    assert integrate_power([(0.0, 100.0)]) == 0
    assert integrate_power([(0.0, 100.0), (2.0, 100.0)]) == pytest.approx(200.0)
    assert integrate_power([(0.0, 0.0), (1.0, 100.0)]) == pytest.approx(50.0)
    # uneven steps: 0.5 s at 100→200 W, then 1.5 s at 200→200 W
    assert integrate_power([(10.0, 100.0), (10.5, 200.0), (12.0, 200.0)]) == pytest.approx(
        75.0 + 300.0
    )


def test_visible_gpus_follows_cuda_visible_devices() -> None:
    assert visible_gpus(None, 4) == [0, 1, 2, 3]
    assert visible_gpus("2,0", 4) == [2, 0]
    assert visible_gpus("", 4) == []
    assert visible_gpus("1,7,2", 4) == [1]  # CUDA stops at the first invalid entry
    assert visible_gpus("-1", 4) == []
    assert visible_gpus("GPU-8f2c", 4) == ["GPU-8f2c"]


def write_domain(root: Path, name: str, label: str, energy: int, max_range: int) -> Path:
    domain = root / name
    domain.mkdir(parents=True, exist_ok=True)
    (domain / "name").write_text(label + "\n")
    (domain / "max_energy_range_uj").write_text(f"{max_range}\n")
    set_energy(domain, energy)
    return domain


def set_energy(domain: Path, energy: int) -> None:
    """Replaces the counter in one step, so a concurrent reader never sees a half-written file."""
    tmp = domain / "energy_uj.tmp"
    tmp.write_text(f"{energy}\n")
    os.replace(tmp, domain / "energy_uj")


def test_rapl_tree_with_a_wrap(tmp_path: Path) -> None:
    # A sysfs-like tree, since this machine has no powercap: one package, one of its
    # subdomains and a platform (psys) domain; only the package may count.
    big = 10**9
    package = write_domain(tmp_path, "intel-rapl:0", "package-0", big - 1_000_000, big)
    core = write_domain(tmp_path, "intel-rapl:0:0", "core", 0, big)
    psys = write_domain(tmp_path, "intel-rapl:1", "psys", 0, big)
    with EnergyMeter(rapl_root=tmp_path, sample_interval=60) as meter:
        set_energy(package, 2_600_000)  # wrapped: 1 J before the wrap, 2.6 J after
        set_energy(core, 500_000_000)
        set_energy(psys, 500_000_000)
    reading = meter.reading()
    assert reading.cpu_source == "rapl"
    assert reading.cpu_kwh == pytest.approx(3.6 / JOULES_PER_KWH)
    assert "RAPL" in reading.as_tags()["energy_note"]


def test_rapl_is_sampled_across_several_wraps(tmp_path: Path) -> None:
    # 1150 uJ in all through a counter that wraps at 1000: only counted right if sampled
    # between the wraps.
    package = write_domain(tmp_path, "intel-rapl:0", "package-0", 900, 1000)
    with EnergyMeter(rapl_root=tmp_path, sample_interval=0.01) as meter:
        for energy in (100, 600, 50):  # +200 (wrap), +500, +450 (wrap)
            time.sleep(0.5)
            set_energy(package, energy)
        time.sleep(0.5)
    reading = meter.reading()
    assert reading.cpu_source == "rapl"
    assert reading.cpu_kwh == pytest.approx(1150e-6 / JOULES_PER_KWH)


def test_unreadable_rapl_falls_back_to_the_estimate(tmp_path: Path) -> None:
    # energy_uj as a directory stands for a counter that cannot be read (root-only files
    # cannot be imitated here: the tests may run as root).
    domain = tmp_path / "intel-rapl:0"
    (domain / "energy_uj").mkdir(parents=True)
    (domain / "max_energy_range_uj").write_text("1000\n")
    with EnergyMeter(rapl_root=tmp_path) as meter:
        burn(rounds_for(0.2))
    reading = meter.reading()
    assert reading.cpu_source == "estimate"
    assert reading.cpu_kwh is not None and reading.cpu_kwh > 0
    note = reading.as_tags()["energy_note"]
    assert "estimate" in note and "RAPL not readable" in note


def test_gpu_fields_follow_whether_nvml_answers() -> None:
    """Without NVML (this machine and CI: pynvml is installed, libnvidia-ml is not) the meter
    gives no GPU reading and raises nothing; with it (a GPU machine) it reads every GPU field.
    bench/gpu_train.py exercised the GPU branch on an H200."""
    with EnergyMeter() as meter:
        burn(50)
    reading = meter.reading()
    metrics, tags = reading.as_metrics(), reading.as_tags()
    gpu_keys = {"energy_gpu_kwh", "gpu_util_mean", "gpu_util_max", "gpu_memory_max_mib"}
    if nvml_present():
        assert reading.gpu_source == "nvml" and reading.gpu_kwh is not None
        assert gpu_keys <= set(metrics) and tags["energy_gpu_source"] == "nvml"
        return
    assert reading.gpu_kwh is None and reading.gpu_source is None
    assert reading.gpu_util_mean is None and reading.gpu_util_max is None
    assert reading.gpu_memory_max_mib is None
    assert not gpu_keys & set(metrics)
    assert tags["energy_gpu_source"] == "none"
    assert "no gpu reading" in tags["energy_note"]


def test_reading_waits_for_the_end_and_errors_in_the_block_pass_through() -> None:
    meter = EnergyMeter()
    with pytest.raises(ValueError, match="boom"):
        with meter:
            with pytest.raises(RuntimeError):
                meter.reading()
            raise ValueError("boom")
    assert meter.reading().cpu_source is not None  # measured even though training failed


CHILD_BURN = (
    "import sys, time\n"
    "while time.process_time() < 0.5: pass\n"
    "print('burnt', flush=True)\n"
    "if sys.argv[1] == 'stay': time.sleep(60)\n"
)


@pytest.mark.parametrize("child", ["reaped", "alive"])
def test_estimate_counts_child_processes(tmp_path: Path, child: str) -> None:
    # Like dataloader workers: a child's CPU counts whether it has ended (and been waited for)
    # or is still alive when the block ends.
    stay = child == "alive"
    with EnergyMeter(rapl_root=tmp_path) as meter:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_BURN, "stay" if stay else "go"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline() == "burnt\n"
        if not stay:
            proc.wait(timeout=30)
    proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()
    reading = meter.reading()
    assert reading.cpu_source == "estimate"
    # the child's 0.5 CPU seconds at 10 W, less slack: the kernel counts them in 10 ms ticks
    assert reading.cpu_kwh >= 0.4 * 10 / JOULES_PER_KWH


def test_cpu_seconds_between_counts_only_the_run() -> None:
    server, old_worker, new_worker = (1, 1.0), (2, 1.0), (3, 5.0)  # (pid, create time)
    start = (10.0, {server: 100.0, old_worker: 3.0})
    # own +2 s; the old worker ended and was waited for: its 3 + 1 s moved into own times
    end = (10.0 + 2.0 + 4.0, {server: 150.0, new_worker: 0.5})
    assert cpu_seconds_between(start, end) == pytest.approx(2.0 + 1.0 + 0.5)  # not the server
    assert cpu_seconds_between(start, start) == 0


def test_estimate_leaves_out_a_child_started_before(tmp_path: Path) -> None:
    # Like an MLflow server this process started earlier: its CPU during the run is not training.
    code = "import sys, time\nsys.stdin.readline()\n" + CHILD_BURN
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "stay"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with EnergyMeter(rapl_root=tmp_path) as meter:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "burnt\n"
    finally:
        proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout):
            stream.close()
    reading = meter.reading()
    assert reading.cpu_source == "estimate"
    assert reading.cpu_kwh < 0.3 * 10 / JOULES_PER_KWH  # not the child's 0.5 CPU seconds
