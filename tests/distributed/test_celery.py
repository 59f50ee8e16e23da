"""The compose topology on this machine, without containers: Airflow on the CeleryExecutor
(api-server, scheduler, dag-processor, triggerer) on the local Postgres and Redis, two Celery
workers on queues `default` and `gpu` with a home folder each, MLflow on Postgres with its
artifacts in S3 (moto's server on loopback), the DVC remote in the same S3, the data registry
cloned by each worker from its git remote (a bare repository), and the Bento service.

Every process gets the environment `docker-compose.yaml` gives its container (`x-airflow-env`,
`x-emoflow-env`, `x-s3-env`), with the compose network's names (postgres, redis, minio, mlflow,
airflow-apiserver, service) and volumes mapped to loopback addresses and folders here. Recording
a batch starts `emotion_ct` through its asset event; the run must succeed with `train` on the
`gpu` worker, everything else on the `default` one, no task handed a path of the other worker's
home, and the service serving the promoted model.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import secrets
import shlex
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from emoflow import runs, services
from emoflow.airflow_api import AirflowApi, AirflowApiError
from ml import registry
from ml.config import PROJECT_ROOT, Settings

pytestmark = [pytest.mark.distributed, pytest.mark.e2e, pytest.mark.slow]

COMPOSE = PROJECT_ROOT / "docker-compose.yaml"
POSTGRES = "postgresql://postgres@127.0.0.1:5432"  # trust auth on these machines
REDIS_DB = 13  # this test's own Redis database (the broker's queues), flushed before and after
PARAMS = {
    "sample": {"seed": 0, "train": 48, "valid": 16, "test": 16},
    "train": {"epochs": 2, "imgsz": 64, "batch": 16, "workers": 0},
    "gate": {"min_map50": 0.0, "min_map50_95": 0.0},
    "drift": {"max_rows": 200},
}
WORKERS = {"cpu-worker": "airflow-worker", "gpu-worker": "airflow-worker-gpu"}
"""Each worker's hostname here (its container's in compose) -> its compose service."""
COMPOSE_NAMES = re.compile(
    r"//(postgres|redis|minio|mlflow|airflow-apiserver|service)[:/]|/var/lib|/srv/"
)


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error}, from `variables`."""

    def one(match: re.Match) -> str:
        name, kind, rest = match[1], match[2], match[3]
        if variables.get(name):
            return variables[name]
        assert kind == "-", f"docker-compose.yaml needs {name}, which this test does not set"
        return rest

    return re.sub(r"\$\{(\w+)(?::([?-])([^}]*))?\}", one, str(value))


@dataclass
class Topology:
    root: Path
    compose: dict
    variables: dict[str, str]
    places: dict[str, str]  # a compose name or volume path -> its loopback address or folder
    ports: dict[str, int]
    databases: dict[str, str]

    def settings(self, name: str) -> Settings:
        """The settings of a process whose home is `root/name`, as compose's env gives them."""
        env = self.env("x-airflow-env", name)  # x-emoflow-env and Airflow's login
        values = {key.removeprefix("EMOFLOW_").lower(): value for key, value in env.items()
                  if key.startswith("EMOFLOW_")}  # fmt: skip
        return Settings(_env_file=None, params_file=self.root / "params.yaml",
                        airflow_port=self.ports["airflow"], **values)  # fmt: skip

    def env(self, section: str, home: str) -> dict[str, str]:
        """Compose's `section` (x-airflow-env, x-emoflow-env, x-s3-env) for a process whose home
        is `root/home`: secrets filled in, the compose network's names mapped to loopback."""
        places = {**self.places, "/var/lib/emoflow": str(self.root / home)}
        env = {}
        for key, value in self.compose[section].items():
            value = interpolate(value, self.variables)
            for name, place in places.items():
                value = value.replace(name, place)
            env[key] = value
        env["EMOFLOW_SERVE_HOST"] = "127.0.0.1"  # compose: the service's hostname
        env["EMOFLOW_SERVE_PORT"] = str(self.ports["service"])
        left = {key: value for key, value in env.items() if COMPOSE_NAMES.search(value)}
        assert not left, f"compose values this test does not map to this machine: {left}"
        return env

    def process_env(self, home: str) -> dict[str, str]:
        """An Airflow process's whole environment: emoflow's embedded launcher's (PATH, DAGs
        folder, ports) under compose's Airflow settings."""
        settings = self.settings(home)
        return {**services.airflow_env(settings), **self.env("x-airflow-env", home)}


@pytest.fixture(scope="module")
def topology(tmp_path_factory, free_port):
    root = tmp_path_factory.mktemp("celery")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    compose = yaml.safe_load(COMPOSE.read_text())
    tag = uuid.uuid4().hex[:8]
    databases = {name: f"emoflow_celery_{tag}_{name}" for name in ("airflow", "mlflow", "emoflow")}
    password = "unused-with-trust-auth"
    ports = {name: free_port() for name in ("s3", "mlflow", "airflow", "service")}
    variables = {
        "POSTGRES_PASSWORD": password, "MINIO_ROOT_USER": "emoflow",
        "MINIO_ROOT_PASSWORD": secrets.token_hex(16), "AIRFLOW_JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW_API_SECRET_KEY": secrets.token_hex(32),
        "AIRFLOW_FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "AIRFLOW_ADMIN_PASSWORD": secrets.token_hex(16),
        "EMOFLOW_SERVE_RELOAD_TOKEN": secrets.token_hex(16),
    }  # fmt: skip
    places = {
        f"emoflow:{password}@postgres/airflow": f"postgres@127.0.0.1:5432/{databases['airflow']}",
        f"emoflow:{password}@postgres/emoflow": f"postgres@127.0.0.1:5432/{databases['emoflow']}",
        "redis://redis:6379/0": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "http://minio:9000": f"http://127.0.0.1:{ports['s3']}",
        "http://mlflow:5000": f"http://127.0.0.1:{ports['mlflow']}",
        "http://airflow-apiserver:8080": f"http://127.0.0.1:{ports['airflow']}",
        "/srv/data-registry.git": str(root / "data-registry.git"),
        "/var/lib/airflow-auth": str(root / "airflow-auth"),
    }
    yield Topology(root, compose, variables, places, ports, databases)


def psql(sql: str) -> None:
    subprocess.run(["psql", f"{POSTGRES}/postgres", "-qc", sql], check=True, capture_output=True)


def redis_flush() -> None:
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()


def run_logged(command: list[str], env: dict[str, str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        code = subprocess.call(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                               cwd=PROJECT_ROOT, timeout=600)  # fmt: skip
    assert code == 0, f"{shlex.join(command)} failed; see {log}"


def wait_healthy(settings: Settings, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(f"{settings.airflow_url}/api/v2/monitor/health", timeout=10).json()
        sick = [part for part in ("metadatabase", "scheduler", "dag_processor", "triggerer")
                if (health.get(part) or {}).get("status") != "healthy"]  # fmt: skip
        if not sick:
            return
        assert time.monotonic() < deadline, f"Airflow parts not healthy: {sick}"
        time.sleep(2)


@dataclass
class Cycle:
    topology: Topology
    client: Settings
    run_id: str
    homes: dict[str, Path]  # worker hostname -> its home


@pytest.fixture(scope="module")
def cycle(topology: Topology, free_port):
    t = topology
    control = t.settings("control")  # moto, MLflow and Airflow's four parts
    workers = {host: t.settings(host) for host in WORKERS}
    client = t.settings("client")  # `emoflow data add-batch`, as a person runs it
    started: list[tuple[Settings, str]] = []

    def start(server: services.Server, settings: Settings, timeout: float = 300) -> None:
        started.append((settings, server.name))
        services.start(server, settings, timeout=timeout)

    redis_flush()
    for name in t.databases.values():
        psql(f"CREATE DATABASE {name}")
    try:
        s3 = t.env("x-s3-env", "control")
        start(services.Server("moto", [str(services.BIN / "moto_server"), "-H", "127.0.0.1",
                                       "-p", str(t.ports["s3"])],
                              f"{s3['AWS_ENDPOINT_URL']}/moto-api/", os.environ.copy()), control)  # fmt: skip
        import boto3

        boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id=s3["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket="emoflow")  # fmt: skip
        mlflow_settings = control.model_copy(update={
            "mlflow_backend_store_uri": f"{POSTGRES}/{t.databases['mlflow']}",
            "mlflow_artifacts_destination": "s3://emoflow/mlflow"})  # the compose command's  # fmt: skip
        mlflow = services.mlflow_server(mlflow_settings)
        start(dataclasses.replace(mlflow, env={**mlflow.env, **s3}), control)

        # airflow-init: migrate, the admin login's password file, the gpu pool, the registry
        env = t.process_env("control")  # the scheduler's health server off compose's 8974:
        env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"] = str(free_port())
        log = services.log_file(control, "airflow-init")
        run_logged([str(services.BIN / "airflow"), "db", "migrate"], env, log)
        auth = t.root / "airflow-auth"
        auth.mkdir()
        (auth / "passwords.json").write_text(
            f'{{"admin": "{t.variables["AIRFLOW_ADMIN_PASSWORD"]}"}}'
        )
        run_logged(
            [str(services.BIN / "airflow"), "pools", "set", "gpu", "1", "training"], env, log
        )
        run_logged([str(services.BIN / "emoflow"), "data", "init"], t.process_env("init"), log)

        for server in services.airflow_servers(control):
            start(dataclasses.replace(server, env=env), control)
        wait_healthy(control)
        for host, service in WORKERS.items():
            command = shlex.split(t.compose["services"][service]["command"])
            assert command[:5] == ["python", "-m", "emoflow.airflow_preload", "celery", "worker"]
            worker_env = {**t.process_env(host),
                          "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                          "AIRFLOW__CORE__HOSTNAME_CALLABLE": "worker_hostname.hostname",
                          "EMOFLOW_TEST_WORKER": host,
                          "PYTHONPATH": str(Path(__file__).parent)}  # fmt: skip
            start(services.Server(service, [str(services.BIN / "python"), *command[1:],
                                            "--celery-hostname", f"{host}@%h"], None, worker_env),
                  workers[host])  # fmt: skip

        since = datetime.now(UTC)
        run_logged([str(services.BIN / "emoflow"), "data", "add-batch", "--sample"],
                   t.process_env("client"), services.log_file(client, "add-batch"))  # fmt: skip
        run_id = runs.wait_for_new_run(client, since, timeout=180)
        runs.follow(client, run_id, timeout=1500, echo=lambda line: None)
        yield Cycle(t, client, run_id, {host: settings.home for host, settings in workers.items()})
    finally:
        for settings, name in reversed(started):
            services.stop(settings, name)
        for name in t.databases.values():
            psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        redis_flush()


def task_instances(api: AirflowApi, run_id: str) -> list[dict]:
    path = f"/api/v2/dags/{runs.DAG_ID}/dagRuns/{run_id}/taskInstances"
    return api._request("GET", path)["task_instances"]


def xcom(api: AirflowApi, run_id: str, task: str) -> object:
    path = f"/api/v2/dags/{runs.DAG_ID}/dagRuns/{run_id}/taskInstances/{task}/xcomEntries"
    try:
        return api._request("GET", f"{path}/return_value")["value"]
    except AirflowApiError:
        return None  # the task returned nothing


def strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


def test_train_ran_on_the_gpu_worker_and_every_other_task_on_the_default_one(cycle: Cycle):
    api = AirflowApi(cycle.client)
    assert api.dag_run(runs.DAG_ID, cycle.run_id)["run_type"] == "asset_triggered"
    ran = {ti["task_id"]: ti for ti in task_instances(api, cycle.run_id) if ti["hostname"]}
    assert {"pull", "validate", "train", "register", "gate", "drift", "promote"} <= set(ran)
    assert {task: ti["hostname"] for task, ti in ran.items()} == {
        task: "gpu-worker" if task == "train" else "cpu-worker" for task in ran
    }
    assert ran["train"]["queue"] == "gpu" and ran["gate"]["queue"] == "default"


def test_no_task_was_handed_or_read_a_path_of_the_other_workers_home(cycle: Cycle):
    api = AirflowApi(cycle.client)
    root = cycle.topology.root
    ran = {ti["task_id"]: ti["hostname"] for ti in task_instances(api, cycle.run_id)
           if ti["hostname"]}  # fmt: skip
    for task, host in ran.items():
        paths = [s for s in strings(xcom(api, cycle.run_id, task)) if s.startswith(str(root))]
        assert all(Path(p).is_relative_to(cycle.homes[host]) for p in paths), (task, paths)
    cpu, gpu = cycle.homes["cpu-worker"], cycle.homes["gpu-worker"]
    trained = strings(xcom(api, cycle.run_id, "train"))
    assert any(s.endswith(".pt") and s.startswith(str(gpu)) for s in trained)  # its own weights
    # each worker pulled the revision itself, from the registry's remotes into its own home
    for home in (cpu, gpu):
        (workspace,) = (home / "workspaces").glob("r1-*")
        assert (workspace / "data.yaml").is_file()
        assert (home / "data-registry" / ".git").is_dir()
    # the gate scored the challenger's files from MLflow, not the GPU worker's
    assert list((cpu / "runs" / "gate" / "v1" / "challenger").rglob("*.pt"))
    assert list((cpu / "runs" / "gate" / "v1" / "challenger-onnx").rglob("*.onnx"))
    # what only one side writes stayed on its side
    assert not (gpu / "gx").exists() and not (gpu / "reports").exists()
    assert not (gpu / "runs" / "gate").exists()
    assert not [p for p in cpu.rglob("*.pt") if not p.is_relative_to(cpu / "runs" / "gate")]


def test_the_service_serves_the_promoted_model(cycle: Cycle):
    service_settings = cycle.topology.settings("cpu-worker")  # compose: the same volume
    champion = registry.version_by_alias(service_settings, registry.CHAMPION)
    assert champion is not None and champion.version == 1
    env = {**services.settings_env(service_settings),
           **cycle.topology.env("x-emoflow-env", "cpu-worker")}  # fmt: skip
    service = services.bento_service(service_settings)
    services.start(dataclasses.replace(service, env=env), service_settings, timeout=300)
    try:
        ready = httpx.get(f"{service_settings.service_url}/ready", timeout=30).json()
        assert ready["version"] == champion.version
    finally:
        services.stop(service_settings, service.name)
