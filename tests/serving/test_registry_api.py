"""The registry as the service reads it (serving/registry_api.py): errors without a server.
(With the real MLflow server every service test goes through it: the champion, its versions
and its ONNX file are all fetched this way.)"""

from __future__ import annotations

import pytest

from ml.registry import MlflowUnreachable
from serving import registry_api


def test_an_unreachable_registry_names_the_server(free_port, make_settings, tmp_path) -> None:
    settings = make_settings(tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(
        MlflowUnreachable, match=r"MLflow at http://127\.0\.0\.1:\d+ is unreachable"
    ):
        registry_api.version_by_alias(settings, "champion")
