"""DAG integrity: `emotion_ct` parses in Airflow with no import errors and nothing heavy loaded."""

import json
import subprocess
import sys

from conftest import make_settings
from ml import services
from ml.config import PROJECT_ROOT

PARSE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags["emotion_ct"]
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dag_ids": sorted(bag.dag_ids),
    "order": [t.task_id for t in dag.topological_sort()],
    "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
    "train": {"queue": dag.get_task("train").queue, "pool": dag.get_task("train").pool},
    "params": sorted(dag.params.keys()),
    "catchup": dag.catchup, "tags": sorted(dag.tags), "doc": bool(dag.doc_md),
    "heavy": [m for m in ("torch", "ultralytics", "mlflow", "evidently", "great_expectations",
                          "bentoml", "dvc", "onnxruntime") if m in sys.modules],
}))
"""


def parse_dags(tmp_path) -> dict:
    env = services.airflow_env(make_settings(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", PARSE, str(PROJECT_ROOT / "dags")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_emotion_ct_parses_wires_the_steps_in_order_and_imports_nothing_heavy(tmp_path):
    parsed = parse_dags(tmp_path)
    assert parsed["errors"] == {}
    assert parsed["dag_ids"] == ["emotion_ct"]
    assert parsed["order"] == [
        "pull", "validate", "train", "register", "evaluate", "drift", "promote",
    ]  # fmt: skip
    assert parsed["upstream"]["train"] == ["pull", "validate"]
    assert parsed["upstream"]["promote"] == ["drift", "evaluate", "register"]
    assert parsed["train"] == {"queue": "gpu", "pool": "gpu"}
    assert parsed["params"] == ["epochs", "imgsz", "revision"]
    assert parsed["catchup"] is False and "emoflow" in parsed["tags"] and parsed["doc"]
    assert parsed["heavy"] == []


def test_airflow_loads_the_plugin_with_links_to_emoflows_uis(tmp_path):
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
