"""The optional human approval between `emotion_ct`'s gate and its promotion.

`approve` is an Airflow human-in-the-loop approval (the standard provider's `ApprovalOperator`):
with ``gate.approval: human`` in params.yaml (or ``approval`` in the run's conf) and a passing
gate, it shows the gate's summary and the links to its reports in Airflow's "required actions"
and waits, in Airflow 3.3's awaiting-input state, which holds no worker slot. Approve: the
`promote` task runs and records the move as an approval by that person. Reject, or no answer
within ``gate.approval_timeout_hours`` (its default is Reject): `promote` is skipped, the
challenger stays challenger, and the rejection, with its reason, goes into the promotion history.
With ``auto``, or when the gate refused, it answers at once and asks no one.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param

from ml.config import Settings
from ml.params import load_params

TASK_ID = "approve"


class GateApproval(ApprovalOperator):
    """Approve or reject the challenger the gate passed (see the module docstring)."""

    def execute(self, context: Any) -> Any:
        from emoflow import steps

        gate = context["ti"].xcom_pull(task_ids="gate")
        mode = (
            context["params"].get("approval") or load_params(Settings().params_file).gate.approval
        )
        if mode == "auto" or not gate["passed"]:
            return {"approved": gate["passed"], "by": None, "reason": f"gate.approval {mode}"}
        version = gate["challenger"]["version"]
        self.subject = f"Promote v{version} to champion?"
        self.body = steps.run_with_xcom(steps.approval_request, gate)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from emoflow import steps

        user = event.get("responded_by_user") or {}
        reason = (event.get("params_input") or {}).get("reason") or ""
        if not user.get("name"):  # the scheduler answered with the default: no one did in time
            reason = reason or f"no answer within {self.response_timeout}"
        decision = {
            "approved": event.get("chosen_options") == [self.APPROVE],
            "by": f"user:{user['name']}" if user.get("name") else "airflow:time-out",
            "reason": reason,
        }
        if not decision["approved"]:  # recorded first: the rejection's skip of promote raises
            model, gate = (context["ti"].xcom_pull(task_ids=t) for t in ("register", "gate"))
            steps.run_with_xcom(steps.reject, model, gate, decision)
        super().execute_complete(context, event)
        return decision


def approval_task() -> GateApproval:
    """The `approve` task; its answer time-out comes from params.yaml when the DAG is parsed."""
    hours = load_params(Settings().params_file).gate.approval_timeout_hours
    return GateApproval(
        task_id=TASK_ID,
        subject="Promote the challenger to champion?",
        defaults=ApprovalOperator.REJECT,
        params={
            "reason": Param(None, type=["null", "string"], description="Why (kept in the history).")
        },
        response_timeout=timedelta(hours=hours),
        retries=0,
    )
