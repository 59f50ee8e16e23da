"""ultralytics, set up to run offline and to leave MLflow logging to emoflow.

Import ultralytics only through `load()`: the environment must be set before its first import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

_INTEGRATIONS_OFF = dict(
    sync=False, mlflow=False, dvc=False, clearml=False, comet=False, raytune=False,
    tensorboard=False, wandb=False, vscode_msg=False, openvino_msg=False,
)  # fmt: skip


def load(config_dir: Path) -> ModuleType:
    """Return the ultralytics module with hub access, auto-install and integrations off."""
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    os.environ["YOLO_OFFLINE"] = "true"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    # ultralytics' first import sets OMP_NUM_THREADS to 1 where it is unset, which would then
    # read here as the user's choice (and reach every process this one starts): take it back.
    unset = "ultralytics" not in sys.modules and "OMP_NUM_THREADS" not in os.environ
    import ultralytics

    if unset:
        os.environ.pop("OMP_NUM_THREADS", None)
    from PIL import Image
    from ultralytics.utils import patches

    # ultralytics replaces PIL.Image.open process-wide with a version that, on an unidentified
    # file, tries to pip-install pi-heif at run time. Put Pillow's own function back: emoflow
    # decodes only the formats it names, offline, and must not change Pillow for other steps.
    Image.open = patches._image_open
    ultralytics.settings.update(_INTEGRATIONS_OFF)
    # On CUDA, ultralytics' AMP self-check downloads a hub model. emoflow decides AMP itself
    # (on for CUDA, off for CPU), so the check is replaced by that decision.
    from ultralytics.engine import trainer
    from ultralytics.utils import torch_utils

    trainer.check_amp = lambda model: True
    # On CPU ultralytics gives torch cpu_count - 1 threads (one core kept for data loaders), i.e.
    # a single thread on a 2-core machine; it runs no loader workers on CPU, so use every core,
    # or OMP_NUM_THREADS where it is set: two trainings side by side with a thread per core each
    # run about 4x slower than with half the threads each (bench/training_threads.py).
    torch_utils.NUM_THREADS = int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
    _stage_font(Path(ultralytics.utils.USER_CONFIG_DIR))
    return ultralytics


def _stage_font(config_dir: Path) -> None:
    """ultralytics' dataset check fetches Arial.ttf from GitHub unless it finds it in its config
    folder; a font that ships inside matplotlib (an ultralytics dependency) stands in for it."""
    target = config_dir / "Arial.ttf"
    if not target.exists():
        import shutil

        import matplotlib

        config_dir.mkdir(parents=True, exist_ok=True)
        font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        shutil.copyfile(font, target)


def architecture(model) -> str:
    """The architecture an ultralytics model (`YOLO`) was built from, as its YAML names it
    without the suffix ('yolov8n', 'yolo26n'); a checkpoint keeps it, so weights tell what they
    are. 'unknown' for a model that does not say."""
    built_from = getattr(model.model, "yaml", {}).get("yaml_file")
    return Path(built_from).stem if built_from else "unknown"


def export_onnx(weights: Path, imgsz: int, config_dir: Path) -> Path:
    """Export `weights` (a .pt file) to ONNX with a dynamic batch axis; returns the .onnx path.

    The output is (batch, 4 + nc, anchors): xywh boxes and every class's score per anchor, for
    NMS after the model (`serving.model.decode`), for YOLOv8 and YOLO26 alike. YOLO26 also has an
    NMS-free (end-to-end) head, exported with `nms=False` as (batch, min(300, anchors), 6): one
    box, score and class id per row, without the other classes' scores, which the service
    answers with every face. Measured at 96 px on 2 CPU cores (bench/architectures.py), it was
    no faster (1.54 ms against 1.55 ms + 0.10 ms of NMS) and scored lower (test mAP50 0.146
    against 0.163); so emoflow exports ultralytics' default head for both (`nms=None`: the
    one-to-many head, on which ultralytics also validates). See docs/architectures.md.

    Besides ultralytics' own output (unchanged), the file gives `ml.embedding.EMBEDDING_OUTPUT`:
    each image's backbone embedding (batch, C), for drift monitoring."""
    from ml.embedding import add_embedding_output

    ultralytics = load(config_dir)
    model = ultralytics.YOLO(str(weights))
    exported = model.export(
        format="onnx", imgsz=imgsz, dynamic=True, simplify=True, nms=None, verbose=False
    )
    add_embedding_output(Path(exported))
    return Path(exported)
