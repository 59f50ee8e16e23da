"""How fast the emoflow service answers camera frames, beside the ultralytics baseline at two sizes.

In one run, on this machine, with the same model, one contender after the other (never at once):

  frames  640x480 JPEG frames of real photographs with one to six faces (scikit-image's LFW faces
          placed on its face-free photos, and grids of its astronaut photo), known face boxes:
            (a)  the service (`emoflow start service`: face detector, then the emotion model on
                 every face of every waiting request in one batch)
            (b)  bench/baseline_app.py (FastAPI + ultralytics `predict` per request) at imgsz 640,
                 the seed's way
            (b') the same baseline at the size the model was trained at (the data-matched size)
  crops   drawn face crops at the model's size, as bench/serving_speed.py measures them: (a),
          (b') and (c) raw ONNX Runtime (serving.model.Detector in a loop, no HTTP)
  memory  resident memory (psutil) of the service's whole process tree (supervisor and all
          workers) and of each worker, right after all its load (the goal's figure) and again
          once its workers have trimmed their heaps (serving/memory.py); of each baseline too
  health  GET /health, one request at a time, while wrk keeps /predict saturated with frames

Load is bench/serving_speed.py's: wrk closed loop (N connections, each sending its next request
when the last is answered), a warm-up run and a measured run per level; a failure is a status
>= 400 or a transport error. The model is the champion of your emoflow home if its MLflow
server answers (`--model auto`), else a small YOLOv8n trained here on drawn faces.

Goals on 2 cores (issue 15): frames (a) >= 5x (b) and >= 2x (b') at the best level of (a) with
p95 <= 200 ms, every face answered; crops (a) >= 4x (b') and >= 80 % of (c); <= 250 MiB resident
per worker; /health p99 <= 50 ms with predict saturated. It prints the figures side by side and
writes bench/results/frames_speed.json.

    .venv/bin/python bench/frames_speed.py [--seconds 8] [--frame-concurrency 1,2,4,8]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import serving_speed as speed

from ml.config import PROJECT_ROOT, Settings
from ml.sample_photos import Box, astronauts, iou, rgb, tiles_on_photo
from serving.memory import IDLE_SECONDS

REST_SECONDS = 2 * IDLE_SECONDS + 1  # after the load, before memory is read again: trimmed

RESULTS = PROJECT_ROOT / "bench" / "results" / "frames_speed.json"
FRAME_SIZE = (640, 480)
FRAMES_VS_BASELINE_640 = 5.0
FRAMES_VS_BASELINE_MATCHED = 2.0
WORKER_RSS_MIB = 250.0
HEALTH_P99_MS = 50.0
FACE_FREE_PHOTOS = (
    "rocket",
    "brick",
    "grass",
    "gravel",
    "coins",
    "page",
    "moon",
    "hubble_deep_field",
)
ASTRONAUT_GRIDS = {1: (1, 1), 2: (2, 1), 4: (2, 2), 6: (3, 2)}  # faces: (columns, rows)
MIN_IOU = 0.4  # a face is answered when a returned box covers it at this IoU

say = speed.say


# ---------------------------------------------------------------- frames of real photos


def frames(per_count: int) -> list[tuple[str, bytes, list[Box]]]:
    """(name, JPEG quality 90, face boxes) of 640x480 frames: for each count of faces 1-6,
    `per_count` frames of LFW faces on a face-free photo, and the astronaut grids."""
    from PIL import Image
    from skimage import data

    free = [rgb(getattr(data, name)()) for name in FACE_FREE_PHOTOS]
    lfw = data.lfw_subset()[:100]  # the first 100 are faces
    scenes = []
    for count in range(1, 7):
        for k in range(per_count):
            start = (count * per_count + k) * 7 % (100 - count)
            seed = 10 * count + k
            scene = tiles_on_photo(
                lfw[start : start + count], [free[seed % len(free)]], (64, 140), seed, *FRAME_SIZE
            )
            scenes.append((f"lfw {count} faces #{k}", *scene))
        if count in ASTRONAUT_GRIDS:
            scenes.append((f"astronaut x{count}", *astronauts(*ASTRONAUT_GRIDS[count])))
    encoded = []
    for name, frame, boxes in scenes:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
        encoded.append((name, buffer.getvalue(), boxes))
    return encoded


def faces_answered(answers: list[list[dict]], truth: list[list[Box]]) -> dict:
    """How many known faces an answer's box covers (IoU >= MIN_IOU, one box a face), and the
    boxes on no face."""
    found = extra = 0
    for faces, boxes in zip(answers, truth, strict=True):
        returned = [face["box"] for face in faces]
        used: set[int] = set()
        for box in boxes:
            free = [i for i in range(len(returned)) if i not in used]
            best = max(free, key=lambda i: iou(returned[i], box), default=None)
            if best is not None and iou(returned[best], box) >= MIN_IOU:
                used.add(best)
        found, extra = found + len(used), extra + len(returned) - len(used)
    return {"faces": sum(map(len, truth)), "answered": found, "boxes_on_no_face": extra}


# ---------------------------------------------------------------- memory and /health


def memory(root: int) -> dict:
    """Resident memory of a server's process tree (`speed.process_tree`), per process and in
    all: RSS (counts shared pages in each process) and PSS (shares them out; sums honestly)."""
    import psutil

    processes = []
    for pid in sorted(speed.process_tree(root)):
        try:
            process = psutil.Process(pid)
            info, command = process.memory_full_info(), " ".join(process.cmdline()).strip()
        except psutil.Error:  # gone meanwhile
            continue
        role = "supervisor" if pid == root else "worker" if "worker" in command else "other"
        processes.append({"pid": pid, "role": role, "command": command[:160],
                          "rss_mib": round(info.rss / 2**20, 1),
                          "pss_mib": round(info.pss / 2**20, 1)})  # fmt: skip
    workers = [p["rss_mib"] for p in processes if p["role"] == "worker"]
    return {
        "processes": processes,
        "total_rss_mib": round(sum(p["rss_mib"] for p in processes), 1),
        "total_pss_mib": round(sum(p["pss_mib"] for p in processes), 1),
        "workers": len(workers),
        "max_worker_rss_mib": max(workers, default=None),
    }


def health_under_load(url: str, bodies: list[Path], concurrency: int, seconds: float) -> dict:
    """GET /health one at a time while wrk keeps `concurrency` /predict requests in flight."""
    load: dict = {}
    thread = threading.Thread(
        target=lambda: load.update(speed.wrk(f"{url}/predict", bodies, concurrency, seconds))
    )
    thread.start()
    time.sleep(1)  # let the load build up
    latencies, failed = [], 0
    with httpx.Client(timeout=30) as client:
        while thread.is_alive() and len(latencies) < 100_000:
            sent = time.perf_counter()
            try:
                ok = client.get(f"{url}/health").status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - sent)
            failed += not ok
            time.sleep(0.02)
    thread.join()
    answered = load["requests"] - load["status"]
    return {
        "predict_concurrency": concurrency,
        "predict_rps": round(answered / (load["duration_us"] / 1e6), 2),
        "predict_p95_ms": round(load["p95_us"] / 1000, 2),
        "health_requests": len(latencies),
        "health_failed": failed,
        **{f"health_{k}": v for k, v in speed.percentiles(latencies).items()},
        "health_max_ms": round(1000 * max(latencies), 2) if latencies else None,
    }


# ---------------------------------------------------------------- the contenders


def levels_of(name: str, url: str, jpegs: list[bytes], args, pid: int, levels: list[int],
              metrics: bool) -> list[dict]:  # fmt: skip
    return [asdict(lv) for lv in speed.run_levels(name, url, jpegs, args, metrics, pid, levels)]


def bench_service(home: Path, model: speed.Model, frame_set: list, crops: list[bytes], args):
    jpegs, truth = [f[1] for f in frame_set], [f[2] for f in frame_set]
    with speed.running_service(home, model) as (settings, pid):
        url = settings.service_url
        answered = faces_answered(speed.preflight(f"{url}/predict", jpegs), truth)
        say(f"(a) frames: {answered['answered']} of {answered['faces']} faces answered")
        frames_result = {**answered, "levels": levels_of(
            "(a) frames", url, jpegs, args, pid, args.frame_concurrency, True)}  # fmt: skip
        crop_faces = sum(map(len, speed.preflight(f"{url}/predict", crops)))
        crops_result = {"faces_in_images": crop_faces, "levels": levels_of(
            "(a) crops ", url, crops, args, pid, args.crop_concurrency, True)}  # fmt: skip
        say(f"(a) /health while {args.health_concurrency} frame requests are in flight ...")
        health = health_under_load(
            url, speed.body_files(home, jpegs), args.health_concurrency, args.seconds
        )
        say(f"  /health p50 {health['health_p50_ms']} p99 {health['health_p99_ms']} max "
            f"{health['health_max_ms']} ms over {health['health_requests']} requests; predict "
            f"{health['predict_rps']} req/s")  # fmt: skip
        used = memory(pid)
        time.sleep(REST_SECONDS)  # the workers' idle trim (serving/memory.py) has run
        rested = memory(pid)
    return frames_result, crops_result, health, used, rested


def bench_baseline(home: Path, model: speed.Model, imgsz: int, workloads: dict, args) -> dict:
    """The baseline at `imgsz` on each workload: {name: (jpegs, truth or None, levels)}."""
    out = {}
    with speed.running_baseline(home, model, imgsz) as (url, pid):
        for name, (jpegs, truth, levels) in workloads.items():
            answers = speed.preflight(f"{url}/predict", jpegs)
            counted = (faces_answered(answers, truth) if truth is not None
                       else {"faces_in_images": sum(map(len, answers))})  # fmt: skip
            label = f"(b) {imgsz} {name}"
            out[name] = {
                **counted,
                "levels": levels_of(label, url, jpegs, args, pid, levels, False),
            }
        out["memory"] = memory(pid)
    return out


# ---------------------------------------------------------------- report


def goals(results: dict) -> dict:
    frames = results["frames"]
    best = speed.best_within_p95(frames["service"]["levels"])
    out: dict = {"frames_service_best_within_p95": best and {
        k: best[k] for k in ("concurrency", "throughput_rps", "p95_ms")}}  # fmt: skip
    for key, factor in (("baseline_640", FRAMES_VS_BASELINE_640),
                        ("baseline_matched", FRAMES_VS_BASELINE_MATCHED)):  # fmt: skip
        top = max(lv["throughput_rps"] for lv in frames[key]["levels"])
        ratio = best["throughput_rps"] / top if best and top else None
        out[f"frames_vs_{key}"] = {
            "goal": f"frames (a) >= {factor:g}x {key} (its best level at any latency), (a) at "
            f"p95 <= {speed.P95_BUDGET_MS:g} ms with 0 failures",
            "baseline_best_rps": top, "ratio": ratio and round(ratio, 2),
            "met": ratio is not None and ratio >= factor,
        }  # fmt: skip
    service = frames["service"]
    out["frames_every_face_answered"] = {
        "goal": f"every known face covered by an answered box (IoU >= {MIN_IOU})",
        "answered": service["answered"], "faces": service["faces"],
        "met": service["answered"] == service["faces"],
    }  # fmt: skip
    out["crops"] = speed.goals(results["crops"])
    worst = results["memory"]["service"]["max_worker_rss_mib"]
    out["worker_rss"] = {"goal": f"<= {WORKER_RSS_MIB:g} MiB resident per worker, right after "
                         "the load", "max_worker_rss_mib": worst,
                         "max_worker_rss_at_rest_mib":
                             results["memory"]["service_at_rest"]["max_worker_rss_mib"],
                         "met": worst is not None and worst <= WORKER_RSS_MIB}  # fmt: skip
    p99 = results["health_under_load"]["health_p99_ms"]
    out["health_p99"] = {"goal": f"/health p99 <= {HEALTH_P99_MS:g} ms with predict saturated",
                         "p99_ms": p99, "met": p99 is not None and p99 <= HEALTH_P99_MS}  # fmt: skip
    return out


def print_side_by_side(title: str, columns: dict[str, list[dict]]) -> None:
    say(f"\n{title}")
    say(f"{'':6} " + " | ".join(f"{name:^41}" for name in columns))
    say(f"{'conc':>6} " + " | ".join(speed.LEVEL_HEAD for _ in columns))
    by_level = {name: {lv["concurrency"]: lv for lv in levels} for name, levels in columns.items()}
    for concurrency in sorted({c for levels in by_level.values() for c in levels}):
        say(
            f"{concurrency:>6} "
            + " | ".join(speed.cell(levels.get(concurrency)) for levels in by_level.values())
        )


def print_report(results: dict) -> None:
    frames, crops = results["frames"], results["crops"]
    print_side_by_side(f"frames ({results['frames_images']['count']} frames 640x480, "
                       f"{frames['service']['faces']} faces)", {
        "(a) emoflow service": frames["service"]["levels"],
        "(b) baseline imgsz 640": frames["baseline_640"]["levels"],
        f"(b') baseline imgsz {results['model']['imgsz']}": frames["baseline_matched"]["levels"],
    })  # fmt: skip
    say("faces answered (IoU >= 0.4) / boxes on no face: " + ", ".join(
        f"{key} {frames[key]['answered']}/{frames[key]['faces']} / {frames[key]['boxes_on_no_face']}"
        for key in ("service", "baseline_640", "baseline_matched")))  # fmt: skip
    print_side_by_side(f"crops ({results['crops_images']['count']} drawn faces)", {
        "(a) emoflow service": crops["service"]["levels"],
        f"(b') baseline imgsz {results['model']['imgsz']}": crops["baseline"]["levels"],
    })  # fmt: skip
    raw = crops["raw_onnx"]
    say(f"(c) raw ONNX Runtime: {raw['throughput_rps']:.1f} calls/s, p50 {raw['p50_ms']} p95 "
        f"{raw['p95_ms']} ms")  # fmt: skip
    say(
        "latencies in ms; cpu/req = CPU ms of the server's processes per answer; fail = "
        "answers >= 400 or transport errors (warm-up included)"
    )
    service = results["memory"]["service"]
    say(
        f"\nmemory of the service after its load: {service['total_rss_mib']} MiB RSS "
        f"({service['total_pss_mib']} MiB PSS) in {len(service['processes'])} processes, "
        f"{service['workers']} workers, largest worker {service['max_worker_rss_mib']} MiB RSS"
    )
    for process in service["processes"]:
        say(f"  {process['role']:>10} {process['rss_mib']:7.1f} MiB RSS {process['pss_mib']:7.1f} "
            f"MiB PSS  {process['command'][:90]}")  # fmt: skip
    rested = results["memory"]["service_at_rest"]
    say(f"  {REST_SECONDS:g} s later, after the workers' idle trim: "
        f"{rested['total_rss_mib']} MiB RSS ({rested['total_pss_mib']} MiB PSS), workers "
        + ", ".join(f"{p['rss_mib']}" for p in rested["processes"] if p["role"] == "worker")
        + " MiB RSS")  # fmt: skip
    for key in ("baseline_640", "baseline_matched"):
        say(f"  {key}: {results['memory'][key]['total_rss_mib']} MiB RSS")
    h = results["health_under_load"]
    say(f"/health under saturated predict (c={h['predict_concurrency']}, {h['predict_rps']} "
        f"req/s): p50 {h['health_p50_ms']} p99 {h['health_p99_ms']} max {h['health_max_ms']} "
        f"ms, {h['health_requests']} requests, {h['health_failed']} failed\n")  # fmt: skip
    g = results["goals"]
    for key in ("frames_vs_baseline_640", "frames_vs_baseline_matched",
                "frames_every_face_answered", "worker_rss", "health_p99"):  # fmt: skip
        goal = g[key]
        shown = {k: v for k, v in goal.items() if k not in ("goal", "met")}
        say(f"goal {goal['goal']}: {shown} -> {'MET' if goal['met'] else 'NOT MET'}")
    for key in ("vs_baseline", "vs_raw_onnx"):
        goal = g["crops"][key]
        value = goal.get("ratio", goal.get("share"))
        say(f"goal crops {goal['goal']}: {value} -> {'MET' if goal['met'] else 'NOT MET'}")
    m = results["machine"]
    say(f"\nmachine: {m['processor']}, nproc {m['nproc']}, {m['system']}; load before "
        f"{results['load_before']}, after {results['load_after']}")  # fmt: skip
    say(f"model: {results['model']['source']}")


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )

    def levels(text: str) -> list[int]:
        values = [int(c) for c in text.split(",") if c.strip()]
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError("positive integers, comma-separated")
        return values

    parser.add_argument("--seconds", type=float, default=8, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up seconds per level")
    parser.add_argument("--frame-concurrency", type=levels, default=[1, 2, 4, 8])
    parser.add_argument("--crop-concurrency", type=levels, default=[1, 8, 32])
    parser.add_argument("--health-concurrency", type=int, default=16,
                        help="frame requests in flight while /health is timed")  # fmt: skip
    parser.add_argument(
        "--frames-per-count",
        type=int,
        default=3,
        help="LFW frames for each count of faces 1-6 (astronaut grids besides)",
    )
    parser.add_argument("--crops", type=int, default=50, help="distinct drawn crops")
    parser.add_argument("--model", choices=("auto", "champion", "train"), default="auto")
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=96, help="image size when training here")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args()
    if args.seconds <= 0 or args.warmup < 0 or min(args.frames_per_count, args.crops) < 1:
        parser.error("--seconds must be > 0, --warmup >= 0, --frames-per-count and --crops >= 1")
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
        raise SystemExit("the load generator is wrk: `apt-get install wrk`")
    home = args.home = Path(tempfile.mkdtemp(prefix="emoflow-bench-frames-"))
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": speed.machine(),
                     "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "load_before": speed.loadavg()}  # fmt: skip
    say(f"machine: {results['machine']['processor']}, {results['machine']['nproc']} CPUs, load "
        f"{results['load_before']}; temporary home {home}")  # fmt: skip
    started = time.monotonic()
    try:
        model = speed.champion_model(user, home / "champion") if args.model != "train" else None
        if model is None and args.model == "champion":
            raise SystemExit("no champion to bench (see above)")
        model = model or speed.train_model(home, args.train_images, args.train_epochs, args.imgsz)
        from serving.model import Detector

        model.imgsz = Detector(model.onnx).imgsz[0]
        results["model"] = {"source": model.source, "imgsz": model.imgsz}
        say(f"model: {model.source}")
        frame_set = frames(args.frames_per_count)
        crops, arrays = speed.bench_images(home / "crops", args.crops)
        results["frames_images"] = {
            "count": len(frame_set), "size": "640x480", "format": "JPEG quality 90",
            "faces_per_frame": [len(f[2]) for f in frame_set],
            "mean_bytes": round(sum(len(f[1]) for f in frame_set) / len(frame_set)),
            "from": "scikit-image: LFW faces (lfw_subset) scaled to 64-140 px on face-free "
            f"photos ({', '.join(FACE_FREE_PHOTOS)}), and astronaut grids of 1, 2, 4 and 6",
        }  # fmt: skip
        results["crops_images"] = {"count": len(crops), "size": f"{model.imgsz}x{model.imgsz}",
                                   "from": "ml.sample_data.generate(seed=12345), drawn faces"}  # fmt: skip
        jpegs, truth = [f[1] for f in frame_set], [f[2] for f in frame_set]
        frames_a, crops_a, health, used, rested = bench_service(home, model, frame_set, crops, args)
        at_640 = bench_baseline(
            home, model, 640, {"frames": (jpegs, truth, args.frame_concurrency)}, args
        )
        matched = bench_baseline(home, model, model.imgsz, {
            "frames": (jpegs, truth, args.frame_concurrency),
            "crops": (crops, None, args.crop_concurrency)}, args)  # fmt: skip
        raw = speed.bench_raw(model, arrays, args)
    except KeyboardInterrupt:
        say("interrupted; servers stopped")
        raise SystemExit(130) from None
    finally:
        shutil.rmtree(home, ignore_errors=True)
    results["frames"] = {"service": frames_a, "baseline_640": at_640["frames"],
                         "baseline_matched": matched["frames"]}  # fmt: skip
    results["crops"] = {"service": crops_a, "baseline": matched["crops"], "raw_onnx": raw}
    results["memory"] = {"service": used, "service_at_rest": rested,
                         "baseline_640": at_640["memory"],
                         "baseline_matched": matched["memory"]}  # fmt: skip
    results["health_under_load"] = health
    results["load_after"] = speed.loadavg()
    results["seconds"] = round(time.monotonic() - started)
    results["notes"] = [
        "wrk, the servers and (c) share this machine's CPUs; contenders ran one after the other",
        "(a) is the service as `emoflow start service` runs it (one worker a core, prediction "
        "log on, its own MLflow server); (b)/(b') serve one request at a time, torch on every core",
        "RSS counts pages shared between processes in each of them; PSS shares them out",
    ]
    results["goals"] = goals(results)
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(args.out)
    say(f"written: {args.out} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
