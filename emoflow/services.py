"""Start, stop and wait for the long-running local servers of the embedded default: MLflow,
the Bento service and Airflow's four parts (api-server, scheduler, dag-processor, triggerer).

Each server runs in its own session (it outlives the command that started it), writes its
log to `<home>/logs/<name>.log` and its pid to `<home>/run/<name>.pid`. The CLI, the demo
and the tests all use these functions, so what is tested is what users run.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ml.config import PROJECT_ROOT, Settings

BIN = Path(sys.executable).parent


class ServiceError(RuntimeError):
    """A server did not start or answer; the message names its log file."""


@dataclass(frozen=True)
class Server:
    name: str
    command: list[str]
    ready_url: str | None  # answers 200 once the server is ready; None: ready once started
    env: dict[str, str]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a child process needs to see the same settings as this one."""
    env = {**os.environ}
    for field, value in settings.model_dump().items():
        if value is not None:
            env[f"EMOFLOW_{field.upper()}"] = str(value)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # the settings' server, not one this process was pointed at (mlflow.set_tracking_uri sets it)
    env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    env.setdefault("BENTOML_HOME", str(settings.home / "bentoml"))
    return env


def airflow_env(settings: Settings) -> dict[str, str]:
    """Airflow's configuration for the embedded default: SQLite under the home folder, a
    LocalExecutor with one task slot per core, emoflow's DAGs active from the start, and the
    secrets every part must share (written once into the Airflow home, readable by its owner)."""
    keys = _airflow_secrets(settings.airflow_home)
    return {
        **settings_env(settings),
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(os.cpu_count() or 1),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.airflow_url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_user}:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        # Training outlasts the 10-minute default token of the Execution API.
        "AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME": "21600",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        # The task log server of the scheduler's executor; off the API server's usual port.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(settings.airflow_port + 1),
    }


def _airflow_secrets(airflow_home: Path) -> dict[str, str]:
    """The API's session key and the JWT secret, made once: the scheduler signs task tokens
    that the API server must accept, so every Airflow part needs the same ones."""
    path = airflow_home / "emoflow-secrets.json"
    if not path.exists():
        airflow_home.mkdir(parents=True, exist_ok=True)
        keys = {name: secrets.token_urlsafe(32) for name in ("api_secret_key", "jwt_secret")}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(keys))
        tmp.chmod(0o600)
        tmp.replace(path)
    return json.loads(path.read_text())


AIRFLOW_PARTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def airflow_servers(settings: Settings) -> list[Server]:
    """Airflow's four parts; the api-server's health endpoint says when the others are up."""
    env = airflow_env(settings)
    health = f"{settings.airflow_url}/api/v2/monitor/health"
    return [
        Server(f"airflow-{part}", [*airflow_command(settings, part), part],
               health if part == "api-server" else None, env)
        for part in AIRFLOW_PARTS
    ]  # fmt: skip


def airflow_command(settings: Settings, part: str) -> list[str]:
    """How to start an Airflow part: the scheduler, whose executor forks the task processes,
    through `emoflow.airflow_preload` unless the setting `airflow_preload` is off."""
    if part == "scheduler" and settings.airflow_preload:
        return [str(BIN / "python"), "-m", "emoflow.airflow_preload"]
    return [str(BIN / "airflow")]


def airflow(settings: Settings, *args: str, log: Path | None = None) -> int:
    """Run an `airflow` command with emoflow's embedded configuration."""
    env = airflow_env(settings)
    command = [str(BIN / "airflow"), *args]
    if log is None:
        return subprocess.call(command, env=env)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        return subprocess.call(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def prepare_airflow(settings: Settings) -> None:
    """Create Airflow's SQLite database and the `gpu` pool (one slot) once."""
    if (settings.airflow_home / "airflow.db").exists():
        return
    log = log_file(settings, "airflow-init")
    if airflow(settings, "db", "migrate", log=log) != 0:
        raise ServiceError(f"airflow db migrate failed; see {log}")
    if airflow(settings, "pools", "set", "gpu", "1", "Training on the GPU worker", log=log) != 0:
        raise ServiceError(f"creating the Airflow pool 'gpu' failed; see {log}")


def start_airflow(settings: Settings, timeout: float = 300) -> None:
    """Airflow's four parts, started unless they run; returns once the API server reports the
    scheduler, dag-processor and triggerer healthy."""
    prepare_airflow(settings)
    for server in airflow_servers(settings):
        start(server, settings, timeout=timeout)
    health_url = f"{settings.airflow_url}/api/v2/monitor/health"
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(health_url, timeout=5).json()
        sick = [part for part in ("metadatabase", "scheduler", "dag_processor", "triggerer")
                if (health.get(part) or {}).get("status") != "healthy"]  # fmt: skip
        if not sick:
            return
        for server in airflow_servers(settings):
            if running_pid(settings, server.name) is None:
                log = log_file(settings, server.name)
                raise ServiceError(f"{server.name} exited; see {log}")
        if time.monotonic() > deadline:
            raise ServiceError(
                f"Airflow parts not healthy after {timeout:.0f} s: {', '.join(sick)}; see "
                f"{settings.home / 'logs'}/airflow-*.log"
            )
        time.sleep(1)


def stop_airflow(settings: Settings) -> dict[str, bool]:
    """Stop every Airflow part (the scheduler with its executor's task processes)."""
    return {server.name: stop(settings, server.name) for server in airflow_servers(settings)}


def mlflow_server(settings: Settings) -> Server:
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(BIN / "mlflow"), "server",
        "--backend-store-uri", settings.backend_store_uri,
        "--artifacts-destination", settings.artifacts_destination,
        "--host", "127.0.0.1",
        "--port", str(settings.mlflow_port),
        "--workers", "1",
    ]  # fmt: skip
    env = settings_env(settings)
    # MLflow 3's server also starts a job runner for its GenAI features (scorers, prompt
    # optimisation): eight more processes, about 300 MB each, that emoflow never uses.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return Server("mlflow", command, f"{settings.mlflow_tracking_uri}/health", env)


def bento_service(settings: Settings) -> Server:
    command = [
        str(BIN / "bentoml"), "serve", "emoflow.bento:EmotionService",
        "--working-dir", str(PROJECT_ROOT),
        "--host", settings.serve_host,
        "--port", str(settings.serve_port),
    ]  # fmt: skip
    env = settings_env(settings)
    # glibc's malloc in each worker: two arenas, not eight per core for its many threads, and a
    # fixed mmap threshold, so that a frame's arrays go back to the system when freed (issue 15:
    # workers grew from about 280 to 530 MiB under load without it).
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(256 * 1024))
    return Server("service", command, f"{settings.service_url}/ready", env)


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.home / "run" / f"{name}.pid"


def log_file(settings: Settings, name: str) -> Path:
    return settings.home / "logs" / f"{name}.log"


def running_pid(settings: Settings, name: str) -> int | None:
    try:
        pid = int(_pid_file(settings, name).read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def wait_until_ready(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with code {proc.returncode} before {url} answered")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise ServiceError(f"{url} not ready after {timeout:.0f} s ({last})")


def start(server: Server, settings: Settings, timeout: float = 120) -> int:
    """Start `server` unless it already runs; return its pid once its ready URL answers 200."""
    pid = running_pid(settings, server.name)
    if pid is not None:
        if server.ready_url:
            wait_until_ready(server.ready_url, timeout)
        return pid
    log = log_file(settings, server.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    _pid_file(settings, server.name).parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            server.command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server.env,
            cwd=settings.home,
            start_new_session=True,
        )
    _pid_file(settings, server.name).write_text(str(proc.pid))
    if server.ready_url is None:
        return proc.pid
    try:
        wait_until_ready(server.ready_url, timeout, proc)
    except ServiceError as exc:
        stop(settings, server.name)
        raise ServiceError(f"{server.name}: {exc}; see {log}") from None
    return proc.pid


def stop(settings: Settings, name: str, timeout: float = 20) -> bool:
    """Stop the server's whole process group; True if something was running."""
    pid = running_pid(settings, name)
    _pid_file(settings, name).unlink(missing_ok=True)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # reap it when it is our own child (tests)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True
