"""docker-compose.yaml, checked without Docker.

No Docker engine runs where these tests run, so the compose file is checked on paper: against the
Compose Specification's JSON schema (the copy check-jsonschema vendors), after interpolating its
`${VAR}`s the way `docker compose` does; every variable it reads is documented in .env.example;
every long-running service has a healthcheck and a restart policy, and every dependency a
condition; no secret has a default, so a missing one stops `docker compose up` with its name;
the GPU worker listens on queue `gpu` with an NVIDIA device reserved; MLflow (no login) and the
MinIO console are published on loopback only.

Each check is a function that returns what it found wrong; `test_each_check_catches_its_fault`
breaks the file once for each and shows the check notices.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"

# The secrets that must come from .env, never from a default in the compose file.
REQUIRED_SECRETS = {
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_ADMIN_PASSWORD",
    "EMOFLOW_SERVE_RELOAD_TOKEN",
}
# Any other variable or environment key named like these is a secret too.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|MINIO_ROOT_USER|ACCESS_KEY_ID")
LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|::1|localhost)$")
GOOD_RESTARTS = re.compile(r"^(always|unless-stopped|on-failure(:\d+)?)$")
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

# `$$`, `$NAME`, `${NAME}`, `${NAME<op>word}` with op one of :- - :? ? :+ +
_DOLLAR = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:-|-|:\?|\?|:\+|\+)(.*))?$", re.DOTALL)


class MissingVariable(Exception):
    """What `docker compose` stops with for `${NAME:?message}` when NAME is unset or empty."""


# ---------------------------------------------------------------- reading the files


def variable_uses(text: str) -> list[tuple[str, str | None, str]]:
    """Every `${...}`/`$NAME` in `text` as (name, operator, word); `$$` is a literal dollar."""
    uses = []
    for match in _DOLLAR.finditer(text):
        escaped, braced, bare = match.groups()
        if escaped:
            continue
        if bare:
            uses.append((bare, None, ""))
            continue
        parsed = _BRACED.match(braced)
        if parsed is None:
            raise ValueError(f"invalid interpolation ${{{braced}}}")
        uses.append((parsed[1], parsed[2], parsed[3] or ""))
    return uses


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of one string (nested defaults aside, which the file has none of)."""

    def one(match: re.Match) -> str:
        escaped, braced, bare = match.groups()
        if escaped:
            return "$"
        if bare:
            return env.get(bare, "")
        parsed = _BRACED.match(braced)
        if parsed is None:
            raise ValueError(f"invalid interpolation ${{{braced}}}")
        name, op, word = parsed[1], parsed[2], parsed[3] or ""
        value = env.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise MissingVariable(f"required variable {name} is missing a value: {word}")
        if op == ":-":
            return value or word
        if op == "-":
            return word if value is None else value
        if op == ":+":
            return word if value else ""
        if op == "+":
            return "" if value is None else word
        return value or ""

    return _DOLLAR.sub(one, text)


def strings(node: Any) -> list[str]:
    """Every string value in a loaded YAML document (keys are not interpolated)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return []


def interpolated(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolated(value, env) for value in node]
    return node


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line.strip()):
            values[match[1]] = match[2]
    return values


def filled_env() -> dict[str, str]:
    """.env.example with every empty secret given a value, as a user's .env would be."""
    return {
        name: value or (f"test-{name.lower()}" if SECRET_NAME.search(name) else value)
        for name, value in env_example().items()
    }


def command_words(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def celery_queues(service: dict) -> set[str] | None:
    """The queues an `airflow celery worker` service listens on; None if it is no worker."""
    words = command_words(service)
    if not ("celery" in words and "worker" in words):
        return None
    queues = "default"  # Airflow's [operators] default_queue
    for i, word in enumerate(words):
        if word in ("--queues", "-q") and i + 1 < len(words):
            queues = words[i + 1]
        elif word.startswith("--queues="):
            queues = word.split("=", 1)[1]
    return set(queues.split(","))


def one_shot_services(services: dict) -> set[str]:
    """Services others wait for to finish (init, bucket creation): they are meant to exit."""
    return {
        name
        for service in services.values()
        if isinstance(service.get("depends_on"), dict)
        for name, dep in service["depends_on"].items()
        if dep.get("condition") == "service_completed_successfully"
    }


def bindings(entry: Any) -> tuple[str, str]:
    """(host address, container port) of one `ports:` entry, short or long syntax."""
    if isinstance(entry, dict):
        return str(entry.get("host_ip", "")), str(entry["target"])
    text = str(entry).split("/")[0]
    host = ""
    if text.startswith("["):  # [::1]:5000:5000
        host, _, text = text[1:].partition("]:")
        return host, text.split(":")[-1]
    parts = text.split(":")
    if len(parts) == 3:
        host = parts[0]
    return host, parts[-1]


# ---------------------------------------------------------------- the checks


def schema_errors(doc: dict, env: dict[str, str]) -> list[str]:
    """(a) The interpolated file against the Compose Specification's JSON schema."""
    import jsonschema
    from check_jsonschema.builtin_schemas import get_builtin_schema

    schema = get_builtin_schema("vendor.compose-spec")
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = validator_class(schema).iter_errors(interpolated(doc, env))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def undocumented_variables(doc: dict, documented: set[str]) -> list[str]:
    """(b) Every variable the file reads is in .env.example."""
    used = {name for text in strings(doc) for name, _, _ in variable_uses(text)}
    return sorted(used - documented)


def services_without_health_or_restart(doc: dict) -> list[str]:
    """(c) Every long-running service has a healthcheck and a restart policy."""
    services = doc["services"]
    one_shot = one_shot_services(services)
    problems = []
    for name, service in services.items():
        if name in one_shot:
            continue
        check = service.get("healthcheck") or {}
        test = check.get("test")
        if not test or check.get("disable") in (True, "true") or test in ("NONE", ["NONE"]):
            problems.append(f"{name}: no healthcheck")
        if not GOOD_RESTARTS.match(str(service.get("restart", ""))):
            problems.append(f"{name}: restart is {service.get('restart')!r}")
    return problems


def dependencies_without_conditions(doc: dict) -> list[str]:
    """(c) Every depends_on names a condition; workers wait for a healthy api-server."""
    problems = []
    for name, service in doc["services"].items():
        deps = service.get("depends_on", {})
        if isinstance(deps, list):
            problems.append(f"{name}: depends_on {deps} without conditions")
            continue
        for dep, spec in deps.items():
            if dep not in doc["services"]:
                problems.append(f"{name}: depends on {dep}, which is no service")
            if (spec or {}).get("condition") not in CONDITIONS:
                problems.append(f"{name}: depends on {dep} without a condition")
        if celery_queues(service) is not None:
            api = (deps.get("airflow-apiserver") or {}).get("condition")
            if api != "service_healthy":
                problems.append(f"{name}: a worker that does not wait for a healthy api-server")
    return problems


def undeclared_volumes(doc: dict) -> list[str]:
    """(c) Every named volume a service mounts is declared (compose refuses the file otherwise)."""
    declared = set(doc.get("volumes") or {})
    problems = []
    for name, service in doc["services"].items():
        for mount in service.get("volumes", []):
            source = mount.get("source", "") if isinstance(mount, dict) else mount.split(":")[0]
            if source and not source.startswith((".", "/", "~", "$")) and source not in declared:
                problems.append(f"{name}: volume {source!r} is not declared under volumes:")
    return problems


_REQUIRED = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}$")
_URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")


def secrets_with_defaults(doc: dict) -> list[str]:
    """(d) A secret is read only as `${VAR:?message}`: no default, no literal value."""
    problems = []
    for text in set(strings(doc)):
        for name, op, word in variable_uses(text):
            if (name in REQUIRED_SECRETS or SECRET_NAME.search(name)) and op != ":?":
                problems.append(f"${{{name}{op or ''}{word}}}: a secret must be ${{{name}:?...}}")
        for password in _URL_PASSWORD.findall(text):
            if not _REQUIRED.match(password):
                problems.append(f"{text}: the password in this URL is not ${{VAR:?...}}")
    for name, service in doc["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment if "=" in item)
        for key, value in environment.items():
            if key.endswith("_FILE"):  # a path to a secret, not one
                continue
            if SECRET_NAME.search(key) and not _REQUIRED.match(str(value)):
                problems.append(f"{name}: {key}={value!r} is not ${{VAR:?...}}")
    return problems


def gpu_worker_problems(doc: dict) -> list[str]:
    """(e) A worker listens on queue `gpu` with an NVIDIA device reserved; one on `default`."""
    workers = {n: q for n, s in doc["services"].items() if (q := celery_queues(s)) is not None}
    gpu = [name for name, queues in workers.items() if "gpu" in queues]
    problems = [] if gpu else ["no Celery worker listens on queue gpu"]
    if not any("default" in queues for queues in workers.values()):
        problems.append("no Celery worker listens on queue default")
    for name in gpu:
        service = doc["services"][name]
        if workers[name] != {"gpu"}:
            problems.append(f"{name}: the GPU worker also takes {workers[name] - {'gpu'}}")
        devices = (
            service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        )
        if not any(
            d.get("driver") == "nvidia"
            and "gpu" in d.get("capabilities", [])
            and (d.get("count") or d.get("device_ids"))
            for d in devices or []
        ):
            problems.append(f"{name}: no NVIDIA GPU reserved (deploy.resources.reservations)")
    return problems


def dag_queues_and_pools_problems(doc: dict) -> list[str]:
    """(e) The queues and pools emoflow's DAGs put tasks on exist: a worker, a pool set by init."""
    text = "\n".join(p.read_text() for p in sorted((ROOT / "dags").glob("*.py")))
    listened = set().union(*(q for s in doc["services"].values() if (q := celery_queues(s))))
    init = " ".join(strings(doc["services"].get("airflow-init", {}).get("command", [])))
    problems = [
        f"the DAGs use queue {queue!r}, which no worker listens on"
        for queue in sorted(set(re.findall(r"queue=\"(\w+)\"", text)) - listened)
    ]
    problems += [
        f"the DAGs use pool {pool!r}, which airflow-init does not create"
        for pool in sorted(set(re.findall(r"pool=\"(\w+)\"", text)))
        if f"airflow pools set {pool} " not in init
    ]
    return problems


def exposed_without_login(doc: dict) -> list[str]:
    """(f) MLflow's port (no login) and MinIO's console are published on loopback only."""
    problems = []
    for name, service in doc["services"].items():
        words = command_words(service)
        if "mlflow" in words and "server" in words:
            port = words[words.index("--port") + 1] if "--port" in words else "5000"
            guarded = {port}
        elif "minio/minio" in str(service.get("image", "")):
            guarded = {"9000", "9001"}
        else:
            continue
        if service.get("network_mode") == "host":
            problems.append(f"{name}: network_mode host publishes every port")
        for entry in service.get("ports", []):
            host, target = bindings(entry)
            if target in guarded and not LOOPBACK.match(host):
                problems.append(f"{name}: {entry!r} publishes port {target} beyond loopback")
    return problems


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def doc() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_specification(doc: dict):
    assert schema_errors(doc, filled_env()) == []


def test_every_variable_the_compose_file_reads_is_in_env_example(doc: dict):
    assert undocumented_variables(doc, set(env_example())) == []


def test_every_long_running_service_has_a_healthcheck_and_a_restart_policy(doc: dict):
    assert services_without_health_or_restart(doc) == []
    assert one_shot_services(doc["services"]) == {"airflow-init", "minio-buckets"}


def test_every_dependency_waits_on_a_condition(doc: dict):
    assert dependencies_without_conditions(doc) == []
    assert undeclared_volumes(doc) == []


def test_no_secret_has_a_default(doc: dict):
    assert secrets_with_defaults(doc) == []
    used = {name for text in strings(doc) for name, _, _ in variable_uses(text)}
    assert REQUIRED_SECRETS <= used


@pytest.mark.parametrize("secret", sorted(REQUIRED_SECRETS))
def test_a_missing_secret_stops_compose_with_its_name(doc: dict, secret: str):
    """What `docker compose up` does with `${VAR:?msg}` and .env.example's empty secret."""
    env = {**filled_env(), secret: env_example()[secret]}
    with pytest.raises(MissingVariable, match=rf"\b{secret}\b"):
        interpolated(doc, env)


def test_gpu_worker_listens_on_queue_gpu_with_an_nvidia_gpu_reserved(doc: dict):
    assert gpu_worker_problems(doc) == []
    assert dag_queues_and_pools_problems(doc) == []


def test_mlflow_is_published_on_loopback_only(doc: dict):
    assert exposed_without_login(doc) == []
    assert bindings(doc["services"]["mlflow"]["ports"][0]) == ("127.0.0.1", "5000")


def test_the_service_container_sets_malloc_as_emoflow_start_service_does(
    doc: dict, tmp_path, make_settings, monkeypatch
):
    """The container runs `bentoml serve` itself, so it needs the malloc settings that
    `services.bento_service` gives the embedded service's workers."""
    from emoflow import services

    for key in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(key, raising=False)
    launched = services.bento_service(make_settings(tmp_path)).env
    container = doc["services"]["service"]["environment"]
    for key in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"):
        assert container.get(key) == launched[key], key


# ---------------------------------------------------------------- each check can fail


def _set(path: str, value: Any) -> Callable[[dict], None]:
    *parents, last = path.split(".")

    def mutate(doc: dict) -> None:
        node = doc
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


_DELETE = object()
S = "services."

FAULTS = {
    "schema: a misspelt key": (
        _set(S + "redis.healthchek", {"test": ["CMD", "true"]}),
        lambda d: schema_errors(d, filled_env()),
    ),
    "schema: a condition compose does not know": (
        _set(S + "service.depends_on", {"mlflow": {"condition": "service_ready"}}),
        lambda d: schema_errors(d, filled_env()),
    ),
    "a variable .env.example lacks": (
        _set(S + "mlflow.environment.AWS_DEFAULT_REGION", "${AWS_REGION:-us-east-1}"),
        lambda d: undocumented_variables(d, set(env_example())),
    ),
    "no healthcheck": (
        _set(S + "airflow-triggerer.healthcheck", _DELETE),
        services_without_health_or_restart,
    ),
    "no restart policy": (_set(S + "service.restart", _DELETE), services_without_health_or_restart),
    "a dependency without a condition": (
        _set(S + "service.depends_on", ["mlflow"]),
        dependencies_without_conditions,
    ),
    "a worker not waiting for the api-server": (
        _set(S + "airflow-worker-gpu.depends_on.airflow-apiserver", _DELETE),
        dependencies_without_conditions,
    ),
    "an undeclared volume": (
        _set(S + "service.volumes", ["emoflow-hom:/var/lib/emoflow"]),
        undeclared_volumes,
    ),
    "a secret with a default": (
        _set(S + "postgres.environment.POSTGRES_PASSWORD", "${POSTGRES_PASSWORD:-emoflow}"),
        secrets_with_defaults,
    ),
    "a literal secret": (
        _set(S + "mlflow.environment.AWS_SECRET_ACCESS_KEY", "change-me"),
        secrets_with_defaults,
    ),
    "a password written into a URL": (
        _set(S + "mlflow.environment.MLFLOW_BACKEND_STORE_URI", "postgresql://emoflow:pw@pg/db"),
        secrets_with_defaults,
    ),
    "the GPU worker on the default queue": (
        _set(S + "airflow-worker-gpu.command", "airflow celery worker --queues default"),
        gpu_worker_problems,
    ),
    "no GPU reserved": (_set(S + "airflow-worker-gpu.deploy", _DELETE), gpu_worker_problems),
    "MLflow on every interface": (_set(S + "mlflow.ports", ["5000:5000"]), exposed_without_login),
    "MLflow in the long syntax, on every interface": (
        _set(S + "mlflow.ports", [{"target": 5000, "published": "5000"}]),
        exposed_without_login,
    ),
    "the MinIO console on every interface": (
        _set(S + "minio.ports", ["0.0.0.0:9001:9001"]),
        exposed_without_login,
    ),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_check_catches_its_fault(doc: dict, fault: str):
    mutate, check = FAULTS[fault]
    broken = copy.deepcopy(doc)
    mutate(broken)
    assert check(broken), f"the check did not notice: {fault}"
