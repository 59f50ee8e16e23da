"""ultralytics as emoflow loads it: offline, integrations off, Pillow left alone."""

from pathlib import Path

import PIL.Image
import pytest

from ml import yolo


@pytest.fixture(scope="module")
def ultralytics(tmp_path_factory):
    return yolo.load(tmp_path_factory.mktemp("ultralytics"))


def test_the_font_check_finds_a_staged_font_and_never_reaches_for_the_network(
    ultralytics, monkeypatch
):
    from ultralytics.utils import checks, downloads

    def no_network(*args, **kwargs):
        raise AssertionError("ultralytics tried to download")

    monkeypatch.setattr(downloads, "is_url", no_network)
    monkeypatch.setattr(downloads, "safe_download", no_network)
    font = Path(checks.check_font("Arial.ttf"))
    assert font.parent == Path(ultralytics.utils.USER_CONFIG_DIR) and font.stat().st_size > 0


def test_integrations_are_off_and_pillow_is_not_patched(ultralytics):
    assert not any(ultralytics.settings[key] for key in ("mlflow", "sync", "dvc", "clearml"))
    assert PIL.Image.open.__module__ == "PIL.Image"


@pytest.mark.parametrize("omp_threads", [None, "1"], ids=["every-core", "omp-num-threads"])
def test_cpu_training_uses_every_core_or_omp_num_threads(omp_threads, tmp_path, monkeypatch):
    import os

    import torch
    from ultralytics.utils.torch_utils import select_device

    if omp_threads is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp_threads)
    before = torch.get_num_threads()
    try:
        yolo.load(tmp_path)
        select_device("cpu", verbose=False)
        assert torch.get_num_threads() == int(omp_threads or os.cpu_count())
    finally:
        torch.set_num_threads(before)  # the rest of this process keeps its threads


def test_a_first_load_with_omp_num_threads_unset_keeps_every_core(tmp_path):
    """ultralytics' first import sets OMP_NUM_THREADS=1 where it is unset; in a fresh
    interpreter (this one has imported it already) the training still gets every core, and
    the variable is not left behind for the processes it starts."""
    import os
    import subprocess
    import sys

    code = (
        "import os, sys; from pathlib import Path; from ml import yolo\n"
        f"yolo.load(Path({str(tmp_path)!r}))\n"
        "from ultralytics.utils import torch_utils\n"
        "print(torch_utils.NUM_THREADS, os.environ.get('OMP_NUM_THREADS'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, check=True)  # fmt: skip
    assert done.stdout.split()[-2:] == [str(os.cpu_count()), "None"], done.stdout
