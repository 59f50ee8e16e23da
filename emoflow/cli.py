"""`emoflow`: the command line of the continual-training loop.

Every command prints a short human line or a JSON record; errors are one line naming what is
wrong (exit code 2), never a stack trace.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import typing
from datetime import UTC, datetime
from pathlib import Path

from emoflow import revisions, runs, services
from emoflow.airflow_api import AirflowApi, AirflowApiError
from emoflow.runs import DAG_ID
from ml import data_batches, data_registry, registry
from ml.config import ConfigError, Settings
from ml.params import TrainParams, load_params
from ml.registry import RegistryError


def _print_record(record) -> None:
    print(json.dumps(record.model_dump(mode="json"), indent=2))


# ---------------------------------------------------------------- data


def _sample_batch(settings: Settings, args: argparse.Namespace) -> Path:
    """Generate a sample batch (sizes and class mix from params.yaml unless given) under
    <home>/batches, in a folder named by its seed and a digest of every generation parameter
    (sizes, seed, shift, class mix): the same arguments find the batch made before, any other
    size, shift or mix makes a new one."""
    from ml.params import class_weights
    from ml.sample_data import Shift, generate

    sizes = load_params(settings.params_file).sample
    try:
        weights = class_weights(args.class_mix or sizes.class_mix)
    except ValueError as exc:
        raise ValueError(f"--class-mix: {exc}") from None
    seed = args.seed if args.seed is not None else sizes.seed
    shift = Shift(brightness=args.brightness, contrast=args.contrast,
                  face_scale=args.face_scale, class_weights=weights)  # fmt: skip
    spec = dict(train=args.train or sizes.train, valid=args.valid or sizes.valid,
                test=args.test or sizes.test, seed=seed, prefix="s")  # fmt: skip
    text = json.dumps({**spec, "shift": shift.model_dump()}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    out = settings.home / "batches" / f"sample-{seed}-{digest}"
    if not (out / "data.yaml").exists():
        generate(out, shift=shift, **spec)
    return out


def _batch_source(args: argparse.Namespace, settings: Settings) -> tuple[Path, str]:
    """The batch folder a command names (`--from`, or a generated `--sample`) and its note."""
    if args.source is not None and not args.sample:
        if not args.source.strip():
            raise ValueError("--from needs a folder (or a Label Studio export .json)")
        return Path(args.source), args.note or f"folder {args.source}"
    if not args.sample:
        raise ValueError(f"{args.data_command} needs --from DIR (a batch to record) or --sample")
    seed = args.seed if args.seed is not None else len(data_registry.revisions(settings))
    args.seed = seed
    note = args.note or (
        f"sample batch seed={seed} brightness={args.brightness} "
        f"contrast={args.contrast} face_scale={args.face_scale}"
        + (f" class_mix={args.class_mix}" if args.class_mix else "")
    )
    return _sample_batch(settings, args), note


def _validation(settings: Settings) -> data_batches.Check:
    """The validate step's rules and Data Docs, run on a dataset before it is recorded."""
    from ml import validate as validation

    params = load_params(settings.params_file)

    def check(staged, latest):
        quiet = logging.getLogger("ml.validate")  # its lines are in the error this command prints
        quiet.disabled = True
        try:
            return validation.validate(staged, params.validate_, settings.gx_dir, latest)
        finally:
            quiet.disabled = False

    return check


def _listed_files(listing: str | None) -> list[str]:
    """Dataset paths, one per line, from a file (`-`: standard input)."""
    if listing is None:
        return []
    text = sys.stdin.read() if listing == "-" else Path(listing).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _print_recorded(args: argparse.Namespace, settings: Settings, revision) -> None:
    print(f"{revision.name}  {revision.digest}  {revision.message}")
    for line in revision.warnings:
        print(f"warning: {line}")
    if args.no_trigger:
        print(f"not announced to Airflow (--no-trigger): the next {DAG_ID} run reads it")
    else:
        print(revisions.announce(settings, revision))


def cmd_data(args: argparse.Namespace, settings: Settings) -> None:
    if args.data_command == "init":
        repo = data_registry.init(settings)
        print(f"data registry: {repo} (DVC remote: {settings.remote_url})")
        if args.sample or args.source:
            cmd_data(
                argparse.Namespace(**{**vars(args), "data_command": "add-batch", "force": False}),
                settings,
            )
    elif args.data_command == "add-batch":
        source, note = _batch_source(args, settings)
        revision = data_batches.add_batch(
            settings, source, note, check=_validation(settings), force=args.force
        )
        _print_recorded(args, settings, revision)
    elif args.data_command == "validate":
        source, _ = _batch_source(args, settings)
        result = data_batches.check_batch(settings, source, _validation(settings))
        for line in result.warnings:
            print(f"warning: {line}")
        if not result.ok:
            raise data_batches.BatchRefused(f"batch {source}", result)
        print(f"{source}: valid; `emoflow data add-batch` would record it as {result.revision} "
              f"(Data Docs: {result.docs_url})")  # fmt: skip
    elif args.data_command == "remove":
        revision = data_batches.remove(
            settings, args.reason, batch=args.batch, files=_listed_files(args.files),
            check=_validation(settings), force=args.force,
        )  # fmt: skip
        _print_recorded(args, settings, revision)
    elif args.data_command == "log":
        for rev in reversed(data_registry.revisions(settings)):
            splits = "  ".join(f"{split} {c['images']}" for split, c in rev.counts.items())
            print(f"{rev.name:5} {rev.digest[:12]}  {rev.date}  +{rev.added_images:<6} {splits}")
            print(f"      from: {rev.source}")
    elif args.data_command == "pull":
        _print_record(data_registry.pull(settings, args.revision))


# ---------------------------------------------------------------- servers and Airflow


def _servers(settings: Settings) -> dict[str, services.Server]:
    return {"mlflow": services.mlflow_server(settings), "service": services.bento_service(settings)}


def start_airflow(settings: Settings, timeout: float) -> None:
    """Airflow's parts, then the event for a revision recorded while Airflow was down."""
    services.start_airflow(settings, timeout=timeout)
    if (missed := revisions.announce_unannounced(settings)) is not None:
        print(f"announced {missed.name}, recorded while Airflow was down: emotion_ct will run")


def cmd_start(args: argparse.Namespace, settings: Settings) -> None:
    if args.server == "airflow":
        start_airflow(settings, args.timeout)
        print(f"airflow running at {settings.airflow_url} (user {settings.airflow_user}, "
              f"password in {settings.airflow_passwords_file})")  # fmt: skip
        return
    server = _servers(settings)[args.server]
    pid = services.start(server, settings, timeout=args.timeout)
    print(f"{server.name} running (pid {pid}) at {server.ready_url.rsplit('/', 1)[0]}")


def cmd_stop(args: argparse.Namespace, settings: Settings) -> None:
    names = ("service", "mlflow", "airflow") if args.server == "all" else (args.server,)
    for name in names:
        if name == "airflow":
            stopped = any(services.stop_airflow(settings).values())
        else:
            stopped = services.stop(settings, name)
        print(f"{name}: {'stopped' if stopped else 'was not running'}")


CONTINUAL_KNOBS = ("init", "data", "balance")
"""`train` values a run may set, as the DAG's Params of the same names (None: params.yaml's)."""


def run_conf(args: argparse.Namespace) -> dict:
    """The DAG run's conf from `emoflow run`'s options."""
    keys = ("revision", "epochs", "imgsz", *CONTINUAL_KNOBS)
    return {key: getattr(args, key) for key in keys}


def cmd_run(args: argparse.Namespace, settings: Settings) -> None:
    conf = run_conf(args)
    data_registry.revision(settings, args.revision)  # an unknown one fails here, not in `pull`
    if args.debug:
        if services.running_pid(settings, "airflow-scheduler"):  # it would run the tasks too
            raise services.ServiceError(
                "the scheduler is running (its executor would also run the tasks of an "
                "in-process run): stop it with `emoflow stop airflow` before `run --debug`, or "
                "run without --debug"
            )
        print(f"running {DAG_ID} in-process (airflow dags test) with {json.dumps(conf)} ...")
        print(f"{DAG_ID} succeeded; log: {runs.debug_run(settings, conf)}")
        return
    # Airflow's parts only: announcing a revision recorded while it was down (or with
    # --no-trigger) would start a second run beside the one triggered here
    services.start_airflow(settings, timeout=300)
    run_id = runs.trigger(settings, conf)
    print(f"triggered {DAG_ID} run {run_id} with {json.dumps(conf)}; following it ...", flush=True)
    runs.follow(settings, run_id)
    print(f"{DAG_ID} run {run_id} succeeded; {settings.airflow_url}/dags/{DAG_ID}/runs/{run_id}")


def cmd_airflow(args: argparse.Namespace, settings: Settings) -> None:
    sys.exit(services.airflow(settings, *args.airflow_args))


# ---------------------------------------------------------------- models


def _utc_time(text: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime; one without a timezone means UTC."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not an ISO 8601 time: {text!r} (for example 2026-12-01T14:30:00Z, "
            "2026-12-01T15:30+01:00 or 2026-12-01; without a timezone it means UTC)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


APPROVAL_SETTLE_S = 15.0
"""How old a request must be before it is answered: counted from its task's latest start too, as
a cleared task asks again under the request's first `created_at`. Airflow 3.3 fails a deferred
task whose trigger fires before the scheduler has read the executor's report of the deferring
process (apache/airflow#67287: "finished with state success, but ... is queued"); that report
came 5 s after the deferral in failed test runs here, once after a clear."""


def answer_approval(settings: Settings, approve: bool, run_id: str | None, reason: str) -> str:
    """Answer the `approve` task waiting in an emotion_ct run (the only one, or `run_id`'s),
    once its request is `APPROVAL_SETTLE_S` old."""
    from emoflow.approval import TASK_ID, GateApproval

    api = AirflowApi(settings)
    waiting = [
        detail for detail in api.pending_approvals(DAG_ID)
        if detail["task_instance"]["task_id"] == TASK_ID
        and run_id in (None, detail["task_instance"]["dag_run_id"])
    ]  # fmt: skip
    if len(waiting) != 1:
        runs_waiting = ", ".join(d["task_instance"]["dag_run_id"] for d in waiting) or "none"
        raise ValueError(
            f"{len(waiting)} {DAG_ID} runs wait for an approval"
            + (f" with run id {run_id!r}" if run_id else "")
            + f" (waiting: {runs_waiting}); name one with --run"
        )
    run = waiting[0]["task_instance"]["dag_run_id"]
    times = (waiting[0]["created_at"], waiting[0]["task_instance"].get("start_date"))
    asked = max(datetime.fromisoformat(stamp) for stamp in times if stamp)
    wait = APPROVAL_SETTLE_S - (datetime.now(UTC) - asked).total_seconds()
    if wait > 0:
        print(f"the request is new: answering in {wait:.0f} s (apache/airflow#67287)", flush=True)
        time.sleep(wait)
    option = GateApproval.APPROVE if approve else GateApproval.REJECT
    api.answer_approval(DAG_ID, run, TASK_ID, option, {"reason": reason or ""})
    return f"{option}: {waiting[0]['subject']} ({DAG_ID} run {run})"


def cmd_model(args: argparse.Namespace, settings: Settings) -> None:
    from ml import history, registry
    from ml.history import user_actor, version_label

    if args.model_command == "list":
        client = registry.client(settings)
        by_version: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(settings.model_name).aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        for mv in client.search_model_versions(f"name='{settings.model_name}'"):
            aliases = ",".join(sorted(by_version.get(str(mv.version), []))) or "-"
            tags = {k: mv.tags.get(k, "?") for k in ("data_revision", "gate", "val_map50")}
            print(f"v{mv.version:<4} {aliases:28} {json.dumps(tags)}")
    elif args.model_command == "promote":
        reason = args.reason or "manual promotion"
        _print_record(registry.promote(settings, args.version, reason, actor=user_actor()))
    elif args.model_command == "rollback":
        _print_record(registry.rollback(settings, actor=user_actor(), reason=args.reason or ""))
    elif args.model_command == "history":
        moves = history.moves(settings)
        if not moves:
            print(f"no alias moves recorded for '{settings.model_name}'")
        for move in moves:
            change = f"{version_label(move.from_version)} -> {version_label(move.to_version)}"
            print(f"{move.time:%Y-%m-%dT%H:%M:%SZ}  {move.kind:9} {change:13} {move.actor}  "
                  f"{move.reason}" + (f"  {move.link}" if move.link else ""))  # fmt: skip
    elif args.model_command == "serving-at":
        when = _utc_time(args.time)
        version = history.champion_at(settings, when)
        stamp = f"{when:%Y-%m-%dT%H:%M:%SZ}"
        if version is None:
            print(f"{stamp}: no version of '{settings.model_name}' was champion")
        else:
            print(f"{stamp}: v{version} of '{settings.model_name}' was champion")
    elif args.model_command in ("approve", "reject"):
        print(answer_approval(settings, args.model_command == "approve", args.run, args.reason))
    elif args.model_command == "lineage":
        from ml.lineage import chain

        champion = registry.version_by_alias(settings, registry.CHAMPION)
        if args.version is None and champion is None:
            raise LookupError(f"model '{settings.model_name}' has no champion; name a VERSION")
        for link in chain(settings, args.version or champion.version):
            start_from = f"weights of v{link.parent}" if link.init == "champion" else "scratch"
            since = f" since v{link.parent}'s revision" if link.data == "replay" else ""
            print(f"v{link.version:<4} {link.data_revision:6} from {start_from}, "
                  f"{link.data} data{since}  run {link.run_id}")  # fmt: skip
    elif args.model_command == "reproduce":
        from ml.train import reproduce

        services.start(services.mlflow_server(settings), settings, timeout=180)
        result = reproduce(settings, args.version)
        print(f"v{result.version}: run {result.run_id} (code {result.recorded_commit[:12]}) "
              f"retrained as run {result.reproduced_run_id} (code {result.commit[:12]}) "
              f"on revision {result.data_revision}")  # fmt: skip
        print(f"{'metric':10} {'recorded':>9} {'reproduced':>11} {'difference':>11}")
        for key, diff in result.difference.items():
            print(
                f"{key:10} {result.recorded[key]:9.4f} {result.reproduced[key]:11.4f} {diff:+11.4f}"
            )


def cmd_predict(args: argparse.Namespace, settings: Settings) -> None:
    import httpx

    image = Path(args.image)
    with image.open("rb") as fh:
        response = httpx.post(
            f"{settings.service_url}/predict", files={"image": (image.name, fh)}, timeout=60
        )
    print(json.dumps(response.json(), indent=2))
    if response.status_code >= 400:
        sys.exit(1)


# ---------------------------------------------------------------- the main job


def cmd_demo(args: argparse.Namespace, settings: Settings) -> None:
    """One full cycle on the bundled sample data, ending with a served model answering HTTP."""
    started = time.monotonic()

    def step(text: str) -> None:
        print(f"[{time.monotonic() - started:6.0f}s] {text}", flush=True)

    step(f"starting MLflow at {settings.mlflow_tracking_uri}")
    services.start(services.mlflow_server(settings), settings, timeout=180)
    step(f"starting Airflow at {settings.airflow_url} (api-server, scheduler, dag-processor, "
         "triggerer)")  # fmt: skip
    start_airflow(settings, timeout=300)
    since = datetime.now(UTC)
    if not data_registry.revisions(settings):
        step("generating the sample dataset and recording revision r1 in the DVC registry")
        args.seed, args.source, args.sample = None, None, True
        cmd_data(
            argparse.Namespace(**{**vars(args), "data_command": "add-batch", "force": False}),
            settings,
        )
        run_id = runs.wait_for_new_run(settings, since)
        step(f"the new revision started {DAG_ID} run {run_id} (scheduler, LocalExecutor); "
             "training is the long part")  # fmt: skip
    else:
        run_id = runs.trigger(settings, {"revision": "latest"})
        step(f"data already recorded: triggered {DAG_ID} run {run_id}")
    runs.follow(settings, run_id)
    step(f"run {run_id} succeeded")
    from ml import registry

    champion = registry.version_by_alias(settings, registry.CHAMPION)
    if champion is None:
        raise LookupError(
            "the evaluation gate refused the model, so no version is champion and there is "
            f"nothing to serve; the gate's reasons are in the log of task gate of run {run_id}"
        )
    step(f"model '{champion.name}' version {champion.version} is champion")
    services.stop(settings, "service")
    step(f"starting the Bento service at {settings.service_url}")
    services.start(services.bento_service(settings), settings, timeout=300)
    sample = next(iter(sorted((data_registry.pull(settings).path / "test" / "images").iterdir())))
    step(f"POST /predict with {sample.name}")
    cmd_predict(argparse.Namespace(image=str(sample)), settings)
    index = settings.reports_dir / "index.html"
    print(f"""
Done in {time.monotonic() - started:.0f} s. What is running and where to look:
  Bento service  {settings.service_url}  (POST /predict, /predict/batch; GET /health, /ready, /metrics, /docs)
  MLflow UI      {settings.mlflow_tracking_uri}  (model '{settings.model_name}', alias champion)
  Drift reports  file://{index}
  Airflow UI     {settings.airflow_url}  (DAGs emotion_ct, emotion_monitor, emotion_labelling;
                 login {settings.airflow_user}, password in {settings.airflow_passwords_file})
  Stop servers   .venv/bin/emoflow stop all""")


# ---------------------------------------------------------------- parser


def _add_sample_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample", action="store_true", help="generate a sample batch")
    parser.add_argument("--from", dest="source", help="a folder in YOLO layout")
    parser.add_argument("--note", help="where the batch came from (recorded in the revision)")
    parser.add_argument(
        "--no-trigger", action="store_true",
        help=f"record the revision without the asset event that starts {DAG_ID}",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, help="sample seed (default: next revision number)")
    parser.add_argument("--train", type=int, help="sample images in train (default: params)")
    parser.add_argument("--valid", type=int, help="sample images in valid (default: params)")
    parser.add_argument("--test", type=int, help="sample images in test (default: params)")
    parser.add_argument("--brightness", type=float, default=0.0, help="sample shift: brightness")
    parser.add_argument("--contrast", type=float, default=1.0, help="sample shift: contrast")
    parser.add_argument("--face-scale", type=float, default=1.0, help="sample shift: face size")
    parser.add_argument(
        "--class-mix",
        help="sample class mix: uniform, affectnet (its skew) or weights like happy=5,contempt=0.2"
        " (default: params sample.class_mix)",
    )  # fmt: skip


def _add_force_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force", action="store_true",
        help="record even if validation finds errors (the revision says so)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emoflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="the versioned dataset (DVC)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    _add_sample_options(data_sub.add_parser("init", help="create the registry (and revision r1)"))
    add_batch = data_sub.add_parser("add-batch", help="append a batch: a new revision")
    _add_sample_options(add_batch)
    _add_force_option(add_batch)
    _add_sample_options(
        data_sub.add_parser(
            "validate", help="validate a batch with the latest data; record nothing"
        )
    )
    remove = data_sub.add_parser("remove", help="a new revision without a batch's (or named) files")
    taken = remove.add_mutually_exclusive_group(required=True)
    taken.add_argument("--batch", help="the revision whose batch goes (rN)")
    taken.add_argument("--files", help="a file of dataset paths to remove, one per line (- stdin)")
    remove.add_argument("--reason", required=True, help="why the data goes (kept in the revision)")
    remove.add_argument("--no-trigger", action="store_true", help="record without the asset event")
    _add_force_option(remove)
    data_sub.add_parser("log", help="list revisions, newest first")
    pull = data_sub.add_parser("pull", help="pull a revision into a workspace")
    pull.add_argument("revision", nargs="?", default="latest")

    for name, helptext in (("start", "start a server"), ("stop", "stop servers")):
        p = sub.add_parser(name, help=helptext)
        choices = ["mlflow", "service", "airflow"] + (["all"] if name == "stop" else [])
        p.add_argument("server", choices=choices)
        if name == "start":
            p.add_argument("--timeout", type=float, default=180)

    run = sub.add_parser(
        "run", help=f"trigger the {DAG_ID} DAG through Airflow's scheduler and follow it"
    )
    run.add_argument("--revision", default="latest")
    run.add_argument("--epochs", type=int)
    run.add_argument("--imgsz", type=int)
    for knob in CONTINUAL_KNOBS:
        choices = typing.get_args(TrainParams.model_fields[knob].annotation)
        run.add_argument(f"--{knob}", choices=choices,
                         help=f"train.{knob} for this run (default: params.yaml's)")  # fmt: skip
    run.add_argument(
        "--debug", action="store_true",
        help="run the DAG in-process with `airflow dags test` (no scheduler, no executor)",
    )  # fmt: skip

    af = sub.add_parser("airflow", help="run an airflow command with emoflow's configuration")
    af.add_argument("airflow_args", nargs=argparse.REMAINDER)

    model = sub.add_parser("model", help="the MLflow model registry")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    model_sub.add_parser("list", help="versions with their aliases and tags")
    promote = model_sub.add_parser("promote", help="make VERSION the champion")
    promote.add_argument("version", type=int)
    promote.add_argument("--reason", help="why (recorded in the history)")
    rollback = model_sub.add_parser("rollback", help="champion back to the previous version")
    rollback.add_argument("--reason", help="why (recorded in the history)")
    model_sub.add_parser("history", help="every move of champion/previous, oldest first")
    serving_at = model_sub.add_parser("serving-at", help="which version was champion at TIME")
    serving_at.add_argument("time", help="ISO 8601, e.g. 2026-12-01T14:30:00Z (no zone: UTC)")
    for verdict, what in (("approve", "promote"), ("reject", "refuse")):
        answer = model_sub.add_parser(
            verdict, help=f"{what} the challenger an emotion_ct run waits on (gate.approval: human)"
        )
        answer.add_argument("--run", help="the DAG run id, where more than one waits")
        answer.add_argument("--reason", default="", help="why (recorded in the history)")
    lineage = model_sub.add_parser(
        "lineage", help="VERSION (default: the champion) and the versions it was built on"
    )
    lineage.add_argument("version", type=int, nargs="?")
    reproduce = model_sub.add_parser(
        "reproduce", help="retrain VERSION from its recorded revision, params and seed"
    )
    reproduce.add_argument("version", type=int)

    predict = sub.add_parser("predict", help="send an image to the running service")
    predict.add_argument("image")

    demo = sub.add_parser("demo", help="one full cycle on sample data, ending with a served model")
    _add_sample_options(demo)
    return parser


COMMANDS = {
    "data": cmd_data, "start": cmd_start, "stop": cmd_stop, "run": cmd_run,
    "airflow": cmd_airflow, "model": cmd_model, "predict": cmd_predict, "demo": cmd_demo,
}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a person waits: seconds
    try:
        settings = Settings()
        COMMANDS[args.command](args, settings)
    except (ConfigError, data_registry.DataRegistryError, services.ServiceError, LookupError,
            FileExistsError, FileNotFoundError, ValueError, AirflowApiError,
            runs.RunFailed, RegistryError) as exc:  # fmt: skip
        print(f"emoflow: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # a server's answer (MLflow, HTTP): one line, not a stack trace
        if not type(exc).__module__.startswith(("mlflow", "httpx", "requests")):
            raise
        fault = registry.unreachable(exc)
        print(f"emoflow: error: {fault or f'{type(exc).__name__}: {exc}'}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
