"""The PyTorch runtime of the served model, on a GPU: the registry's `.pt` weights, loaded safely.

A `.pt` file is a pickle, and unpickling runs whatever callables the file names. The registry is
writable by anyone who can reach it, so a champion's weights are read by torch's weights-only
loader with exactly the classes of the model's own layers allowed (`load_checkpoint`); a file
that names anything else is refused before any of it runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

LAYER_MODULES = ("torch.nn.modules.", "ultralytics.nn.")
"""Where the classes that a weights-only load may build live: the model's layers."""


class UnsafeWeights(ValueError):
    """A .pt file names something other than tensors, plain data and model layers."""


def _layer_class(name: str) -> type | None:
    """The class a checkpoint names as `module.Class`, if it is a torch module class of torch.nn
    or ultralytics.nn (whose pickled state is only data); else None."""
    import importlib

    import torch

    module, _, attr = name.rpartition(".")
    if not f"{module}.".startswith(LAYER_MODULES):
        return None
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) and issubclass(found, torch.nn.Module) else None


def load_checkpoint(weights: Path) -> dict:
    """An ultralytics checkpoint, unpickled by torch's weights-only loader with the model's layer
    classes allowed and nothing else: a file from the registry that names any other global (a
    code payload, say) is refused before anything in it runs (`UnsafeWeights`)."""
    import torch
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    names = get_unsafe_globals_in_checkpoint(weights)  # reads the pickle, calls nothing
    classes = {name: _layer_class(name) for name in names}
    refused = sorted(name for name, found in classes.items() if found is None)
    if refused:
        raise UnsafeWeights(
            f"refused to load {weights.name}: it names {', '.join(refused)}, which no model "
            "layer is (loading a pickled file runs what it names)"
        )
    with safe_globals(list(classes.values())):
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise UnsafeWeights(f"{weights.name}: not an ultralytics checkpoint (a dict)")
    return checkpoint


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
