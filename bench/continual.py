"""Continual training, cycle by cycle: what each way of retraining costs and what it keeps.

Issue 18's measurement. One data registry with revisions r1..rN drawn by the sample generator:
r1 a larger first set, then smaller batches whose faces drift (darker, lower contrast, smaller
each revision); train splits have AffectNet's class skew (contempt and disgust rare), valid and
test splits a uniform class mix, as AffectNet's validation set is balanced. Six arms, each with its own home
and registered model on one MLflow server, train on the same revisions with the same seeds:

    scratch + cumulative (the baseline)   champion + cumulative   champion + replay
    each with `balance: none` and `balance: sample`

Cycle 1 (r1) is a scratch training on r1 in every arm: it is trained once per balance setting
and that one run is registered and promoted as the champion of each arm with the same balance.
From cycle 2 on, each arm trains on the new revision (`ml.train.train`, in-process, no
Airflow; a warm start for `finetune_epochs`) and its model is promoted unconditionally: the
bench measures the arms, not the gate.
Per arm and cycle: the train images listed, epochs run and their product (images seen), the
training step's wall time, test mAP50, top-1 accuracy and macro-F1 of the matched faces and
the rare classes' recall on the new revision's test split, and, against the arm's previous
champion scored on the same images, the largest mAP50 drop and the largest per-class recall
drop on the test images any earlier revision added (its batch's: the cumulative splits would
hide one revision's loss among the others', as the gate's forgetting rule reads them), all
with `ml.scoring.score`. Trainings run cycle by cycle,
every arm in turn, so the machine's load falls on all arms alike. It prints the goals as met
or not met and writes everything, with the machine, to bench/results/continual.json.

    OMP_NUM_THREADS=2 .venv/bin/python bench/continual.py [--smoke] [--out FILE] [sizes]

`--smoke` is a size for a check that the bench runs end to end (minutes, figures meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from machine import cpu_model
from pipeline_time import free_port

from ml.config import PROJECT_ROOT, Settings

RESULTS = PROJECT_ROOT / "bench" / "results" / "continual.json"
RARE = ("contempt", "disgust")
BALANCES = ("none", "sample")
KINDS = (("scratch", "cumulative"), ("champion", "cumulative"), ("champion", "replay"))
BASELINE = ("scratch", "cumulative")
COST_SHARE = 1 / 3  # champion + replay per cycle, as a share of the baseline's, cycle 3 on
MAX_MAP50_DROP = 0.01  # one point of mAP50 on any earlier revision's test split
MAX_RECALL_DROP = 0.05  # any class's recall on any earlier revision's test split


@dataclass(frozen=True)
class Sizes:
    revisions: int = 4
    first_train: int = 800  # r1's train images
    batch_train: int = 240  # train images each later revision adds
    valid: int = 48  # valid images per revision (uniform class mix)
    test: int = 240  # test images per revision (uniform class mix)
    epochs: int = 12  # 800 drawn faces at 64 px: val mAP50 levels off near 0.2 by ~10
    finetune_epochs: int = 6  # a warm start's (train.finetune_epochs)
    imgsz: int = 64
    batch: int = 32
    replay_size: int = 160  # earlier train images a replay run adds to the new ones
    brightness_step: float = -0.06  # the drift per revision after r1
    contrast_step: float = -0.06
    face_scale_step: float = -0.05


SMOKE = Sizes(first_train=48, batch_train=24, valid=16, test=32, epochs=1, finetune_epochs=1,
              replay_size=12)  # fmt: skip


def arm_name(init: str, data: str, balance: str) -> str:
    return f"{init}+{data}+balance-{balance}"


def shift_of(sizes: Sizes, number: int, class_mix: str):
    """The generator's knobs for revision `number` (1 = no drift)."""
    from ml.params import class_weights
    from ml.sample_data import Shift

    steps = number - 1
    return Shift(
        brightness=sizes.brightness_step * steps,
        contrast=1.0 + sizes.contrast_step * steps,
        face_scale=1.0 + sizes.face_scale_step * steps,
        class_weights=class_weights(class_mix),
    )


def draw_batch(out: Path, sizes: Sizes, number: int) -> Path:
    """Revision `number`'s batch: AffectNet-skewed train images, uniform valid and test ones,
    all under the same drift; seed = the revision number, so every arm sees the same images."""
    from ml.sample_data import generate

    train = sizes.first_train if number == 1 else sizes.batch_train
    generate(out, train=train, valid=0, test=0, seed=number, prefix="t",
             shift=shift_of(sizes, number, "affectnet"))  # fmt: skip
    held_out = out.parent / f"{out.name}-held-out"
    generate(held_out, train=0, valid=sizes.valid, test=sizes.test, seed=number, prefix="h",
             shift=shift_of(sizes, number, "uniform"))  # fmt: skip
    for split in ("valid", "test"):
        (out / split / "images").rmdir()
        (out / split / "labels").rmdir()
        (out / split).rmdir()
        (held_out / split).rename(out / split)
    return out


def record_revisions(settings: Settings, work: Path, sizes: Sizes) -> tuple[list, list]:
    """r1..rN in the data registry of `settings`: their DatasetRefs, pulled, and refs to each
    batch's own folder, whose test split is the test images that revision added."""
    from ml import data_batches, data_registry
    from ml.records import DatasetRef

    data_registry.init(settings)
    added = []
    for number in range(1, sizes.revisions + 1):
        batch = draw_batch(work / "batches" / f"r{number}", sizes, number)
        shift = shift_of(sizes, number, "affectnet")
        note = (f"continual bench batch {number}: brightness {shift.brightness:+.2f}, contrast "
                f"{shift.contrast:.2f}, face scale {shift.face_scale:.2f}")  # fmt: skip
        revision = data_batches.add_batch(settings, batch, note)
        print(f"recorded {revision.message}", flush=True)
        added.append(DatasetRef(revision=f"r{number}-added", commit=revision.commit,
                                digest=revision.digest, path=batch))  # fmt: skip
    pulled = [data_registry.pull(settings, f"r{n}") for n in range(1, sizes.revisions + 1)]
    return pulled, added


def train_params(sizes: Sizes, init: str, data: str, balance: str):
    from ml.params import TrainParams

    return TrainParams(
        imgsz=sizes.imgsz, epochs=sizes.epochs, batch=sizes.batch, patience=sizes.epochs,
        seed=0, workers=0, init=init, data=data, balance=balance, replay_size=sizes.replay_size,
        finetune_epochs=sizes.finetune_epochs,
    )  # fmt: skip


@dataclass
class Trained:
    """One training run: its result and what it cost."""

    result: object  # ml.records.TrainResult
    wall_s: float
    listed: int  # train images in its list (repeats counted)
    epochs_run: int
    lineage: dict[str, str]  # its run's lineage tags, for registering it


def run_training(params, dataset, settings: Settings) -> Trained:
    """`ml.train.train` (never reusing an earlier run), timed, with what it listed and ran."""
    from ml import registry, train
    from ml.dataset_format import list_images
    from ml.lineage import lineage_tags
    from ml.params import Params

    lineage = lineage_tags(Params(train=params))
    started = time.monotonic()
    result = train.train(params, dataset, settings.runs_dir, settings, lineage, reuse=False)
    wall = time.monotonic() - started
    logged = registry.client(settings).get_run(result.run_id).data.params
    listed = int(logged.get("train_list_images", 0)) or len(
        list_images(dataset.path / "train" / "images")
    )
    table = (settings.runs_dir / result.run_id / "results.csv").read_text().splitlines()
    return Trained(result=result, wall_s=wall, listed=listed, epochs_run=len(table) - 1,
                   lineage=lineage)  # fmt: skip


class Scores:
    """Each model's EvalResult on each revision's test split, scored once."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, str], object] = {}

    def of(self, trained: Trained, dataset, settings: Settings):
        from ml.scoring import score

        key = (trained.result.run_id, dataset.revision)
        if key not in self._done:
            out = settings.runs_dir / "scores" / f"{key[0]}-{key[1]}"
            self._done[key] = score(trained.result.weights, dataset, trained.result.imgsz,
                                    None, settings, stats_dir=out)  # fmt: skip
        return self._done[key]


def summary(evaluation) -> dict:
    return {
        "map50": round(evaluation.map50, 4),
        "accuracy": None if evaluation.accuracy is None else round(evaluation.accuracy, 4),
        "macro_f1": None if evaluation.macro_f1 is None else round(evaluation.macro_f1, 4),
        "recall": {c: round(evaluation.per_class_recall.get(c, 0.0), 4) for c in RARE},
    }


def forgetting(new: list, old: list) -> dict:
    """The largest mAP50 drop and per-class recall drop (old - new) over earlier splits."""
    map50 = max(((o.map50 - n.map50, n.revision) for n, o in zip(new, old, strict=True)))
    recall = max(
        (o.per_class_recall[c] - n.per_class_recall.get(c, 0.0), c, n.revision)
        for n, o in zip(new, old, strict=True) for c in o.per_class_recall
    )  # fmt: skip
    return {
        "largest_map50_drop": round(map50[0], 4), "largest_map50_drop_on": map50[1],
        "largest_recall_drop": round(recall[0], 4),
        "largest_recall_drop_class": recall[1], "largest_recall_drop_on": recall[2],
    }  # fmt: skip


def cycle_row(number: int, trained: Trained, previous: Trained, revisions: list, added: list,
              scores: Scores, settings: Settings) -> dict:  # fmt: skip
    from ml import registry

    logged = registry.client(settings).get_run(trained.result.run_id).data.params
    new_split = revisions[number - 1]
    row = {
        "cycle": number, "revision": new_split.revision,
        "init_used": logged.get("init_used"), "data_used": logged.get("data_used"),
        "train_images_listed": trained.listed, "epochs_run": trained.epochs_run,
        "images_seen": trained.listed * trained.epochs_run, "train_wall_s": round(trained.wall_s, 1),
        "test": summary(scores.of(trained, new_split, settings)),
    }  # fmt: skip
    if previous is not trained:
        earlier = added[: number - 1]
        row["previous_champion_test"] = summary(scores.of(previous, new_split, settings))
        row |= forgetting([scores.of(trained, r, settings) for r in earlier],
                          [scores.of(previous, r, settings) for r in earlier])  # fmt: skip
    return row


def promote(settings: Settings, trained: Trained, dataset, reason: str) -> None:
    from ml import registry

    ref = registry.register(trained.result, dataset, trained.lineage, settings)
    registry.promote(settings, ref.version, reason)


def goals(arms: dict[str, list[dict]], revisions: int) -> dict:
    """The issue's goals, each with the figures it was judged on."""
    verdicts: dict[str, dict] = {}
    for balance in BALANCES:
        base = arms[arm_name(*BASELINE, balance)]
        replay = arms[arm_name("champion", "replay", balance)]
        late = range(2, revisions)  # rows of cycle 3 on
        wall = [replay[i]["train_wall_s"] / base[i]["train_wall_s"] for i in late]
        seen = [replay[i]["images_seen"] / base[i]["images_seen"] for i in late]
        verdicts[f"cost_balance_{balance}"] = {
            "goal": "champion+replay's training wall time per cycle <= 1/3 of "
            "scratch+cumulative's, cycle 3 on",
            "wall_ratio_per_cycle": [round(r, 3) for r in wall],
            "images_seen_ratio_per_cycle": [round(r, 3) for r in seen],
            "met": all(r <= COST_SHARE for r in wall),
        }
        retained = replay[1:]
        verdicts[f"retention_balance_{balance}"] = {
            "goal": f"champion+replay: no earlier revision loses more than {MAX_MAP50_DROP} mAP50"
            f", no class more than {MAX_RECALL_DROP} recall (vs the previous champion)",
            "largest_map50_drop_per_cycle": [r["largest_map50_drop"] for r in retained],
            "largest_recall_drop_per_cycle": [r["largest_recall_drop"] for r in retained],
            "met": all(r["largest_map50_drop"] <= MAX_MAP50_DROP
                       and r["largest_recall_drop"] <= MAX_RECALL_DROP for r in retained),
        }  # fmt: skip
    for kind in KINDS:
        plain, balanced = (arms[arm_name(*kind, b)][-1]["test"] for b in BALANCES)
        raised = all(balanced["recall"][c] > plain["recall"][c] for c in RARE)
        kept = (balanced["macro_f1"] or 0.0) >= (plain["macro_f1"] or 0.0)
        verdicts[f"balancing_{'+'.join(kind)}"] = {
            "goal": "balance: sample raises contempt's and disgust's recall on the last "
            "revision's test split without lowering its macro-F1",
            "recall_none": plain["recall"],
            "recall_sample": balanced["recall"],
            "macro_f1_none": plain["macro_f1"],
            "macro_f1_sample": balanced["macro_f1"],
            "met": raised and kept,
        }
    return verdicts


def print_table(arms: dict[str, list[dict]]) -> None:
    print(f"\n{'arm':42} cyc  seen    wall s  mAP50  acc    mF1    cont   disg   "
          "maxΔmAP50  maxΔrecall")  # fmt: skip
    for name, rows in arms.items():
        for r in rows:
            t = r["test"]
            drops = (f"{r['largest_map50_drop']:+.3f}     {r['largest_recall_drop']:+.3f} "
                     f"{r['largest_recall_drop_class']}" if "largest_map50_drop" in r
                     else "-")  # fmt: skip
            print(f"{name:42} {r['cycle']:3} {r['images_seen']:6} {r['train_wall_s']:8.1f}  "
                  f"{t['map50']:.3f}  {t['accuracy'] or 0:.3f}  {t['macro_f1'] or 0:.3f}  "
                  f"{t['recall']['contempt']:.3f}  {t['recall']['disgust']:.3f}  {drops}")  # fmt: skip


def markdown_table(result: dict) -> str:
    """The README's table of a run's JSON: one row per arm and cycle."""
    lines = [
        "| arm | cycle | images seen | train s | mAP50 | accuracy | macro-F1 | contempt recall "
        "| disgust recall | largest mAP50 drop | largest recall drop |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, rows in result["arms"].items():
        for r in rows:
            t = r["test"]
            drops = ("- | -" if "largest_map50_drop" not in r else
                     f"{r['largest_map50_drop']:+.3f} ({r['largest_map50_drop_on']}) | "
                     f"{r['largest_recall_drop']:+.3f} ({r['largest_recall_drop_class']}, "
                     f"{r['largest_recall_drop_on']})")  # fmt: skip
            lines.append(
                f"| {name} | {r['cycle']} | {r['images_seen']:,} | {r['train_wall_s']:.0f} | "
                f"{t['map50']:.3f} | {t['accuracy'] or 0:.3f} | {t['macro_f1'] or 0:.3f} | "
                f"{t['recall']['contempt']:.3f} | {t['recall']['disgust']:.3f} | {drops} |"
            )
    return "\n".join(lines)


def run(sizes: Sizes, work: Path, out: Path, smoke: bool) -> dict:
    from emoflow import services

    started, began = time.monotonic(), datetime.now(UTC)
    data_home = Settings(_env_file=None, home=work / "data",
                         mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")  # fmt: skip

    def settings_of(name: str) -> Settings:
        return data_home.model_copy(update={
            "home": work / name, "model_name": f"continual-{name}",
            "data_repo": data_home.registry_repo, "dvc_remote_url": data_home.remote_url,
        })  # fmt: skip

    services.start(services.mlflow_server(data_home), data_home, timeout=240)
    try:
        revisions, added = record_revisions(data_home, work, sizes)
        scores = Scores()
        arm_settings = {arm_name(*kind, b): settings_of(arm_name(*kind, b))
                        for b in BALANCES for kind in KINDS}  # fmt: skip
        champions: dict[str, Trained] = {}
        arms: dict[str, list[dict]] = {name: [] for name in arm_settings}
        for balance in BALANCES:  # cycle 1: one scratch run on r1 per balance, shared
            shared = settings_of(f"first-cycle-balance-{balance}")
            first = run_training(train_params(sizes, *BASELINE, balance), revisions[0], shared)
            print(f"cycle 1 ({balance}): {first.listed} images x {first.epochs_run} epochs, "
                  f"{first.wall_s:.0f} s", flush=True)  # fmt: skip
            for kind in KINDS:
                name = arm_name(*kind, balance)
                promote(arm_settings[name], first, revisions[0], "continual bench: cycle 1")
                champions[name] = first
                arms[name].append(cycle_row(1, first, first, revisions, added, scores, shared))
        for number in range(2, sizes.revisions + 1):
            dataset = revisions[number - 1]
            for balance in BALANCES:
                for kind in KINDS:
                    name, settings = (
                        arm_name(*kind, balance),
                        arm_settings[arm_name(*kind, balance)],
                    )
                    trained = run_training(train_params(sizes, *kind, balance), dataset, settings)
                    promote(settings, trained, dataset, f"continual bench: cycle {number}")
                    row = cycle_row(
                        number, trained, champions[name], revisions, added, scores, settings
                    )
                    champions[name] = trained
                    arms[name].append(row)
                    print(f"cycle {number} {name}: {row['images_seen']} images seen, "
                          f"{row['train_wall_s']:.0f} s, test mAP50 {row['test']['map50']:.3f}, "
                          f"largest drops mAP50 {row['largest_map50_drop']:+.3f}, recall "
                          f"{row['largest_recall_drop']:+.3f}", flush=True)  # fmt: skip
    finally:
        services.stop(data_home, "mlflow")
    verdicts = goals(arms, sizes.revisions)
    result = {
        "what": "continual training arms over drifting revisions (issue 18)",
        "smoke": smoke,
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "torch_threads": int(os.environ["OMP_NUM_THREADS"]),
        "started": began.isoformat(timespec="seconds"),
        "total_wall_s": round(time.monotonic() - started, 1),
        "sizes": asdict(sizes),
        "revisions": [
            {
                "revision": r.revision,
                "digest": r.digest,
                "shift": shift_of(sizes, n, "affectnet").model_dump(exclude={"class_weights"}),
            }
            for n, r in enumerate(revisions, start=1)
        ],  # fmt: skip
        "data": "train splits: AffectNet's class mix; valid and test: uniform; seed = revision",
        "earlier_splits": "the test images each earlier revision added (its batch's test split)",
        "cycle_1": "one scratch run on r1 per balance setting, registered and promoted as the "
        "first champion of each arm with that balance (its row is the same in those arms)",
        "promotion": "every cycle's model is promoted (no gate): the next cycle builds on it",
        "arms": arms,
        "goals": verdicts,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it run end to end")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON (default {RESULTS})")
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    for field, default in asdict(Sizes()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(default),
                            help=f"default {default} (smoke: {getattr(SMOKE, field)})")  # fmt: skip
    parser.add_argument("--table", type=Path, metavar="JSON",
                        help="print the README's Markdown table of a finished run; run nothing")  # fmt: skip
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    sizes = replace(
        SMOKE if args.smoke else Sizes(),
        **{f: getattr(args, f) for f in asdict(Sizes()) if getattr(args, f) is not None},
    )
    if sizes.revisions < 4:
        parser.error("--revisions: at least 4 (the cost goal is judged from the third cycle on)")
    # ultralytics sets OMP_NUM_THREADS=1 on import where it is unset: one core of the machine
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    work = args.work or Path(tempfile.mkdtemp(prefix="emoflow-continual-"))
    print(f"continual bench in {work}: {sizes}", flush=True)
    result = run(sizes, work, args.out, args.smoke)
    print_table(result["arms"])
    print()
    for name, verdict in result["goals"].items():
        figures = {k: v for k, v in verdict.items() if k not in ("goal", "met")}
        print(f"{name}: {'met' if verdict['met'] else 'NOT met'}  {verdict['goal']}  {figures}")
    print(f"\n{result['total_wall_s']:.0f} s in all; written to {args.out}")


if __name__ == "__main__":
    main()
