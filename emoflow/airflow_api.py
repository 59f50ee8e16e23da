"""Airflow's REST API (v2), as emoflow uses it: announce a data revision as an asset event,
trigger and follow a DAG run, read task states.

The embedded default logs in as Airflow's simple auth manager user `admin` with the password
Airflow generated into its home folder; any other deployment gives a token
(`EMOFLOW_AIRFLOW_TOKEN`) or a user and password (`EMOFLOW_AIRFLOW_USER`,
`EMOFLOW_AIRFLOW_PASSWORD`). Every failure is an `AirflowApiError` that says which call failed
and what Airflow answered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from ml.config import Settings

DATASET_ASSET = "emoflow-dataset"
"""The Airflow asset for the data registry: each recorded revision is an event of it, with
`extra` = {revision, digest, source}; `emotion_ct` is scheduled on it."""

LIVE_DRIFT_ASSET = "emoflow-live-drift"
"""An event of it each time live traffic drifted from the champion's training data (the
`emotion_monitor` DAG's `alarm` task), with `extra` = the report, the window, the model
version; the labelling DAG is scheduled on it."""

FINISHED = {"success", "failed"}


class AirflowApiError(RuntimeError):
    """Airflow's API is unreachable or refused a call; the message says which and why."""


class AirflowApi:
    def __init__(self, settings: Settings, timeout: float = 30) -> None:
        self.settings = settings
        self.base = settings.airflow_url
        self.timeout = timeout
        self._token: str | None = settings.airflow_token or None

    # ------------------------------------------------------------------ plumbing

    def is_up(self) -> bool:
        """Whether an API server listens at the address. Only a refused or unanswered
        connection means no: a busy server (a 2-core machine parsing DAGs) can take well over
        a few seconds to answer, and is up all the same."""
        try:
            response = httpx.get(
                f"{self.base}/api/v2/monitor/health", timeout=httpx.Timeout(self.timeout, connect=5)
            )
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return False
        except httpx.HTTPError as exc:
            raise AirflowApiError(
                f"Airflow at {self.base} accepted a connection but did not answer its health "
                f"check ({type(exc).__name__})"
            ) from None
        return response.status_code == 200

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/api/v2/monitor/health", auth=False)

    def token(self) -> str:
        if self._token is None:
            body = {"username": self.settings.airflow_user, "password": self._password()}
            self._token = self._request("POST", "/auth/token", json=body, auth=False)[
                "access_token"
            ]
        return self._token

    def _password(self) -> str:
        if self.settings.airflow_password:
            return self.settings.airflow_password
        path = self.settings.airflow_passwords_file
        try:
            return json.loads(path.read_text())[self.settings.airflow_user]
        except (OSError, ValueError, KeyError):
            raise AirflowApiError(
                f"no password for Airflow user {self.settings.airflow_user!r}: set "
                f"EMOFLOW_AIRFLOW_PASSWORD, or start Airflow with emoflow (it writes {path})"
            ) from None

    def _request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token()}"} if auth else {}
        try:
            response = httpx.request(
                method, f"{self.base}{path}", headers=headers, timeout=self.timeout, **kwargs
            )
        except httpx.HTTPError as exc:
            raise AirflowApiError(
                f"Airflow at {self.base} is unreachable ({type(exc).__name__}: {exc}); "
                "start it with `emoflow start airflow`"
            ) from None
        if response.status_code >= 400:
            raise AirflowApiError(
                f"{method} {path}: Airflow answered {response.status_code}: {response.text[:500]}"
            )
        return response.json() if response.content else None

    # ------------------------------------------------------------------ assets

    def asset_id(self, name: str) -> int | None:
        """The id of the asset `name`, None until a DAG that uses it has been parsed."""
        found = self._request("GET", "/api/v2/assets", params={"name_pattern": name})
        ids = [asset["id"] for asset in found["assets"] if asset["name"] == name]
        return ids[0] if ids else None

    def wait_for_asset(self, name: str, timeout: float) -> int:
        """The asset's id, waiting while the DAG processor has not parsed its DAG yet."""
        deadline = time.monotonic() + timeout
        while (asset := self.asset_id(name)) is None:
            if time.monotonic() > deadline:
                raise AirflowApiError(
                    f"asset {name!r} unknown to Airflow after {timeout:.0f} s: is the DAG that "
                    "uses it in the dags folder, and the dag-processor running?"
                )
            time.sleep(1)
        return asset

    def emit_asset_event(self, name: str, extra: dict[str, Any], timeout: float = 120) -> dict:
        """An event of asset `name` with `extra`; the DAGs scheduled on it get a run."""
        asset = self.wait_for_asset(name, timeout)
        return self._request(
            "POST", "/api/v2/assets/events", json={"asset_id": asset, "extra": extra}
        )

    def asset_events(self, name: str, tries: int = 20) -> list[dict]:
        """Every event of asset `name`, oldest first.

        Airflow 3.3.2 answers this call with 500 while a run an event created is still queued
        (the run's empty start_date fails its response model), which lasts until the scheduler
        starts the run: so a 500 is asked again, once a second, `tries` times."""
        asset = self.asset_id(name)
        if asset is None:
            return []
        params = {"asset_id": asset, "order_by": "timestamp", "limit": 1000}
        for _ in range(tries - 1):
            try:
                return self._request("GET", "/api/v2/assets/events", params=params)["asset_events"]
            except AirflowApiError as exc:
                if "answered 500" not in str(exc):
                    raise
                time.sleep(1)
        return self._request("GET", "/api/v2/assets/events", params=params)["asset_events"]

    # ------------------------------------------------------------------ DAG runs

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """A new run of `dag_id` with `conf`; returns its run id."""
        run = self._request(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf}
        )
        return run["dag_run_id"]

    def task_links(self, dag_id: str, run_id: str, task_id: str) -> dict[str, str | None]:
        """The extra links of a task instance, name -> address (None: the task made none)."""
        found = self._request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links"
        )
        return found["extra_links"]

    def pending_approvals(self, dag_id: str) -> list[dict]:
        """The human-in-the-loop requests of `dag_id`'s runs that have no answer yet."""
        found = self._request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/~/hitlDetails",
            params={"response_received": "false", "limit": 100},
        )  # fmt: skip
        return list(found["hitl_details"])

    def answer_approval(
        self, dag_id: str, run_id: str, task_id: str, option: str, params_input: dict
    ) -> dict:
        """Answer one human-in-the-loop request (`option`, e.g. Approve or Reject)."""
        return self._request(
            "PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
            json={"chosen_options": [option], "params_input": params_input},
        )  # fmt: skip

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def dag_runs(self, dag_id: str) -> list[dict]:
        """The runs of `dag_id`, oldest first."""
        found = self._request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "run_after", "limit": 100}
        )
        return found["dag_runs"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        found = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in found["task_instances"]}

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float,
        on_change: Callable[[str, str | None], None] | None = None,
        on_poll: Callable[[], None] | None = None,
        poll: float = 2.0,
    ) -> dict:
        """Wait until the run finishes; `on_change(task, state)` hears every task's new state,
        `on_poll()` is called at every poll. Returns the finished run (state success or failed)."""
        deadline = time.monotonic() + timeout
        seen: dict[str, str | None] = {}
        while True:
            run = self.dag_run(dag_id, run_id)
            for task, state in self.task_states(dag_id, run_id).items():
                if seen.get(task, "") != state:
                    seen[task] = state
                    if on_change is not None:
                        on_change(task, state)
            if on_poll is not None:
                on_poll()
            if run["state"] in FINISHED:
                return run
            if time.monotonic() > deadline:
                raise AirflowApiError(
                    f"run {run_id} of {dag_id} still {run['state']} after {timeout:.0f} s"
                )
            time.sleep(poll)
