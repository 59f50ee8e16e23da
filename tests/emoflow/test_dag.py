"""DAG integrity: `emotion_ct` and `emotion_monitor` parse in Airflow with no import errors and
nothing heavy loaded."""

import json
import subprocess
import sys
import typing

import pytest

from emoflow import services
from ml.config import PROJECT_ROOT

PARSE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags["emotion_ct"]
monitor = bag.dags.get("emotion_monitor")
labelling = bag.dags.get("emotion_labelling")
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dag_ids": sorted(bag.dag_ids),
    "order": [t.task_id for t in dag.topological_sort()],
    "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
    "train": {"queue": dag.get_task("train").queue, "pool": dag.get_task("train").pool},
    "params": sorted(dag.params.keys()),
    "enums": {k: dag.params.get_param(k).schema.get("enum") for k in ("init", "data", "balance")},
    "overrides": {
        task: [dag.get_task(task).render_template(dag.get_task(task).op_args[-1],
                                                  {"params": {**dag.params, **conf}},
                                                  dag.get_template_env())
               for conf in ({}, {"init": "champion", "data": "replay", "balance": "sample"})]
        for task in ("train", "register", "gate")
    },
    "links": {t.task_id: [link.name for link in t.operator_extra_links] for t in dag.tasks},
    "catchup": dag.catchup, "tags": sorted(dag.tags), "doc": bool(dag.doc_md),
    "timetable": type(dag.timetable).__name__, "timetable_text": dag.timetable.timetable.expression,
    "assets": [dag.timetable.asset_condition.name],
    "monitor": monitor and {
        "tasks": [t.task_id for t in monitor.tasks], "schedule": monitor.timetable.expression,
        "timetable": type(monitor.timetable).__name__, "catchup": monitor.catchup,
        "max_active_runs": monitor.max_active_runs, "tags": sorted(monitor.tags),
        "doc": bool(monitor.doc_md),
    },
    "labelling": labelling and {
        "tasks": [t.task_id for t in labelling.tasks],
        "timetable": type(labelling.timetable).__name__,
        "asset": [a.name for a in labelling.timetable.asset_condition.objects],
        "alarm_outlets": [a.name for a in monitor.get_task("alarm").outlets],
    },
    "heavy": [m for m in ("torch", "ultralytics", "mlflow", "evidently", "great_expectations",
                          "bentoml", "dvc", "onnxruntime", "pandas") if m in sys.modules],
}))
"""


def parse_dags(settings) -> dict:
    env = services.airflow_env(settings)
    out = subprocess.run(
        [sys.executable, "-c", PARSE, str(PROJECT_ROOT / "dags")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory, make_settings) -> dict:
    """The dags folder parsed once (a DagBag in a fresh Airflow process) for this module."""
    return parse_dags(make_settings(tmp_path_factory.mktemp("airflow-parse")))


def test_emotion_ct_parses_wires_the_steps_in_order_and_imports_nothing_heavy(parsed):
    assert parsed["errors"] == {}
    assert parsed["dag_ids"] == ["emotion_ct", "emotion_labelling", "emotion_monitor"]
    assert parsed["order"] == [
        "pull", "validate", "train", "register", "gate", "drift", "approve", "promote",
    ]  # fmt: skip
    assert parsed["upstream"]["train"] == ["pull", "validate"]
    assert parsed["upstream"]["approve"] == ["drift"]
    assert parsed["upstream"]["promote"] == ["approve", "drift", "gate", "register"]
    assert parsed["train"] == {"queue": "gpu", "pool": "gpu"}
    assert parsed["params"] == [
        "approval", "balance", "data", "epochs", "imgsz", "init", "revision",
    ]  # fmt: skip
    assert parsed["catchup"] is False and "emoflow" in parsed["tags"] and parsed["doc"]
    # new data revisions (asset events) or the time fallback of params.yaml, whichever first
    assert parsed["timetable"] == "AssetOrTimeSchedule"
    assert parsed["assets"] == ["emoflow-dataset"]
    assert parsed["timetable_text"] == "0 4 * * 1"
    assert parsed["links"] == {
        "pull": [], "validate": ["Data Docs"], "train": ["MLflow run"],
        "register": ["MLflow model version"], "gate": ["Gate report"], "drift": ["Drift report"],
        "approve": [], "promote": ["Service ready"],
    }  # fmt: skip
    assert parsed["heavy"] == []


def test_emotion_monitor_parses_hourly_with_its_one_task(parsed):
    assert parsed["errors"] == {}
    monitor = parsed["monitor"]
    assert monitor is not None, parsed["dag_ids"]
    assert monitor["tasks"] == ["monitor", "alarm"]
    assert monitor["schedule"] in ("@hourly", "0 * * * *")
    assert monitor["timetable"] == "CronTriggerTimetable"  # runs at each hour, no catch-up
    assert monitor["catchup"] is False and monitor["max_active_runs"] == 1
    assert "emoflow" in monitor["tags"] and monitor["doc"]
    assert parsed["heavy"] == []


def test_airflow_loads_the_plugin_with_links_to_emoflows_uis(tmp_path, make_settings):
    settings = make_settings(tmp_path)
    out = subprocess.run(
        [str(services.BIN / "airflow"), "plugins", "--output", "json"],
        env=services.airflow_env(settings), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    plugins = {p["name"]: p for p in json.loads(out.stdout[out.stdout.index("[") :])}
    views = {view["name"]: view["href"] for view in plugins["emoflow"]["external_views"]}
    assert views["MLflow: models and runs"] == settings.mlflow_tracking_uri
    assert views["Drift reports"] == f"{settings.service_url}/reports/index.html"
    assert views["Emotion service API"] == f"{settings.service_url}/docs"


def test_the_plugins_links_are_the_addresses_browsers_reach(tmp_path, make_settings):
    """In the compose setup the tracking URI names a container and the service listens on
    0.0.0.0: the menu links use the public addresses of settings instead."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "emoflow_plugin", PROJECT_ROOT / "plugins" / "emoflow_plugin.py"
    )
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)  # plugins/ is Airflow's folder, not a package
    nav_links = plugin.nav_links
    settings = make_settings(
        tmp_path, mlflow_tracking_uri="http://mlflow:5000", serve_host="0.0.0.0",
        public_mlflow_url="http://localhost:5000/", public_service_url="http://localhost:3000",
    )  # fmt: skip
    assert {link["href"] for link in nav_links(settings)} == {
        "http://localhost:5000", "http://localhost:3000/reports/index.html",
        "http://localhost:3000/docs",
    }  # fmt: skip


def test_emotion_labelling_runs_on_the_live_drift_alarm(parsed):
    labelling = parsed["labelling"]
    assert labelling["tasks"] == ["export"]
    assert labelling["timetable"] == "AssetTriggeredTimetable"
    assert labelling["asset"] == ["emoflow-live-drift"] == labelling["alarm_outlets"]


def test_a_manual_run_sets_the_continual_training_knobs_and_null_keeps_params_yaml(
    parsed, tmp_path, make_settings
):
    """`init`, `data` and `balance` offer exactly TrainParams' choices, and reach the train,
    register and gate steps' params as the run's conf sets them (None: params.yaml's)."""
    from emoflow.steps import _resolve
    from ml.params import TrainParams

    for knob in ("init", "data", "balance"):
        choices = list(typing.get_args(TrainParams.model_fields[knob].annotation))
        assert parsed["enums"][knob] == [None, *choices]
    settings = make_settings(tmp_path)
    from_file = _resolve(settings, None)[1].train
    for task, (default, manual) in parsed["overrides"].items():
        assert default == dict.fromkeys(("epochs", "imgsz", "init", "data", "balance")), task
        assert manual == {**default, "init": "champion", "data": "replay", "balance": "sample"}
        assert _resolve(settings, None, default)[1].train == from_file
        train = _resolve(settings, None, manual)[1].train
        assert (train.init, train.data, train.balance) == ("champion", "replay", "sample")
        assert train.epochs == from_file.epochs
        shorter = _resolve(settings, None, {**manual, "epochs": 2})[1].train
        assert (shorter.epochs, shorter.finetune_epochs) == (2, 2)  # a warm start's too


def test_emoflow_run_sets_only_the_dags_params_and_offers_the_knobs_choices(parsed):
    """`emoflow run --init/--data/--balance` reach the run's conf under the DAG's Param names,
    with the DAG's choices; a choice it does not offer is refused before anything runs."""
    from emoflow.cli import build_parser, run_conf

    args = build_parser().parse_args(
        ["run", "--init", "champion", "--data", "replay", "--balance", "sample"]
    )
    conf = run_conf(args)
    assert set(conf) <= set(parsed["params"])
    assert conf == {"revision": "latest", "epochs": None, "imgsz": None,
                    "init": "champion", "data": "replay", "balance": "sample"}  # fmt: skip
    plain = run_conf(build_parser().parse_args(["run"]))
    assert (plain["init"], plain["data"], plain["balance"]) == (None, None, None)
    for knob in ("init", "data", "balance"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["run", f"--{knob}", "everything"])
        for choice in filter(None, parsed["enums"][knob]):  # every value the DAG's Param offers
            conf = run_conf(build_parser().parse_args(["run", f"--{knob}", choice]))
            assert conf[knob] == choice
