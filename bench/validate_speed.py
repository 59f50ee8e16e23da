"""How fast ml.validate checks an AffectNet-size dataset, beside plain decoding of its images.

It writes a dataset in the AffectNet YOLO layout into a temporary folder (25,000 96x96 PNG
face crops by default, split 17,000 / 5,400 / 2,600 like the public set; each a drawn sample
face with a unique pixel stamp, so there are no duplicates; one box per image), then, in one
run and on the same files:

  baseline        one loop that opens and fully decodes every image with Pillow, nothing else
  validate (w=N)  ml.validate.validate end to end with N decode processes: listing, label
                  parsing, decoding + hashing, the tables, the GX checkpoint and Data Docs

Generation is not timed. Each row also gives the CPU seconds spent (process + decode workers):
on a shared machine the wall time says more about the neighbours. Great Expectations is imported (and timed) once before the runs, as
a long-lived worker would have it; each validate run gets a fresh GX folder. The baseline runs
first and last (the machine may be shared: compare the two). It prints images/s for each and
the ratio to the baseline, the machine, and writes bench/results/validate_speed.json.

    .venv/bin/python bench/validate_speed.py [--images 25000] [--workers 1,2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

from machine import cpu_model

from ml.config import PROJECT_ROOT
from ml.params import ValidateParams
from ml.records import DatasetRef

RESULTS = PROJECT_ROOT / "bench" / "results" / "validate_speed.json"
SHARES = {"train": 0.68, "valid": 0.216, "test": 0.104}  # AffectNet YOLO: 17.1k / 5.4k / 2.6k
POOL = 256  # distinct drawn faces; every file gets its own stamp on top of one of them


def machine() -> dict:
    model = cpu_model()
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": model,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the decode pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def write_dataset(root: Path, images: int) -> dict[str, int]:
    """The YOLO layout with `images` unique 96x96 PNGs (drawn faces) and one label each."""
    import numpy as np
    from PIL import Image

    from ml.sample_data import draw_face

    counts = {split: int(images * share) for split, share in SHARES.items()}
    counts["train"] += images - sum(counts.values())
    faces = []
    for k in range(POOL):
        image, box = draw_face(np.random.default_rng([7, k]), k % 8)
        faces.append((np.asarray(image), k % 8, box))
    n = 0
    for split, count in counts.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(count):
            pixels, emotion, (cx, cy, w, h) = faces[n % POOL]
            pixels = pixels.copy()
            pixels[0, 0] = (n >> 16 & 255, n >> 8 & 255, n & 255)  # unique bytes per file
            stem = f"{split}_{i:06d}"
            Image.fromarray(pixels).save(root / split / "images" / f"{stem}.png")
            (root / split / "labels" / f"{stem}.txt").write_text(
                f"{emotion} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n"
            )
            n += 1
    return counts


def decode_all(paths: list[str]) -> float:
    """The baseline: open and fully decode every image, one loop, nothing else."""
    from PIL import Image

    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.load()
    return time.perf_counter() - started


class _Phases(logging.Handler):
    """Keeps the scan and GX seconds that ml.validate logs with its summary line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.phases: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("validated ") and isinstance(record.args, tuple):
            self.phases = {"scan_s": record.args[5], "gx_s": record.args[6]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=25_000)
    parser.add_argument("--workers", default="1,2", help="decode processes to try, e.g. 1,2")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each validate setting")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    load_before = load()

    from ml.validate import validate
    from ml.validate.checkpoint import _gx

    tmp = Path(tempfile.mkdtemp(prefix="emoflow-validate-bench-"))
    try:
        print(f"writing {args.images} images into {tmp} (not timed) ...", flush=True)
        started = time.perf_counter()
        counts = write_dataset(tmp / "data", args.images)
        generated = time.perf_counter() - started
        paths = sorted(str(p) for p in (tmp / "data").glob("*/images/*.png"))
        size = sum(os.path.getsize(p) for p in paths)
        print(f"  {generated:.1f}s, {size / len(paths) / 1024:.1f} KiB per image", flush=True)

        started = time.perf_counter()
        _gx()
        import great_expectations.checkpoint  # noqa: F401 - what the first run would import
        import great_expectations.expectations  # noqa: F401

        gx_import = time.perf_counter() - started

        handler = _Phases()
        logger = logging.getLogger("ml.validate")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        dataset = DatasetRef(revision="bench", commit="0" * 40, digest="0" * 32, path=tmp / "data")
        params = ValidateParams()
        runs: list[dict] = []

        def baseline() -> None:
            cpu = cpu_seconds()
            seconds = decode_all(paths)
            runs.append({"name": "baseline: Pillow open + load, one loop", "workers": 1,
                         "seconds": round(seconds, 2), "cpu_s": round(cpu_seconds() - cpu, 2),
                         "load_after": load()})  # fmt: skip
            print(f"  {runs[-1]['name']}: {seconds:.1f}s", flush=True)

        baseline()
        for _ in range(args.repeat):
            for n in workers:
                gx_dir = Path(tempfile.mkdtemp(prefix="gx-", dir=tmp))
                cpu, started = cpu_seconds(), time.perf_counter()
                result = validate(dataset, params, gx_dir, workers=n)
                seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
                if not result.ok or result.warnings:
                    raise SystemExit(f"the bench data should pass cleanly: {result}")
                runs.append({"name": f"validate (workers={n})", "workers": n,
                             "seconds": round(seconds, 2), "cpu_s": round(cpu, 2),
                             **{k: round(v, 2) for k, v in handler.phases.items()},
                             "load_after": load()})  # fmt: skip
                print(f"  {runs[-1]['name']}: {seconds:.1f}s {handler.phases}", flush=True)
                shutil.rmtree(gx_dir, ignore_errors=True)
        baseline()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = min(r["seconds"] for r in runs if r["name"].startswith("baseline"))
    for r in runs:
        r["images_per_s"] = round(len(paths) / r["seconds"], 1)
        r["vs_baseline"] = round(r["seconds"] / base, 2)
    report = {
        "what": "ml.validate.validate end to end vs a plain Pillow decode of every image",
        "images": len(paths),
        "splits": counts,
        "image": "96x96 RGB PNG (drawn face + unique stamp), one YOLO box each",
        "mean_file_kib": round(size / len(paths) / 1024, 1),
        "gx_import_s": round(gx_import, 2),
        "target": "validate under 60 s for 25k images on 2 cores",
        "runs": runs,
        "machine": machine(),
        "load_before": load_before,
        "note": "load averages are of the whole machine (shared with other work); cpu_s is "
        "this process's CPU time plus its decode workers': on an idle machine the wall time "
        "approaches it (with workers=2, the decode part of it is split over two cores)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    print(f"\nmachine: {report['machine']}; load average before: {load_before}")
    print(f"GX import (once per process, not in the rows): {gx_import:.1f}s\n")
    print(f"{'run':40} {'seconds':>8} {'CPU s':>6} {'images/s':>9} {'x baseline':>10}")
    for r in runs:
        print(f"{r['name']:40} {r['seconds']:8.1f} {r['cpu_s']:6.1f} {r['images_per_s']:9.0f} "
              f"{r['vs_baseline']:10.2f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    tmp_out.replace(args.out)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
