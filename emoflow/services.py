"""Start, stop and wait for the long-running local servers of the embedded default.

Each server runs in its own session (it outlives the command that started it), writes its
log to `<home>/logs/<name>.log` and its pid to `<home>/run/<name>.pid`. The CLI, the demo
and the tests all use these functions, so what is tested is what users run.
"""

from __future__ import annotations

import os
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
    ready_url: str
    env: dict[str, str]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a child process needs to see the same settings as this one."""
    env = {**os.environ}
    for field, value in settings.model_dump().items():
        if value is not None:
            env[f"EMOFLOW_{field.upper()}"] = str(value)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    env.setdefault("BENTOML_HOME", str(settings.home / "bentoml"))
    return env


def airflow_env(settings: Settings) -> dict[str, str]:
    """Airflow's configuration for the embedded default: SQLite under the home folder."""
    return {
        **settings_env(settings),
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        # Training outlasts the 10-minute default token of the Execution API.
        "AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME": "21600",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
    }


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
    return Server("service", command, f"{settings.service_url}/ready", settings_env(settings))


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
