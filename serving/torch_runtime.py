"""The PyTorch runtime of the served model, on a GPU: the registry's `.pt` weights, loaded safely.

A `.pt` file is a pickle, and unpickling runs whatever callables the file names. The registry is
writable by anyone who can reach it, so a champion's weights are read by torch's weights-only
loader with exactly the classes of the model's own layers allowed (`ml.safe_weights`); a file
that names anything else is refused before any of it runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ml.safe_weights import load_checkpoint


def torch_forward(weights: Path, device: str) -> Callable[[np.ndarray], np.ndarray]:
    """The forward pass of the PyTorch weights on `device` (half precision on CUDA), taking and
    giving what the ONNX export does: (n, 3, h, w) float32 -> (n, 4 + nc, N) float32."""
    import torch

    from ml import yolo

    yolo.load(Path(tempfile.gettempdir()) / "emoflow-ultralytics")  # the classes the file names
    checkpoint = load_checkpoint(weights)
    model = (checkpoint.get("ema") or checkpoint["model"]).float().fuse(verbose=False).eval()
    half = device.startswith("cuda")
    model = model.to(device).half() if half else model.to(device)

    @torch.inference_mode()
    def forward(batch: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(batch).to(device, non_blocking=True)
        output = model(inputs.half() if half else inputs)
        output = output[0] if isinstance(output, list | tuple) else output
        return output.float().cpu().numpy()

    return forward


def cuda_present() -> bool:
    """Whether torch sees a CUDA GPU; torch is not imported where no NVIDIA driver is."""
    if not Path("/proc/driver/nvidia").exists():
        return False
    import torch

    return torch.cuda.is_available()
