"""Shared fixtures: an isolated emoflow home per test session and real servers on loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml import services
from ml.config import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(home: Path, **overrides) -> Settings:
    """Settings whose state all lives under `home`, with free ports (never the user's .env)."""
    values = dict(
        home=home,
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",
        serve_port=free_port(),
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def mlflow_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a real MLflow server (SQLite backend, local artifacts) over HTTP."""
    settings = make_settings(tmp_path_factory.mktemp("emoflow-home"))
    services.start(services.mlflow_server(settings), settings, timeout=180)
    yield settings
    services.stop(settings, "mlflow")
