"""How fast the emoflow service answers, beside a per-request ultralytics baseline and raw ONNX.

In one run, on this machine, with the same model and the same images, one after the other:

  (a) service   the real BentoML service (`emoflow.bento:EmotionService`, started as
                `emoflow start service` starts it), POST /predict, multipart field `image`
  (b) baseline  bench/baseline_app.py: FastAPI + uvicorn (one worker), ultralytics
                `model.predict(PIL image)` on the .pt weights per request, as a public course
                project served this task (4 requests/s at p95 200 ms on one vCPU)
  (c) raw ONNX  serving.model.Detector.predict in a loop on pre-decoded RGB arrays, no HTTP:
                letterbox + session.run + decode (NMS, boxes back to the image); no JPEG decode;
                ONNX Runtime's default session options (one thread a core, spinning between
                calls: the fastest for a loop that does nothing else)

(a) and (b) get closed-loop load from wrk (Debian's `wrk`, one thread, bench/closed_loop.lua):
N connections, each sending the next request as soon as the previous one is answered, for a
warm-up run and then a measured run per level. wrk is C and uses a few percent of a core, so
the servers get almost all of the machine. Only answers completed inside the measured run count;
a request fails on a status >= 400 or any transport error, warm-up included. wrk leaves the
requests in flight when a run ends: the service counts those as 499 (client closed request),
which the bench does not count as failures.

Model: the champion of your emoflow home if its MLflow server answers (`--model auto`, the
default, or `champion`), else a small YOLOv8n trained here on drawn sample faces (`train`).
The bench runs its own MLflow server and service in a temporary home on free ports, registers
the model there, and stops everything at the end (also on an error or Ctrl-C).

Goals on 2 cores: (a) >= 4x the throughput of (b) at p95 <= 200 ms, and (a) >= 80 % of (c).
It prints a table, the ratios, the goals and the machine, and writes
bench/results/serving_speed.json.

    .venv/bin/python bench/serving_speed.py [--seconds 15] [--concurrency 1,4,16,32] [--images 50]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np
from machine import cpu_model

from emoflow import services
from ml import registry, yolo
from ml.config import PROJECT_ROOT, Settings
from ml.records import DatasetRef, TrainResult

RESULTS = PROJECT_ROOT / "bench" / "results" / "serving_speed.json"
P95_BUDGET_MS = 200.0
BASELINE_FACTOR = 4.0
RAW_SHARE = 0.8
BOUNDARY = "emoflow-bench-boundary"
WRK = shutil.which("wrk") or "wrk"
WRK_SCRIPT = PROJECT_ROOT / "bench" / "closed_loop.lua"
WRK_ERRORS = ("connect", "read", "write", "status", "timeout")  # status: an answer >= 400
# ultralytics sets OMP_NUM_THREADS=1 in os.environ on import, and the bench quiets its training
# with YOLO_VERBOSE: the servers must not inherit either.
_INHERITED = {key: os.environ.get(key) for key in ("OMP_NUM_THREADS", "YOLO_VERBOSE")}


# ---------------------------------------------------------------- machine and helpers


def machine() -> dict:
    model = cpu_model()
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    except (OSError, ValueError):
        nproc = None
    versions = {}
    for package in ("onnxruntime", "torch", "ultralytics", "bentoml", "fastapi", "uvicorn",
                    "httpx", "numpy", "opencv-python", "pillow"):  # fmt: skip
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    wrk = subprocess.run([WRK, "--version"], capture_output=True, text=True)
    versions["wrk"] = (wrk.stdout or wrk.stderr).split(" [")[0].removeprefix("wrk ").strip()
    return {
        "processor": model,
        "cpu_count": os.cpu_count(),
        "nproc": nproc,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **versions,
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(env: dict[str, str]) -> dict[str, str]:
    """`env` without what importing ultralytics here put into os.environ."""
    env = dict(env)
    for key, value in _INHERITED.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def restore_env() -> None:
    for key, value in _INHERITED.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- model and images


@dataclass
class Model:
    source: str  # what it is, for the output
    weights: Path  # .pt, for the baseline
    onnx: Path  # for the service and raw ONNX
    imgsz: int = 0


def champion_model(user: Settings, dst: Path) -> Model | None:
    """The user's champion (its .pt and ONNX), if the user's MLflow server answers and has one."""
    try:
        httpx.get(f"{user.mlflow_tracking_uri}/health", timeout=3).raise_for_status()
    except httpx.HTTPError:
        say(f"model: no MLflow server answers at {user.mlflow_tracking_uri} (the emoflow home "
            f"{user.home}); `emoflow start mlflow` to bench its champion")  # fmt: skip
        return None
    ref = registry.version_by_alias(user, registry.CHAMPION)
    if ref is None:
        say(f"model: '{user.model_name}' has no champion at {user.mlflow_tracking_uri}")
        return None
    onnx = registry.download_onnx(user, ref, dst / "onnx")
    weights = registry.download_weights(user, ref, dst / "weights")
    source = f"champion: {ref.name} version {ref.version} from {user.mlflow_tracking_uri}"
    return Model(source, weights, onnx)


def train_model(home: Path, images: int, epochs: int, imgsz: int) -> Model:
    """A YOLOv8n trained briefly on drawn sample faces, and its ONNX export."""
    from ml.sample_data import generate

    valid = test = max(8, images // 10)
    data = home / "train-data"
    say(f"model: training YOLOv8n on {images - 2 * valid}/{valid}/{test} drawn sample images, "
        f"imgsz {imgsz}, {epochs} epochs (CPU) ...")  # fmt: skip
    generate(data, train=images - 2 * valid, valid=valid, test=test, seed=0)
    config_dir = home / "ultralytics"
    os.environ.setdefault("YOLO_VERBOSE", "False")  # no progress bars (set before the import)
    ultralytics = yolo.load(config_dir)
    started = time.monotonic()
    model = ultralytics.YOLO("yolov8n.yaml")
    model.train(data=str(data / "data.yaml"), imgsz=imgsz, epochs=epochs, batch=32,
                patience=epochs, seed=0, deterministic=True, device="cpu", workers=0,
                amp=False, plots=False, project=str(home / "train"), name="bench",
                exist_ok=True, verbose=False)  # fmt: skip
    weights = Path(model.trainer.best)
    map50 = float(model.trainer.metrics.get("metrics/mAP50(B)", float("nan")))
    onnx = yolo.export_onnx(weights, imgsz, config_dir)
    restore_env()
    source = (f"trained here: YOLOv8n, {images} drawn sample images, {epochs} epochs, imgsz "
              f"{imgsz}, val mAP50 {map50:.3f} ({time.monotonic() - started:.0f} s)")  # fmt: skip
    return Model(source, weights, onnx)


def bench_images(folder: Path, count: int) -> tuple[list[bytes], list[np.ndarray]]:
    """`count` drawn sample images (not the training ones), JPEG-encoded once, and their pixels
    decoded as the service decodes them (Pillow, EXIF orientation, RGB)."""
    from PIL import Image, ImageOps

    from ml.sample_data import generate

    generate(folder, train=0, valid=0, test=count, seed=12345, prefix="bench")
    jpegs, arrays = [], []
    for path in sorted((folder / "test" / "images").iterdir()):
        with Image.open(path) as image:
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="JPEG", quality=90)
            jpegs.append(buf.getvalue())
        with Image.open(io.BytesIO(jpegs[-1])) as image:
            arrays.append(np.asarray(ImageOps.exif_transpose(image).convert("RGB")))
    return jpegs, arrays


def multipart(jpeg: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="face.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()


# ---------------------------------------------------------------- load


@dataclass
class Level:
    concurrency: int
    requests: int  # answered 200 inside the measured window
    seconds: float
    throughput_rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    failed: int  # whole level, warm-up included (client side)
    errors: dict[str, int] = field(default_factory=dict)
    service_failed: int | None = None  # the service's own count of /predict answers not 200/499
    log_dropped: int | None = None  # predictions the service's prediction log dropped
    client_cpu_pct: float = 0.0  # CPU of wrk (the load generator), % of one core
    answered: int = 0  # 200 answers in the whole level, warm-up and tail included
    server_cpu_ms_per_request: float | None = None  # CPU of the server's processes / answered
    load_after: list[float] = field(default_factory=list)


def percentiles(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    ms = np.asarray(latencies_s) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2),
            "p99_ms": round(float(p99), 2), "mean_ms": round(float(ms.mean()), 2)}  # fmt: skip


def wrk(url: str, body_files: list[Path], concurrency: int, seconds: float) -> dict:
    """One closed-loop wrk run (one wrk thread, `concurrency` connections): its JSON summary
    (bench/closed_loop.lua) plus the CPU seconds wrk used."""
    command = [WRK, "-t1", f"-c{concurrency}", f"-d{max(round(seconds), 1)}s", "--timeout", "60s",
               "-s", str(WRK_SCRIPT), url, "--", BOUNDARY, *map(str, body_files)]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(command, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({run.returncode}): {run.stderr.strip() or run.stdout}")
    summary = json.loads(lines[-1])
    summary["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return summary


def closed_loop(
    url: str, body_files: list[Path], concurrency: int, warmup: float, seconds: float
) -> Level:
    """A warm-up wrk run, then the measured one; failures count in both."""
    runs = [wrk(url, body_files, concurrency, warmup)] if warmup > 0 else []
    runs.append(measured := wrk(url, body_files, concurrency, seconds))
    errors: Counter[str] = Counter()
    for run in runs:
        errors.update({kind: run[kind] for kind in WRK_ERRORS if run[kind]})
    window = measured["duration_us"] / 1e6
    ok = measured["requests"] - measured["status"]
    latency = {
        key.replace("_us", "_ms"): round(measured[key] / 1000, 2)
        for key in ("p50_us", "p95_us", "p99_us", "mean_us")
    } if ok else percentiles([])  # fmt: skip
    return Level(
        concurrency=concurrency, requests=ok, seconds=round(window, 2),
        throughput_rps=round(ok / window, 2), **latency,
        failed=sum(errors.values()), errors=dict(errors),
        client_cpu_pct=round(100 * measured["cpu_s"] / window, 1),
        answered=sum(run["requests"] - run["status"] for run in runs), load_after=loadavg(),
    )  # fmt: skip


def service_counters(url: str) -> tuple[int, int | None]:
    """From the service's /metrics: /predict answers other than 200 and 499 (a client that
    left) so far, and predictions its prediction log dropped (None if it has no such counter)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    failed, dropped = 0.0, None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "emoflow_requests_total"
                    and sample.labels.get("route") == "/predict"
                    and sample.labels.get("status") not in ("200", "499")):  # fmt: skip
                failed += sample.value
            elif sample.name == "emoflow_prediction_log_dropped_total":
                dropped = (dropped or 0) + sample.value
    return int(failed), None if dropped is None else int(dropped)


def preflight(url: str, jpegs: list[bytes]) -> list[list[dict]]:
    """Each image once, in order (also a warm-up); returns the faces answered for each."""
    answers = []
    with httpx.Client(timeout=60) as client:
        for data in jpegs:
            response = client.post(url, files={"image": ("face.jpg", data, "image/jpeg")})
            if response.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
            answers.append(response.json()["faces"])
    return answers


def process_tree(root: int) -> dict[int, int]:
    """A server's live processes, `root` and its descendants (BentoML's worker runs in a session
    of its own, under circusd): each pid's CPU clock ticks (user + system) so far."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # fields[0]: state (field 3)
        except OSError:  # gone meanwhile
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, grew = {root}, True
    while grew:  # add children of the tree until none is left out
        children = {pid for pid, (ppid, _) in stats.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    return {pid: stats[pid][1] for pid in tree if pid in stats}


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by a server's live processes (`process_tree`)."""
    return sum(process_tree(root).values()) / os.sysconf("SC_CLK_TCK")


def body_files(home: Path, jpegs: list[bytes]) -> list[Path]:
    """Each image as a multipart request body in a file, for wrk."""
    bodies = Path(tempfile.mkdtemp(prefix="bodies-", dir=home))
    files = [bodies / f"{index:04d}.multipart" for index in range(len(jpegs))]
    for path, data in zip(files, jpegs, strict=True):
        path.write_bytes(multipart(data))
    return files


def run_levels(
    name: str,
    base_url: str,
    jpegs: list[bytes],
    args,
    metrics: bool,
    pid: int,
    concurrency_levels: list[int] | None = None,
) -> list[Level]:
    """Closed-loop load on /predict at each level (default `args.concurrency`)."""
    bodies = body_files(args.home, jpegs)
    levels = []
    for concurrency in concurrency_levels or args.concurrency:
        before = service_counters(base_url) if metrics else None
        cpu = tree_cpu_seconds(pid)
        level = closed_loop(f"{base_url}/predict", bodies, concurrency, args.warmup, args.seconds)
        cpu = tree_cpu_seconds(pid) - cpu
        if level.answered:
            level.server_cpu_ms_per_request = round(1000 * cpu / level.answered, 2)
        if before is not None:
            failed, dropped = service_counters(base_url)
            level.service_failed = failed - before[0]
            if dropped is not None:
                level.log_dropped = dropped - (before[1] or 0)
        say(f"  {name} c={concurrency:<3} {level.throughput_rps:8.1f} req/s  p50 {level.p50_ms} "
            f"p95 {level.p95_ms} p99 {level.p99_ms} ms  failed {level.failed}"
            + (f" (service: {level.service_failed}, log dropped: {level.log_dropped})"
               if metrics else "")
            + f"  server CPU {level.server_cpu_ms_per_request} ms/req"
            + f"  client CPU {level.client_cpu_pct:.0f} %")  # fmt: skip
        levels.append(level)
    return levels


# ---------------------------------------------------------------- the three contenders


@contextmanager
def running_service(home: Path, model: Model) -> Iterator[tuple[Settings, int]]:
    """The real service (and its own MLflow server, with `model` registered as champion) until
    the block ends: its settings and the pid of its process tree's root."""
    settings = Settings(
        _env_file=None, home=home / "service-home",
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", serve_port=free_port(),
        mlflow_backend_store_uri=None, mlflow_artifacts_destination=None,
        prediction_log_uri=None, serve_reload_token="",
    )  # fmt: skip
    mlflow = services.mlflow_server(settings)
    mlflow = services.Server(mlflow.name, mlflow.command, mlflow.ready_url, child_env(mlflow.env))
    service = services.bento_service(settings)
    env = child_env(service.env)
    env.update(BENTOML_HOME=str(settings.home / "bentoml"),
               MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri)  # fmt: skip
    service = services.Server(service.name, service.command, service.ready_url, env)
    try:
        say(f"(a) starting MLflow ({settings.mlflow_tracking_uri}) and the service "
            f"({settings.service_url}) in {settings.home} ...")  # fmt: skip
        services.start(mlflow, settings, timeout=240)
        version = register(settings, model)
        try:
            pid = services.start(service, settings, timeout=240)
        except services.ServiceError:
            say(log_tail(services.log_file(settings, "service")))
            raise
        say(f"(a) service ready, serving version {version}")
        yield settings, pid
    finally:
        services.stop(settings, "service")
        services.stop(settings, "mlflow")


def bench_service(home: Path, model: Model, jpegs: list[bytes], args) -> dict:
    with running_service(home, model) as (settings, pid):
        say("(a) one pass over the images ...")
        faces = sum(map(len, preflight(f"{settings.service_url}/predict", jpegs)))
        levels = run_levels("(a) service ", settings.service_url, jpegs, args, True, pid)
    return {"faces_in_images": faces, "levels": [asdict(level) for level in levels],
            "log": str(services.log_file(settings, "service"))}  # fmt: skip


def register(settings: Settings, model: Model) -> int:
    """The model logged in a run of the bench's MLflow, registered and made champion."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)  # the fluent run below logs there
    mlflow.set_experiment("bench-serving")
    with mlflow.start_run() as run:
        mlflow.log_params({"imgsz": model.imgsz, "imgsz_used": model.imgsz})  # as ml.train does
        model_uri = registry.log_model_files(model.weights, model.onnx)
    fields = dict(run_id=run.info.run_id, model_uri=model_uri, weights=model.weights,
                  onnx=model.onnx, metrics={}, device="cpu", seconds=0.0, imgsz=model.imgsz)  # fmt: skip
    train = TrainResult(**{k: v for k, v in fields.items() if k in TrainResult.model_fields})
    dataset = DatasetRef(revision="bench", commit="none", digest="none", path=model.weights.parent)
    ref = registry.register(train, dataset, {"source": "bench/serving_speed.py"}, settings)
    registry.promote(settings, ref.version, reason="bench")
    return ref.version


@contextmanager
def running_baseline(home: Path, model: Model, imgsz: int) -> Iterator[tuple[str, int]]:
    """bench/baseline_app.py on `model`'s .pt at `imgsz` until the block ends: its URL and pid."""
    settings = Settings(_env_file=None, home=home / f"baseline-{imgsz}")  # only pid/log files
    port = free_port()
    env = child_env(os.environ)
    env.update(BENCH_WEIGHTS=str(model.weights), BENCH_IMGSZ=str(imgsz),
               YOLO_CONFIG_DIR=str(home / "ultralytics"))  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "uvicorn", "baseline_app:app",
               "--app-dir", str(PROJECT_ROOT / "bench"), "--workers", "1",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    server = services.Server("baseline", command, f"http://127.0.0.1:{port}/health", env)
    url = f"http://127.0.0.1:{port}"
    try:
        say(f"(b) starting the baseline at imgsz {imgsz} ({url}) ...")
        try:
            pid = services.start(server, settings, timeout=240)
        except services.ServiceError:
            say(log_tail(services.log_file(settings, "baseline")))
            raise
        yield url, pid
    finally:
        services.stop(settings, "baseline")


def bench_baseline(home: Path, model: Model, jpegs: list[bytes], args) -> dict:
    with running_baseline(home, model, model.imgsz) as (url, pid):
        faces = sum(map(len, preflight(f"{url}/predict", jpegs)))
        levels = run_levels("(b) baseline", url, jpegs, args, False, pid)
    return {"faces_in_images": faces, "levels": [asdict(level) for level in levels]}


def bench_raw(model: Model, arrays: list[np.ndarray], args) -> dict:
    import onnxruntime as ort

    from serving.model import Detector

    detector = Detector(model.onnx)
    # ONNX Runtime's default session options, as a plain loop would use them: its pool threads
    # spin between calls, the fastest choice when nothing else needs the cores (the service
    # turns spinning off; see serving.model.Detector).
    detector.session = ort.InferenceSession(
        str(model.onnx), providers=detector.session.get_providers()
    )
    faces = sum(len(detector.predict(image)) for image in arrays)
    say("(c) raw ONNX Runtime loop ...")
    latencies = []
    cpu = time.process_time()
    started = time.perf_counter()
    window_start, window_end = started + args.warmup, started + args.warmup + args.seconds
    index = 0
    while (sent := time.perf_counter()) < window_end:
        detector.predict(arrays[index % len(arrays)])
        index += 1
        if sent >= window_start:
            latencies.append(time.perf_counter() - sent)
    seconds = time.perf_counter() - window_start
    cpu = time.process_time() - cpu
    result = {
        "what": "serving.model.Detector.predict on pre-decoded RGB arrays, one calling thread, "
        "no HTTP: letterbox + to_tensor + session.run + decode (class-aware NMS) + boxes back "
        "to the image; no JPEG decode, no prediction log; ONNX Runtime's default session "
        "options (intra-op threads: one a core, spinning between calls)",
        "providers": detector.session.get_providers(),
        "calls": len(latencies), "seconds": round(seconds, 2),
        "throughput_rps": round(len(latencies) / seconds, 2), **percentiles(latencies),
        "cpu_ms_per_call": round(1000 * cpu / index, 2),
        "faces_in_images": faces, "load_after": loadavg(),
    }  # fmt: skip
    say(f"  (c) raw ONNX     {result['throughput_rps']:8.1f} calls/s  p50 {result['p50_ms']} "
        f"p95 {result['p95_ms']} p99 {result['p99_ms']} ms  CPU {result['cpu_ms_per_call']} "
        "ms/call")  # fmt: skip
    return result


# ---------------------------------------------------------------- report


def best_within_p95(levels: list[dict]) -> dict | None:
    """The level with the most answers a second among those with p95 <= P95_BUDGET_MS and no
    failure (client side or, where counted, the service's own)."""
    within = [lv for lv in levels if lv["p95_ms"] is not None and lv["p95_ms"] <= P95_BUDGET_MS
              and lv["failed"] == 0 and not lv["service_failed"]]  # fmt: skip
    return max(within, key=lambda lv: lv["throughput_rps"], default=None)


def goals(results: dict) -> dict:
    out: dict = {}
    service = results.get("service", {}).get("levels", [])
    best = best_within_p95(service)
    out["service_best_within_p95"] = (
        {"concurrency": best["concurrency"], "throughput_rps": best["throughput_rps"],
         "p95_ms": best["p95_ms"]} if best else None
    )  # fmt: skip
    out["service_failed_total"] = sum(lv["failed"] for lv in service) + sum(
        lv["service_failed"] or 0 for lv in service
    )
    if "baseline" in results:
        baseline = max(lv["throughput_rps"] for lv in results["baseline"]["levels"])
        ratio = best["throughput_rps"] / baseline if best and baseline else None
        out["vs_baseline"] = {
            "goal": f"(a) >= {BASELINE_FACTOR:g}x (b) throughput, (a) at p95 <= "
            f"{P95_BUDGET_MS:g} ms with 0 failures; (b) its best level at any latency",
            "baseline_best_rps": baseline,
            "ratio": round(ratio, 2) if ratio is not None else None,
            "met": ratio is not None and ratio >= BASELINE_FACTOR,
        }
    if "raw_onnx" in results:
        raw = results["raw_onnx"]["throughput_rps"]
        share = best["throughput_rps"] / raw if best and raw else None
        out["vs_raw_onnx"] = {
            "goal": f"(a) >= {RAW_SHARE:.0%} of (c) throughput, (a) at p95 <= "
            f"{P95_BUDGET_MS:g} ms with 0 failures",
            "raw_rps": raw,
            "share": round(share, 3) if share is not None else None,
            "met": share is not None and share >= RAW_SHARE,
        }
    return out


LEVEL_HEAD = f"{'req/s':>7} {'p50':>6} {'p95':>6} {'p99':>6} {'cpu/req':>7} {'fail':>4}"


def cell(level: dict | None) -> str:
    """One level as a table cell under LEVEL_HEAD (41 characters)."""
    if level is None:
        return f"{'-':>41}"
    p = [f"{level[k]:.0f}" if level[k] is not None else "-"
         for k in ("p50_ms", "p95_ms", "p99_ms")]  # fmt: skip
    cpu = level["server_cpu_ms_per_request"]
    cpu = f"{cpu:.1f}" if cpu is not None else "-"
    return (f"{level['throughput_rps']:7.1f} {p[0]:>6} {p[1]:>6} {p[2]:>6} {cpu:>7} "
            f"{level['failed']:>4}")  # fmt: skip


def print_report(results: dict) -> None:
    service = {lv["concurrency"]: lv for lv in results.get("service", {}).get("levels", [])}
    baseline = {lv["concurrency"]: lv for lv in results.get("baseline", {}).get("levels", [])}
    raw = results.get("raw_onnx")
    say("")
    say(f"{'':6} {'(a) emoflow service':^41} | {'(b) baseline (ultralytics/FastAPI)':^41} |")
    head = LEVEL_HEAD
    say(f"{'conc':>6} {head} | {head} | {'a/b':>6} {'a/c':>6} {'svc fail':>8}")
    for concurrency in sorted(set(service) | set(baseline)):
        a, b = service.get(concurrency), baseline.get(concurrency)
        ab = f"{a['throughput_rps'] / b['throughput_rps']:.1f}x" if a and b and b[
            "throughput_rps"] else "-"  # fmt: skip
        ac = f"{a['throughput_rps'] / raw['throughput_rps']:.0%}" if a and raw and raw[
            "throughput_rps"] else "-"  # fmt: skip
        failed = str(a["service_failed"]) if a and a["service_failed"] is not None else "-"
        say(f"{concurrency:>6} {cell(a)} | {cell(b)} | {ab:>6} {ac:>6} {failed:>8}")
    if raw:
        say(f"{'(c)':>6} {raw['throughput_rps']:7.1f} {raw['p50_ms']:6.1f} {raw['p95_ms']:6.1f} "
            f"{raw['p99_ms']:6.1f} {raw['cpu_ms_per_call']:7.1f}    -   raw ONNX Runtime, no "
            "HTTP")  # fmt: skip
    say("latencies in ms; req/s = answers completed in the measured window / its length; "
        "cpu/req = CPU ms the server's processes used per answered request, warm-up included "
        "(for (c): the bench process per call; spin-waiting thread pools count too, more so on "
        "a busy machine); "
        "fail = answers >= 400 or transport errors seen by wrk (warm-up included); svc fail = "
        "the service's own count of /predict answers other than 200 and 499 (its /metrics)")  # fmt: skip
    if raw:
        say(f"(c) = {raw['what']}")
    found = {key: results[key]["faces_in_images"] for key in ("service", "baseline", "raw_onnx")
             if key in results}  # fmt: skip
    say(
        f"faces found in the {results['images']['count']} images (conf 0.25): "
        + ", ".join(f"{key} {count}" for key, count in found.items())
    )
    if found and not any(found.values()):
        say(
            "WARNING: the model finds no face in these images, so decode/NMS does almost no "
            "work: bench a trained champion (`make demo`, then --model champion) for that part"
        )
    dropped = [lv["log_dropped"] for lv in service.values() if lv.get("log_dropped")]
    if dropped:
        say(
            f"WARNING: the service's prediction log dropped {sum(dropped)} predictions (queue "
            "full): the service did less work than it would at a lower rate"
        )
    say("")
    g = results["goals"]
    best = g["service_best_within_p95"]
    say("service, best level with p95 <= 200 ms and 0 failures: "
        + (f"{best['throughput_rps']:.1f} req/s at c={best['concurrency']} "
           f"(p95 {best['p95_ms']:.0f} ms)" if best else "none"))  # fmt: skip
    for key in ("vs_baseline", "vs_raw_onnx"):
        if key in g:
            goal = g[key]
            value = goal.get("ratio", goal.get("share"))
            shown = "not measured" if value is None else (
                f"{value:.2f}x" if key == "vs_baseline" else f"{value:.0%}")  # fmt: skip
            say(f"goal {goal['goal']}: {shown} -> {'MET' if goal['met'] else 'NOT MET'}")
    say(f"service requests failed, all levels: {g['service_failed_total']} (must be 0)")
    m = results["machine"]
    say(f"\nmachine: {m['processor']}, cpu_count {m['cpu_count']}, nproc {m['nproc']}, "
        f"{m['system']}; python {m['python']}, onnxruntime {m['onnxruntime']}, torch "
        f"{m['torch']}, ultralytics {m['ultralytics']}, bentoml {m['bentoml']}")  # fmt: skip
    say(f"load average: before {results['load_before']}, after {results['load_after']}")
    if results["load_before"][0] > 0.5 * (m["nproc"] or m["cpu_count"] or 1):
        say(f"WARNING: the machine was busy before the bench started (load "
            f"{results['load_before'][0]} on {m['nproc']} CPUs): the figures say more about the "
            "neighbours than about the servers, the baseline's torch thread pool most of all "
            "(it spins, and collapses when the cores are oversubscribed); rerun on a quiet "
            "machine")  # fmt: skip
    say(f"model: {results['model']['source']}")
    for note in results["notes"]:
        say(f"note: {note}")


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds per level")
    parser.add_argument(
        "--concurrency", default="1,4,16,32", help="closed-loop connections per level"
    )
    parser.add_argument("--images", type=int, default=50, help="distinct images the clients cycle")
    parser.add_argument("--model", choices=("auto", "champion", "train"), default="auto",
                        help="auto: the champion of your emoflow home if its MLflow server "
                        "answers, else train a small one here")  # fmt: skip
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=96, help="image size when training here")
    parser.add_argument("--only", default="a,b,c", help="which of a,b,c to run (default all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.only = {part.strip() for part in args.only.split(",") if part.strip()}
    if not args.concurrency or min(args.concurrency) < 1 or not args.only <= {"a", "b", "c"}:
        parser.error("--concurrency takes positive integers; --only takes a, b and/or c")
    if args.seconds <= 0 or args.warmup < 0 or args.images < 1:
        parser.error("--seconds must be > 0, --warmup >= 0, --images >= 1")
    return args


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    user = Settings()  # the user's emoflow home: only read, for its champion
    for key in [k for k in os.environ if k.startswith("EMOFLOW_")]:
        os.environ.pop(key)  # the bench's own servers must not see the user's settings
    if shutil.which("wrk") is None:
        raise SystemExit("the load generator is wrk: `apt-get install wrk` (bash scripts/setup.sh "
                         "installs it where apt-get is)")  # fmt: skip
    home = args.home = Path(tempfile.mkdtemp(prefix="emoflow-bench-serving-"))
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
        "args": {k: sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v
                 for k, v in vars(args).items()},
        "load_before": loadavg(),
    }  # fmt: skip
    say(f"machine: {results['machine']['processor']}, {results['machine']['nproc']} CPUs "
        f"(nproc), load {results['load_before']}; temporary home {home}")  # fmt: skip
    try:
        model = None
        if args.model in ("auto", "champion"):
            model = champion_model(user, home / "champion")
            if model is None and args.model == "champion":
                raise SystemExit("no champion to bench (see above)")
        if model is None:
            model = train_model(home, args.train_images, args.train_epochs, args.imgsz)
        from serving.model import Detector

        model.imgsz = Detector(model.onnx).imgsz[0]
        say(f"model: {model.source}")
        jpegs, arrays = bench_images(home / "images", args.images)
        sizes = {f"{a.shape[1]}x{a.shape[0]}" for a in arrays}
        results["model"] = {"source": model.source, "imgsz": model.imgsz}
        results["images"] = {
            "count": len(jpegs), "sizes": sorted(sizes), "format": "JPEG quality 90",
            "mean_bytes": round(sum(map(len, jpegs)) / len(jpegs)),
            "from": "ml.sample_data.generate(test=N, seed=12345): drawn faces, not trained on",
        }  # fmt: skip
        if "a" in args.only:
            results["service_workers"] = os.cpu_count() or 1  # the service's default, one a core
            results["service"] = bench_service(home, model, jpegs, args)
        if "b" in args.only:
            results["baseline"] = bench_baseline(home, model, jpegs, args)
        if "c" in args.only:
            results["raw_onnx"] = bench_raw(model, arrays, args)
    except KeyboardInterrupt:
        say("interrupted; servers stopped")
        raise SystemExit(130) from None
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    results["load_after"] = loadavg()
    results["notes"] = [
        f"load generator (wrk, one thread), servers and (c) all share "
        f"this machine's {results['machine']['nproc']} CPUs; (a), (b) and (c) ran one after the "
        "other, never at once; the client's own CPU use is in client_cpu_pct per level",
        "(a) is the real service as `emoflow start service` runs it: prediction log on, "
        "champion poll every 30 s against its own MLflow server, "
        f"{results.get('service_workers')} BentoML worker processes (EMOFLOW_SERVE_WORKERS; 0 = one "
        "per core) with one inference thread each",
        "(b) serves one request at a time (async handler calling predict), torch on every core "
        "(ultralytics imported through ml.yolo.load)",
        "the machine may be shared with other work: compare load averages",
    ]
    results["goals"] = goals(results)
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(args.out)
    say(f"written: {args.out}")


if __name__ == "__main__":
    main()
