"""What the prediction log's writer spends keeping one answered camera frame: `FaceStore.save`
(JPEG, quality `JPEG_QUALITY`: encode, write, rename) against the same save as PNG (what the
store wrote before), on 640x480 frames of scikit-image's photographs. Prints both, side by
side, and writes bench/results/face_store_save.json.

    .venv/bin/python bench/face_store_save.py [--frames 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
from machine import cpu_model
from skimage import data

from monitoring.face_store import JPEG_QUALITY, FaceStore

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def save_png(folder: Path, image: np.ndarray) -> str:
    """The save as PNG, otherwise as `FaceStore.save` does it."""
    key = uuid.uuid4().hex
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    tmp = folder / f".{key}.tmp"
    tmp.write_bytes(encoded.tobytes())
    os.replace(tmp, folder / f"{key}.png")
    return key


def timed(save, frames: list[np.ndarray]) -> list[float]:
    times = []
    for frame in frames:
        start = time.perf_counter()
        save(frame)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()
    photos = [cv2.resize(getattr(data, name)()[..., :3], (640, 480)) for name in PHOTOS]
    frames = [photos[i % len(photos)] for i in range(args.frames)]
    cv2.setNumThreads(1)  # the writer thread beside the request threads
    with tempfile.TemporaryDirectory() as root:
        store, png = FaceStore(Path(root) / "jpeg"), Path(root) / "png"
        png.mkdir()
        store.save(frames[0])  # warm-up (cv2's encoders, the folders)
        save_png(png, frames[0])
        arms = {"jpeg": timed(store.save, frames), "png": timed(lambda f: save_png(png, f), frames)}
        sizes = {"jpeg": store.folder, "png": png}
        kib = {arm: statistics.mean(p.stat().st_size for p in folder.iterdir()) / 1024
               for arm, folder in sizes.items()}  # fmt: skip
    result = {
        "what": "one 640x480 answered frame kept for labelling: save (encode, write, rename)",
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "date": datetime.now(UTC).date().isoformat(),
        "frames": args.frames, "jpeg_quality": JPEG_QUALITY, "photos": list(PHOTOS),
        **{arm: {"median_ms": round(statistics.median(t), 2),
                 "p95_ms": round(float(np.percentile(t, 95)), 2), "mean_kib": round(kib[arm], 1)}
           for arm, t in arms.items()},
    }  # fmt: skip
    result["png_vs_jpeg"] = round(result["png"]["median_ms"] / result["jpeg"]["median_ms"], 2)
    for arm in arms:
        print(f"{arm:5} median {result[arm]['median_ms']:6.2f} ms, p95 {result[arm]['p95_ms']:6.2f}"
              f" ms, {result[arm]['mean_kib']:6.1f} KiB a frame")  # fmt: skip
    print(f"PNG takes {result['png_vs_jpeg']}x as long")
    out = Path(__file__).parent / "results" / "face_store_save.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
