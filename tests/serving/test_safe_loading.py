"""Registry files are untrusted: a `.pt` that names anything but model layers is refused before
any of it runs, and the service's per-request pixel budget refuses an image before decoding it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.safe_weights import UnsafeWeights, load_checkpoint
from serving.requests import ApiError, PixelBudget, decode_images
from serving.torch_runtime import torch_forward


@pytest.mark.parametrize(("how", "named"), [("exec", "builtins.exec"), ("system", "system")])
def test_a_pickled_code_payload_is_refused_and_runs_nothing(
    tmp_path: Path, weights: Path, code_payload, how: str, named: str
) -> None:
    import torch

    marker = tmp_path / "ran"
    evil = tmp_path / "champion.pt"
    real = torch.load(weights, map_location="cpu", weights_only=False)  # the fixture's own file
    torch.save({**real, "train_args": code_payload(marker, how)}, evil)  # a real model beside it

    with pytest.raises(UnsafeWeights, match=named):
        torch_forward(evil, "cpu")
    with pytest.raises(UnsafeWeights, match=named):
        load_checkpoint(evil)
    assert not marker.exists()

    torch.load(evil, map_location="cpu", weights_only=False)  # what the service used to do
    assert marker.exists(), "the payload did not run when loaded the old way: the test is void"


def test_a_models_own_checkpoint_loads(weights: Path) -> None:
    checkpoint = load_checkpoint(weights)
    assert type(checkpoint["model"]).__name__ == "DetectionModel"


def _blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_pixel_budget_refuses_the_image_that_passes_it_before_decoding() -> None:
    files = [_blank_png(100, 100), _blank_png(100, 50), _blank_png(100, 60)]
    assert len(decode_images(files[:2], 10**6, PixelBudget(15_000))) == 2
    with pytest.raises(ApiError) as raised:
        decode_images(files, 10**6, PixelBudget(15_000))
    error = raised.value
    assert (error.status, error.error) == (413, "request too large")
    assert error.extra == {"limit": 15_000, "index": 2}
    assert "15000 decoded pixels" in error.detail and "100x60" in error.detail
    assert "EMOFLOW_SERVE_MAX_REQUEST_PIXELS" in error.detail
