"""End to end: the real DAG under Airflow's scheduler (LocalExecutor), a real MLflow server,
the real Bento service.

Recording a revision is the only command that starts the first cycle: its asset event makes
the scheduler run emotion_ct. Cycles on a tiny generated dataset. The gate's floors are zero in this test's params so the
2-epoch model can become champion; a later challenger must beat it by 0.01 mAP50 on the lower
bound of the bootstrap interval, which a 1-epoch model cannot (the rules themselves are tested
in test_gate and test_scoring).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from emoflow import runs, services
from emoflow.airflow_api import DATASET_ASSET, AirflowApi
from ml import data_registry, history, registry
from ml.config import PROJECT_ROOT
from ml.dataset_format import write_data_yaml
from ml.lineage import code_commit

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TINY_PARAMS = {
    "sample": {"seed": 0, "train": 48, "valid": 16, "test": 16},
    "train": {"epochs": 2, "imgsz": 64, "batch": 16, "workers": 0},
    "gate": {"min_map50": 0.0, "min_map50_95": 0.0, "min_improvement": 0.01},
    "drift": {"max_rows": 200},
}


def emoflow(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(services.BIN / "emoflow"), *args], env=env, capture_output=True, text=True,
        cwd=PROJECT_ROOT, timeout=1200,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@dataclass
class Cycle:
    settings: object
    env: dict
    run_id: str  # the run r1's asset event started
    echoed: list[str]  # what following it printed


@pytest.fixture(scope="module")
def cycle(tmp_path_factory, make_settings):
    home = tmp_path_factory.mktemp("e2e")
    params = home / "params.yaml"
    params.write_text(yaml.safe_dump(TINY_PARAMS))
    settings = make_settings(home, params_file=params)
    env = services.settings_env(settings)
    services.start(services.mlflow_server(settings), settings, timeout=180)
    try:
        emoflow(env, "start", "airflow")
        since = datetime.now(UTC)
        recorded = emoflow(env, "data", "init", "--sample")  # records r1 and announces it
        assert "announced r1" in recorded.stdout, recorded.stdout  # nothing else starts the run
        run_id = runs.wait_for_new_run(settings, since, timeout=120)
        echoed: list[str] = []
        runs.follow(settings, run_id, timeout=1200, echo=echoed.append)
        yield Cycle(settings, env, run_id, echoed)
    finally:
        services.stop(settings, "service")
        services.stop_airflow(settings)
        services.stop(settings, "mlflow")


def pulled_revision(api: AirflowApi, run_id: str) -> tuple[str, int]:
    """The revision the run's pull task returned (XCom), and that task's try number."""
    base = f"/api/v2/dags/{runs.DAG_ID}/dagRuns/{run_id}/taskInstances/pull"
    xcom = api._request("GET", f"{base}/xcomEntries/return_value")
    return xcom["value"]["revision"], api._request("GET", base)["try_number"]


def test_recording_r1_ran_the_dag_through_the_scheduler(cycle):
    settings = cycle.settings
    api = AirflowApi(settings)
    run = api.dag_run(runs.DAG_ID, cycle.run_id)
    assert run["run_type"] == "asset_triggered" and run["state"] == "success"
    assert "  task promote: success" in cycle.echoed
    assert any(line.startswith("  train epoch 2/2") for line in cycle.echoed), cycle.echoed
    (event,) = api.asset_events(DATASET_ASSET)
    r1 = data_registry.revision(settings, "r1")
    assert event["extra"]["revision"] == "r1" and event["extra"]["digest"] == r1.digest
    assert "sample batch" in event["extra"]["source"]
    assert [created["run_id"] for created in event["created_dagruns"]] == [cycle.run_id]
    assert pulled_revision(api, cycle.run_id) == ("r1", 1)


def test_one_cycle_registers_a_champion_named_by_data_and_code(cycle):
    settings = cycle.settings
    champion = registry.version_by_alias(settings, registry.CHAMPION)
    assert champion is not None and champion.version == 1
    version = registry.client(settings).get_model_version(settings.model_name, "1")
    r1 = data_registry.revision(settings, "r1")
    assert version.tags["data_revision"] == "r1"
    assert version.tags["data_digest"] == r1.digest
    assert version.tags["data_commit"] == r1.commit
    assert version.tags["git_commit"] == code_commit()
    assert version.tags["gate"] == "passed"
    client = registry.client(settings)
    mlflow_run = client.get_run(version.run_id)
    metrics = mlflow_run.data.metrics
    assert {"map50", "map50_95", "metrics/mAP50B", "energy_kwh", "energy_cost"} <= set(metrics)
    assert metrics["energy_kwh"] > 0 and metrics["energy_cost"] > 0
    # no RAPL or NVML on the CI machine: the run must say its energy is an estimate
    assert mlflow_run.data.tags["energy_cpu_source"] in {"rapl", "estimate"}
    assert (
        "estimate" in mlflow_run.data.tags["energy_note"]
        or "rapl" in mlflow_run.data.tags["energy_cpu_source"]
    )
    assert any(key.startswith("system/cpu_utilization") for key in metrics)  # system metrics
    assert {f"val_recall_{e}" for e in ("anger", "happy")} <= set(metrics)
    assert mlflow_run.data.params["epochs"] == "2"
    assert mlflow_run.data.params["imgsz_used"] == "64"
    (dataset_input,) = mlflow_run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "emotions@r1"
    assert dataset_input.dataset.digest == r1.digest
    plots = {Path(f.path).name for f in client.list_artifacts(version.run_id, "plots")}
    assert {"confusion_matrix.png", "BoxPR_curve.png", "per_class.csv", "results.csv",
            "per_class_precision_recall.png"} <= plots  # fmt: skip
    drift_pages = list((settings.reports_dir / "drift").glob("*.html"))
    assert drift_pages and (settings.reports_dir / "index.html").is_file()
    assert list((settings.home / "gx").rglob("local_site/index.html"))


def test_every_task_links_to_what_it_made_and_each_link_answers(cycle):
    """The extra links of the cycle's task instances, read through Airflow's REST API, each
    fetched from its real server (the service and MLflow)."""
    settings = cycle.settings
    services.start(services.bento_service(settings), settings, timeout=300)
    api = AirflowApi(settings)
    tasks = ("pull", "validate", "train", "register", "gate", "drift", "promote")
    links = {task: api.task_links(runs.DAG_ID, cycle.run_id, task) for task in tasks}
    assert {task: sorted(found) for task, found in links.items()} == {
        "pull": [], "validate": ["Data Docs"], "train": ["MLflow run"],
        "register": ["MLflow model version"], "gate": ["Gate report"], "drift": ["Drift report"],
        "promote": ["Service ready"],
    }  # fmt: skip
    addresses = {name: url for found in links.values() for name, url in found.items()}
    for name, url in addresses.items():
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200, (name, url, response.text[:300])
    assert httpx.get(addresses["Data Docs"]).headers["content-type"].startswith("text/html")
    assert httpx.get(addresses["Service ready"]).json()["version"] == 1
    drift = pulled(api, cycle.run_id, "drift")
    assert addresses["Drift report"].endswith(Path(drift["html_path"]).name)
    # The MLflow UI's pages are routes after '#' (the server answers its one page for all):
    # what each names must exist in the real server.
    version = registry.client(settings).get_model_version(settings.model_name, "1")
    experiment = registry.client(settings).get_run(version.run_id).info.experiment_id
    run_page = f"{settings.mlflow_ui_url}/#/experiments/{experiment}/runs/{version.run_id}"
    assert addresses["MLflow run"] == run_page
    assert addresses["MLflow model version"].endswith(f"/#/models/{settings.model_name}/versions/1")
    assert addresses["Gate report"] == f"{run_page}/artifactPath/gate/gate-v1.md"
    gate_files = registry.client(settings).list_artifacts(version.run_id, "gate")
    assert "gate/gate-v1.md" in {f.path for f in gate_files}


def test_the_service_serves_the_champion_over_http(cycle):
    settings = cycle.settings
    services.start(services.bento_service(settings), settings, timeout=300)
    url = settings.service_url
    assert httpx.get(f"{url}/health").status_code == 200
    ready = httpx.get(f"{url}/ready").json()
    assert ready["version"] == 1
    image = next((data_registry.pull(settings).path / "test" / "images").iterdir())
    answer = httpx.post(f"{url}/predict", files={"image": (image.name, image.read_bytes())})
    assert answer.status_code == 200
    body = answer.json()
    assert {"emotion", "confidence", "faces", "model_version"} <= set(body)
    assert body["model_version"] == 1
    text = httpx.post(f"{url}/predict", files={"image": ("notes.txt", b"not an image")})
    assert 400 <= text.status_code < 500
    assert "error" in text.json()


def test_reproduce_retrains_a_version_and_prints_the_difference(cycle):
    settings, env = cycle.settings, cycle.env
    result = emoflow(env, "model", "reproduce", "1")
    client = registry.client(settings)
    original = client.get_run(client.get_model_version(settings.model_name, "1").run_id)
    (again,) = client.search_runs([original.info.experiment_id], "tags.reproduces_version = '1'")
    assert again.info.run_id != original.info.run_id
    assert again.data.tags["data_digest"] == original.data.tags["data_digest"]
    assert again.data.params["seed"] == original.data.params["seed"]
    for key in ("map50", "map50_95"):
        difference = again.data.metrics[key] - original.data.metrics[key]
        row = next(line for line in result.stdout.splitlines() if line.startswith(f"{key} "))
        assert row.split()[-1] == f"{difference:+.4f}"
    # the reproduction is a run, not a model version: the registry is unchanged
    assert len(client.search_model_versions(f"name='{settings.model_name}'")) == 1


def test_a_weaker_challenger_is_refused_and_a_forced_promotion_can_be_rolled_back(cycle):
    settings, env = cycle.settings, cycle.env
    emoflow(env, "data", "add-batch", "--sample", "--seed", "7", "--note", "two", "--no-trigger")
    revision = data_registry.revisions(settings)[-1].name
    api = AirflowApi(settings)
    asset_runs = lambda: [  # noqa: E731
        r["dag_run_id"] for r in api.dag_runs(runs.DAG_ID) if r["run_type"] == "asset_triggered"
    ]
    before = asset_runs()
    run = emoflow(env, "run", "--revision", revision, "--epochs", "1")
    assert "task promote: success" in run.stdout and "succeeded" in run.stdout
    assert asset_runs() == before  # the --no-trigger revision started no run of its own
    client = registry.client(settings)
    challenger = registry.version_by_alias(settings, registry.CHALLENGER)
    assert challenger.version == 2
    tags = client.get_model_version(settings.model_name, "2").tags
    assert tags["gate"] == "refused" and tags["data_revision"] == revision
    assert registry.version_by_alias(settings, registry.CHAMPION).version == 1
    gate_files = client.list_artifacts(challenger.run_id, "gate")
    assert any(f.path.endswith(".md") for f in gate_files)

    emoflow(env, "model", "promote", "2")
    assert registry.version_by_alias(settings, registry.CHAMPION).version == 2
    emoflow(env, "model", "rollback")
    assert registry.version_by_alias(settings, registry.CHAMPION).version == 1
    assert registry.version_by_alias(settings, registry.PREVIOUS).version == 2


def test_a_retried_pull_reads_the_revision_of_its_first_try(cycle):
    """A newer revision is recorded; the first run's pull task, cleared and run again under the
    scheduler (its second try), still reads r1, the revision its run was created for."""
    settings, env = cycle.settings, cycle.env
    emoflow(env, "data", "add-batch", "--sample", "--seed", "8", "--no-trigger")
    api = AirflowApi(settings)
    api._request(
        "POST", f"/api/v2/dags/{runs.DAG_ID}/clearTaskInstances",
        json={"dag_run_id": cycle.run_id, "task_ids": ["pull"], "dry_run": False,
              "only_failed": False, "include_downstream": False, "reset_dag_runs": True},
    )  # fmt: skip
    api.wait_for_run(runs.DAG_ID, cycle.run_id, timeout=300)
    assert pulled_revision(api, cycle.run_id) == ("r1", 2)


def test_an_in_process_run_is_refused_while_the_scheduler_runs(cycle):
    """`airflow dags test` beside a scheduler would have its executor run the same tasks too."""
    api = AirflowApi(cycle.settings)
    before = api.dag_runs(runs.DAG_ID)
    refused = emoflow(cycle.env, "run", "--debug", "--revision", "r1", check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("emoflow: error: the scheduler is running"), refused.stderr
    assert api.dag_runs(runs.DAG_ID) == before


@pytest.mark.faults
def test_a_bad_batch_is_refused_forced_stops_the_run_and_once_removed_the_next_one_trains(
    cycle, tmp_path
):
    settings, env = cycle.settings, cycle.env
    batch = tmp_path / "bad"
    source = data_registry.pull(settings, "r1").path
    for split in ("train", "valid", "test"):
        for kind in ("images", "labels"):
            (batch / split / kind).mkdir(parents=True)
        for i, image in enumerate(sorted((source / split / "images").iterdir())[:4]):
            shutil.copy(image, batch / split / "images" / f"bad{i}.png")
            (batch / split / "labels" / f"bad{i}.txt").write_text("4 0.5 0.5 0.6 0.6\n")
    write_data_yaml(batch)
    (batch / "train" / "labels" / "bad0.txt").write_text("9 0.5 0.5 0.6 0.6\n")
    (batch / "valid" / "labels" / "bad1.txt").write_text("3 0.5 0.5 1.4 0.6\n")
    client = registry.client(settings)
    versions_before = len(client.search_model_versions(f"name='{settings.model_name}'"))
    experiment = client.get_experiment_by_name("emotion-detector")
    runs_before = len(client.search_runs([experiment.experiment_id]))

    latest = data_registry.revisions(settings)[-1]
    refused = emoflow(env, "data", "add-batch", "--from", str(batch), check=False)
    assert refused.returncode == 2 and "train/labels/bad0.txt:1: class_id_range" in refused.stderr
    assert data_registry.revisions(settings)[-1] == latest  # nothing recorded, nothing run

    since = datetime.now(UTC)
    added = emoflow(
        env, "data", "add-batch", "--from", str(batch), "--note", "broken labels", "--force"
    )
    assert "emotion_ct will run" in added.stdout  # the asset event starts the run, nothing else
    run_id = runs.wait_for_new_run(settings, since, timeout=120)
    with pytest.raises(runs.RunFailed, match="validate"):
        runs.follow(settings, run_id, timeout=600, echo=lambda line: None)
    bad_revision = data_registry.revisions(settings)[-1].name
    text = runs.task_log(settings, run_id, "validate").read_text()
    assert "InvalidDataError" in text and f"{bad_revision}:" in text
    assert "train/labels/bad0.txt" in text and "valid/labels/bad1.txt" in text
    # Training never started: no new MLflow run.
    assert len(client.search_runs([experiment.experiment_id])) == runs_before
    assert registry.version_by_alias(settings, registry.CHAMPION).version == 1
    versions = registry.client(settings).search_model_versions(f"name='{settings.model_name}'")
    assert len(versions) == versions_before

    # Taken out again: the next revision holds exactly the data from before the bad batch.
    emoflow(env, "data", "remove", "--batch", bad_revision, "--reason", "broken labels",
            "--no-trigger")  # fmt: skip
    assert data_registry.revisions(settings)[-1].digest == latest.digest

    # The loop goes on: the next clean batch validates and trains.
    since = datetime.now(UTC)
    emoflow(env, "data", "add-batch", "--sample", "--seed", "9")
    clean = data_registry.revisions(settings)[-1]
    run_id = runs.wait_for_new_run(settings, since, timeout=120)
    runs.follow(settings, run_id, timeout=900, echo=lambda line: None)
    api = AirflowApi(settings)
    assert pulled(api, run_id, "pull")["revision"] == clean.name
    assert pulled(api, run_id, "train")["run_id"]
    trained = client.search_model_versions(f"name='{settings.model_name}'")
    assert len(trained) == versions_before + 1


@pytest.mark.faults
def test_a_person_rejects_then_approves_and_a_stale_run_cannot_take_the_champion_back(cycle):
    """With `gate.approval: human` in params, a challenger the gate passed waits in Airflow's
    `approve` task, which the CLI answers through the REST API. A second run triggered while the
    first waits stays queued (one active emotion_ct run at a time). Rejected, the champion stays
    and the rejection is in the history; the second run's challenger approved becomes champion,
    recorded as that person's approval. Then the race the compare-and-swap is for: the rejected
    run, rerun from `approve` and approved late, would put back a challenger its gate compared
    with the old champion. Its promote fails at once (no retry), the newer champion stays and
    the history gains nothing."""
    settings, env = cycle.settings, cycle.env
    original = settings.params_file.read_text()
    relaxed = yaml.safe_load(original)  # read by each task at run time: these runs pass the gate
    relaxed["gate"].update(min_improvement=-1.0, max_recall_regression=1.0, approval="human")
    settings.params_file.write_text(yaml.safe_dump(relaxed))
    api = AirflowApi(settings)
    conf = {"revision": "r1", "epochs": 1}  # the cycle's data, always valid
    try:
        champion = registry.version_by_alias(settings, registry.CHAMPION).version
        first = api.trigger(runs.DAG_ID, conf)
        version = wait_for_approval(api, first)
        second = api.trigger(runs.DAG_ID, {**conf, "imgsz": 128})  # another model, not a reuse
        time.sleep(10)  # several scheduler loops
        assert api.dag_run(runs.DAG_ID, second)["state"] == "queued"

        answer(env, api, "reject", first, "not before the holidays")
        assert task_state(api, first, "promote") == "skipped"
        assert registry.version_by_alias(settings, registry.CHAMPION).version == champion
        again = wait_for_approval(api, second)
        assert again != version
        answer(env, api, "approve", second, "looks right")
        assert task_state(api, second, "promote") == "success"
        assert registry.version_by_alias(settings, registry.CHAMPION).version == again

        history = emoflow(env, "model", "history").stdout.splitlines()
        rejection = next(line for line in history if " rejection " in line)
        assert f"v{champion} -> v{champion}" in rejection and "user:admin" in rejection
        assert f"v{version} rejected by user:admin: not before the holidays" in rejection
        approval = history[-1]
        assert " approval " in approval and f"v{champion} -> v{again}" in approval
        assert "approved by user:admin: looks right" in approval

        clear(api, first, "approve")  # what a person does in the UI: clear it and what follows
        assert wait_for_approval(api, first) == version
        late = emoflow(env, "model", "approve", "--run", first, "--reason", "changed my mind")
        assert first in late.stdout, late.stdout
        assert api.wait_for_run(runs.DAG_ID, first, 300)["state"] == "failed"
        promote = api._request(
            "GET", f"/api/v2/dags/{runs.DAG_ID}/dagRuns/{first}/taskInstances/promote"
        )  # fmt: skip
        assert promote["state"] == "failed", promote
        text = runs.task_log(settings, first, "promote", promote["try_number"]).read_text()
        assert (
            f"not promoting v{version}: the gate compared it with v{champion}, but "
            f"'{settings.model_name}' champion is v{again} now"
        ) in text
        assert not runs.task_log(settings, first, "promote", promote["try_number"] + 1).exists()
        assert registry.version_by_alias(settings, registry.CHAMPION).version == again
        assert emoflow(env, "model", "history").stdout.splitlines() == history
    finally:
        settings.params_file.write_text(original)


def wait_for_approval(api: AirflowApi, run_id: str, timeout: float = 600) -> int:
    """Wait until `run_id` asks a person to approve its challenger; returns the version."""

    def waiting() -> list[dict]:
        requests = api.pending_approvals(runs.DAG_ID)
        return [d for d in requests if d["task_instance"]["dag_run_id"] == run_id]

    deadline = time.monotonic() + timeout
    while not waiting():
        assert api.dag_run(runs.DAG_ID, run_id)["state"] != "failed", run_id
        assert time.monotonic() < deadline, f"{run_id} never asked for an approval"
        time.sleep(2)
    (detail,) = waiting()
    version = pulled(api, run_id, "gate")["challenger"]["version"]
    assert detail["subject"] == f"Promote v{version} to champion?"
    assert "Gate PASSED" in detail["body"] and "/artifactPath/gate/" in detail["body"]
    return version


def answer(env: dict, api: AirflowApi, verdict: str, run_id: str, reason: str) -> None:
    """`emoflow model approve|reject` for the one run waiting; the run then succeeds."""
    answered = emoflow(env, "model", verdict, "--reason", reason).stdout
    assert run_id in answered, answered
    assert api.wait_for_run(runs.DAG_ID, run_id, 300)["state"] == "success"


def pulled(api: AirflowApi, run_id: str, task_id: str) -> dict:
    """The return value (XCom) of a task instance of `emotion_ct`."""
    return api._request(
        "GET", f"/api/v2/dags/{runs.DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/"
        "xcomEntries/return_value",
    )["value"]  # fmt: skip


def task_state(api: AirflowApi, run_id: str, task_id: str) -> str:
    return api._request(
        "GET", f"/api/v2/dags/{runs.DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}"
    )["state"]


def kill_task_process(api: AirflowApi, run_id: str, task_id: str, timeout: float = 300) -> None:
    """SIGKILL the process of a running task instance, as `kill -9` or the OOM killer would.
    Airflow's task runner names its process after the task instance's id."""
    import psutil

    base = f"/api/v2/dags/{runs.DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        instance = api._request("GET", base)
        assert instance["state"] not in ("success", "failed", "upstream_failed"), instance
        if instance["state"] == "running":
            for process in psutil.process_iter(["cmdline"]):
                if f"airflow worker -- {instance['id']}" in " ".join(process.info["cmdline"] or []):
                    process.kill()
                    return
        time.sleep(0.2)
    raise AssertionError(f"{task_id} of {run_id} never ran")


def rerun(api: AirflowApi, run_id: str, task_id: str) -> None:
    """What a person does in the UI after a crash: clear the task and what follows it."""
    deadline = time.monotonic() + 300
    base = f"/api/v2/dags/{runs.DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}"
    while api._request("GET", base)["state"] not in ("failed", "up_for_retry"):
        assert time.monotonic() < deadline, f"{task_id} was killed but never failed"
        time.sleep(0.5)
    clear(api, run_id, task_id)


def clear(api: AirflowApi, run_id: str, task_id: str) -> None:
    """Clear a task instance and those downstream of it, as the UI's Clear does."""
    api._request(
        "POST", f"/api/v2/dags/{runs.DAG_ID}/clearTaskInstances",
        json={"dag_run_id": run_id, "task_ids": [task_id], "dry_run": False,
              "only_failed": False, "include_downstream": True, "reset_dag_runs": True},
    )  # fmt: skip


@pytest.mark.faults
def test_tasks_killed_in_the_dag_and_a_service_restart_end_in_one_clean_promotion(cycle):
    """One run whose register, gate and promote processes are each killed (SIGKILL) once and
    rerun, with the service down while promote runs: the run ends with exactly one new model
    version, champion, one history record of its promotion, no RUNNING training run, and the
    service serving it once it is back."""
    settings, env = cycle.settings, cycle.env
    original = settings.params_file.read_text()
    relaxed = yaml.safe_load(original)  # this run's challenger passes the gate
    relaxed["gate"].update(min_improvement=-1.0, max_recall_regression=1.0, approval="auto")
    settings.params_file.write_text(yaml.safe_dump(relaxed))
    api, client = AirflowApi(settings), registry.client(settings)
    try:
        emoflow(env, "start", "service")
        versions_before = len(client.search_model_versions(f"name='{settings.model_name}'"))
        moves_before = len(history.moves(settings))
        run_id = api.trigger(runs.DAG_ID, {"revision": "r1", "epochs": 1, "imgsz": 96})
        for task_id in ("register", "gate", "promote"):
            kill_task_process(api, run_id, task_id, timeout=900)
            if task_id == "promote":
                services.stop(settings, "service")
            rerun(api, run_id, task_id)
        assert api.wait_for_run(runs.DAG_ID, run_id, 600)["state"] == "success"

        new = pulled(api, run_id, "register")["version"]
        versions = client.search_model_versions(f"name='{settings.model_name}'")
        assert len(versions) == versions_before + 1
        assert registry.version_by_alias(settings, registry.CHAMPION).version == new
        moves = history.moves(settings)
        assert len(moves) == moves_before + 1 and moves[-1].to_version == new
        experiment = client.get_experiment_by_name("emotion-detector")
        assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")

        emoflow(env, "start", "service")  # it loads the champion it finds
        ready = httpx.get(f"{settings.service_url}/ready", timeout=30).json()
        assert ready["model_version"] == new, ready
    finally:
        settings.params_file.write_text(original)
