"""How soon live drift raises its alarm, and how often it raises it for nothing.

One run: a champion is trained through emoflow's own steps on drawn sample faces (registered
and promoted in a real MLflow), the real Bento service serves it, and windows of drawn faces are
sent to it over HTTP. After each window the monitor's check (`check_live_drift`) runs on the
newest window of the prediction log twice, side by side: on image statistics alone, and with
the champion's face embeddings. Shifts (the generator's knobs, and one that image statistics
cannot see: the same luma, other colours):

    brightness -0.25   darker faces
    face_scale 0.7     smaller faces
    other colours      Cb and Cr swapped: same brightness, contrast, sharpness and face size

For each shift, `--trials` independent streams: the number of windows until the first alarm
(at most `--max-windows`; a stream that never alarms counts as max + 1). On an unshifted
stream, the false-alarm rate over `--null-windows` windows.

Both arms compare answers with answers: the reference side is the champion's own answers for
its training images (`emoflow.steps.champion_answers`, as the monitor step does); the
statistics arm leaves the embeddings out.

Then one turn of the loop, by hand (`--loop-turn-images`, 0 leaves it out): the champion's
emotion accuracy on held-out faces both darker and smaller, a labelled batch of such faces
recorded as r2, a model trained on r1 + r2 with the same params and served, and its accuracy
on the same faces (and on unshifted ones, for what it kept). The e2e loop test runs the same
turn under Airflow, with models too small to say anything about accuracy.

Writes bench/results/drift_alarms.json.

    .venv/bin/python bench/drift_alarms.py [--trials 10 --null-windows 40 --window 60]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from machine import cpu_model
from PIL import Image

from emoflow import services
from emoflow.steps import champion_answers
from ml import data_batches, data_registry, registry
from ml.config import EMOTIONS, PROJECT_ROOT, Settings
from ml.params import DriftParams, TrainParams
from ml.sample_data import Shift, draw_face, generate
from ml.train import train
from monitoring.drift import check_live_drift
from monitoring.prediction_table import read_predictions

RESULTS = PROJECT_ROOT / "bench" / "results" / "drift_alarms.json"
GOAL_FALSE_ALARMS = 0.05


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def other_colours(image: Image.Image) -> Image.Image:
    luma, cb, cr = image.convert("YCbCr").split()
    return Image.merge("YCbCr", (luma, cr, cb)).convert("RGB")


SHIFTS = {
    "none": (Shift(), None),
    "brightness -0.25": (Shift(brightness=-0.25), None),
    "face_scale 0.7": (Shift(face_scale=0.7), None),
    "other colours (same luma)": (Shift(), other_colours),
}


LOOP_SHIFT = Shift(brightness=-0.25, face_scale=0.7)
"""The shift of the loop turn: darker and smaller faces at once."""


def drawn(knobs: Shift, change, seed: tuple[int, ...], size: int) -> list[tuple[bytes, str]]:
    """`size` drawn faces as PNG bytes, each with its true emotion."""
    faces = []
    for i in range(size):
        rng = np.random.default_rng([*seed, i])
        emotion = int(rng.integers(len(EMOTIONS)))
        image, _ = draw_face(rng, emotion, knobs)
        image = change(image) if change else image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        faces.append((buffer.getvalue(), EMOTIONS[emotion]))
    return faces


def window(shift: str, seed: tuple[int, ...], size: int) -> list[tuple[bytes, str]]:
    return drawn(*SHIFTS[shift], seed, size)


def send(url: str, faces: list[tuple[bytes, str]]) -> float:
    """Send each face to the service; the share it answers with the true emotion."""
    right = 0
    with httpx.Client(timeout=30) as client:
        for data, emotion in faces:
            response = client.post(f"{url}/predict", files={"image": ("face.png", data)})
            right += response.raise_for_status().json()["emotion"] == emotion
    return right / len(faces)


def loop_turn(settings: Settings, params: TrainParams, images: int, root: Path) -> dict:
    """One turn of the loop by hand, on the champion the service serves: its accuracy on
    held-out shifted faces (`LOOP_SHIFT`) and unshifted ones; a labelled batch of `images`
    shifted faces (the generator's truth is the labeller) recorded as r2; a model trained on
    r1 + r2 with the same params, promoted and served; the same two accuracies again."""
    streams = {"shifted": drawn(LOOP_SHIFT, None, (555,), 200),
               "unshifted": drawn(Shift(), None, (556,), 200)}  # fmt: skip
    before = {name: send(settings.service_url, faces) for name, faces in streams.items()}
    batch = root / "r2"
    generate(batch, train=images, valid=images // 6, test=images // 6, seed=77,
             shift=LOOP_SHIFT, prefix="x")  # fmt: skip
    data_batches.add_batch(settings, batch, "shifted faces, labelled")
    dataset = data_registry.pull(settings)
    started = time.monotonic()
    trained = train(params, dataset, settings.runs_dir, settings, {"git_commit": "bench"})
    model = registry.register(trained, dataset, {"git_commit": "bench"}, settings)
    registry.promote(settings, model.version, "bench: one turn of the loop")
    train_s = time.monotonic() - started
    services.stop(settings, "service")  # the next start serves the new champion
    services.start(services.bento_service(settings), settings, timeout=300)
    after = {name: send(settings.service_url, faces) for name, faces in streams.items()}
    return {
        "shift": LOOP_SHIFT.model_dump(exclude_defaults=True),
        "labelled_images": {"train": images, "valid": images // 6, "test": images // 6},
        "stream_faces": len(streams["shifted"]),
        "accuracy_before": before,
        "accuracy_after": after,
        "challenger": {"revision": dataset.revision, "train_s": round(train_s, 1),
                       "val_map50": trained.metrics.get("map50")},
    }  # fmt: skip


def newest(settings: Settings, size: int, seen: int):
    """The newest `size` predictions once the log holds `seen` of them in all."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = read_predictions(settings.prediction_log)
        if len(rows) >= seen:
            return rows.tail(size).reset_index(drop=True)
        time.sleep(0.3)
    raise RuntimeError(f"the prediction log holds fewer than {seen} rows after 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("trials", 10), ("null_windows", 40), ("window", 60),
                          ("max_windows", 3), ("train", 600), ("epochs", 8),
                          ("loop_turn_images", 300)):  # fmt: skip
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="emoflow-alarms-"))
    settings = Settings(
        _env_file=None, home=root / "home", mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",
        serve_port=free_port(), serve_workers=1, serve_poll_seconds=0, model_name="alarms",
    )  # fmt: skip
    params = DriftParams(max_rows=args.window, min_live_rows=args.window)
    generate(root / "r1", train=args.train, valid=args.train // 6, test=args.train // 6, seed=0)
    data_batches.add_batch(settings, root / "r1", "drawn faces")
    reference = data_registry.pull(settings, "r1")
    services.start(services.mlflow_server(settings), settings, timeout=240)
    results: dict = {}
    try:
        started = time.monotonic()
        train_params = TrainParams(epochs=args.epochs, imgsz=96, patience=args.epochs)
        trained = train(
            train_params, reference, settings.runs_dir, settings, {"git_commit": "bench"}
        )
        model = registry.register(trained, reference, {"git_commit": "bench"}, settings)
        registry.promote(settings, model.version, "bench")
        train_s = time.monotonic() - started
        answer = champion_answers(settings, model, root / "champion")
        cache: dict = {}

        def answered(paths):  # the reference side is the same every window
            key = tuple(paths)
            cache.setdefault(key, answer(paths))
            return cache[key]

        arms = {
            "statistics": lambda paths: answered(paths).assign(embedding=None),
            "embeddings": answered,
        }

        services.start(services.bento_service(settings), settings, timeout=300)
        sent = 0

        def check(shift: str, seed: tuple[int, ...]) -> dict[str, bool]:
            nonlocal sent
            send(settings.service_url, window(shift, seed, args.window))
            sent += args.window
            rows = newest(settings, args.window, sent)
            verdicts = {}
            for arm, answers in arms.items():
                result = check_live_drift(
                    reference, rows, params, root / "reports", 1, answers=answers
                )
                verdicts[arm] = result.drifted
            return verdicts

        null = [check("none", (999, w)) for w in range(args.null_windows)]
        results["none"] = {
            arm: {"false_alarm_rate": sum(v[arm] for v in null) / len(null),
                  "windows": len(null)}
            for arm in ("statistics", "embeddings")
        }  # fmt: skip
        for shift in list(SHIFTS)[1:]:
            until = {"statistics": [], "embeddings": []}
            for trial in range(args.trials):
                first = {}
                for w in range(1, args.max_windows + 1):
                    for arm, drifted in check(shift, (trial, w)).items():
                        if drifted and arm not in first:
                            first[arm] = w
                    if len(first) == 2:
                        break
                for arm in until:
                    until[arm].append(first.get(arm, args.max_windows + 1))
            results[shift] = {
                arm: {"median_windows_to_alarm": statistics.median(found), "per_trial": found}
                for arm, found in until.items()
            }
            print(shift, json.dumps(results[shift]), flush=True)
        if args.loop_turn_images:
            results["loop_turn"] = loop_turn(settings, train_params, args.loop_turn_images, root)
            print("loop turn", json.dumps(results["loop_turn"]), flush=True)
    finally:
        services.stop(settings, "service")
        services.stop(settings, "mlflow")
    out = {
        "what": "windows of drawn faces sent to the real service until the live-drift alarm",
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "date": datetime.now(UTC).date().isoformat(),
        "champion": {"train_images": args.train, "epochs": args.epochs, "imgsz": 96,
                     "train_s": round(train_s, 1), "val_map50": trained.metrics.get("map50")},
        "window": args.window, "trials": args.trials, "max_windows": args.max_windows,
        "params": params.model_dump(include={"share_threshold", "embedding_threshold",
                                             "embedding_components"}),
        "goal": f"false-alarm rate <= {GOAL_FALSE_ALARMS:.0%} on the unshifted stream",
        "results": results,
    }  # fmt: skip
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
