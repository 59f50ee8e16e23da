"""The layers hold (import-linter's contracts in pyproject.toml, and dags/ and plugins/) and
nothing runs at import: no settings read, no metric registered, nothing heavy loaded."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

from ml.config import PROJECT_ROOT

PACKAGES = ("emoflow", "ml", "monitoring", "serving")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_layer_contracts_hold():
    result = lint_imports(PROJECT_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_the_layer_contracts_fail_on_a_library_that_imports_upward(tmp_path: Path):
    """The same contracts on a copy of the code in which ml/ imports the service."""
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, tmp_path / package)
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path)
    wrong = tmp_path / "ml" / "records.py"
    wrong.write_text(wrong.read_text() + "\nfrom serving import switch  # noqa: E402, F401\n")

    result = lint_imports(tmp_path)

    assert result.returncode == 1, result.stdout[-3000:]
    assert "0 kept, 1 broken" in result.stdout
    assert "ml.records -> serving.switch" in result.stdout


def imports_of(path: Path) -> set[str]:
    """Top-level names of every module a file imports (anywhere in it, lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def test_dags_and_plugins_import_only_the_wiring_layer_and_ml_config():
    """DAG files and the plugin are wiring only: Airflow, pendulum, the standard library,
    `emoflow` (the steps) and `ml.config` (settings)."""
    files = sorted(
        [*(PROJECT_ROOT / "dags").glob("*.py"), *(PROJECT_ROOT / "plugins").glob("*.py")]
    )
    assert len(files) >= 3, files
    for path in files:
        for name in imports_of(path):
            top = name.split(".")[0]
            ours = top in PACKAGES
            assert not ours or top == "emoflow" or name == "ml.config", f"{path.name}: {name}"
            assert ours or top in {"airflow", "pendulum", "__future__"} | sys.stdlib_module_names, (
                f"{path.name} imports {name}"
            )


IMPORT_EVERYTHING = r"""
import importlib, json, pkgutil, sys
sys.path.insert(0, sys.argv[1])
import prometheus_client
from ml import config

reads = []
original = config.Settings.__init__
def counting_init(self, *args, **kwargs):
    reads.append(sys._getframe(1).f_globals.get("__name__"))
    original(self, *args, **kwargs)
config.Settings.__init__ = counting_init

imported = []
for package in sys.argv[2].split(","):
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
        if info.name not in sys.argv[3].split(","):
            importlib.import_module(info.name)
            imported.append(info.name)
metrics = sorted(n for n in prometheus_client.REGISTRY._names_to_collectors if "emoflow" in n)
print(json.dumps({"imported": imported, "settings_read_by": reads, "metrics": metrics}))
"""

BENTO_ENTRY = "emoflow.bento"
"""`bentoml serve emoflow.bento:EmotionService` imports this module to build the service: it
is the one place that reads settings at import (the service's worker count), by design."""


def test_importing_every_module_reads_no_settings_and_registers_no_metric():
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING, str(PROJECT_ROOT), ",".join(PACKAGES),
         BENTO_ENTRY],
        capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"emoflow.steps", "ml.gate", "serving.service", "monitoring.prediction_log"} <= set(
        found["imported"]
    ), found["imported"]
    assert found["settings_read_by"] == []
    assert found["metrics"] == []


PARSE_PLUGIN = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("emoflow_plugin", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
heavy = ("torch", "ultralytics", "mlflow", "pandas", "evidently", "great_expectations", "bentoml")
print(json.dumps([m for m in heavy if m in sys.modules]))
"""


def test_the_plugin_file_imports_nothing_heavy():
    out = subprocess.run(
        [sys.executable, "-c", PARSE_PLUGIN, str(PROJECT_ROOT / "plugins" / "emoflow_plugin.py")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
