"""A labelling batch from a window of the prediction log: the images the service answered
least surely (and those where it found no face) first, at most `labelling.max_images`, with
the model's boxes and emotions as pre-annotations.

The batch folder is a canonical YOLO dataset (`data.yaml`, `{train,valid,test}/{images,labels}`;
the split of an image follows from its key, so a re-export puts it in the same split), plus
`tasks.json` (the same images as Label Studio tasks with the answers as predictions) and
`label-config.xml` (the Label Studio labelling interface). People correct the labels in either
form and bring the batch back with `emoflow data add-batch --from <folder or export.json>`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ml import label_studio
from ml.config import EMOTIONS
from ml.dataset_format import SPLITS, write_data_yaml
from ml.params import LabellingParams
from ml.records import LabellingBatch
from monitoring.face_store import FaceStore

if TYPE_CHECKING:
    import pandas

MANIFEST = "batch.json"


def split_of(key: str, params: LabellingParams) -> str:
    """train, valid or test, from the image key (a hex digest): fixed for a key."""
    where = int(key[:8], 16) / 16**8
    if where < params.test_share:
        return "test"
    return "valid" if where < params.test_share + params.valid_share else "train"


def boxes_of(row) -> list[tuple[label_studio.Box, float]]:
    """The answer's faces as normalised YOLO boxes with their confidence."""
    boxes = []
    for face in json.loads(row["faces"]):
        x1, y1, x2, y2 = (float(v) for v in face["box"])
        w, h = (x2 - x1) / row["width"], (y2 - y1) / row["height"]
        cx, cy = (x1 + x2) / 2 / row["width"], (y1 + y2) / 2 / row["height"]
        boxes.append(((EMOTIONS.index(face["emotion"]), cx, cy, w, h), float(face["confidence"])))
    return boxes


def export_batch(
    predictions: pandas.DataFrame,
    images: FaceStore,
    out: Path,
    params: LabellingParams,
    model_version: int | None,
    window: tuple[datetime | None, datetime | None] = (None, None),
) -> LabellingBatch:
    """Write the labelling batch of `predictions` (rows of the prediction log) into `out`, all
    at once (a temporary folder renamed at the end); an existing batch at `out` is returned."""
    if (out / MANIFEST).is_file():
        return LabellingBatch.model_validate_json((out / MANIFEST).read_text())
    kept = predictions[predictions["image_key"].notna()]
    kept = kept[[images.path(key).is_file() for key in kept["image_key"]]]
    chosen = kept.sort_values("confidence", na_position="first", kind="stable")
    chosen = chosen.head(params.max_images)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        splits, tasks = dict.fromkeys(SPLITS, 0), []
        for _, row in chosen.iterrows():
            key, split = row["image_key"], split_of(row["image_key"], params)
            boxes = boxes_of(row)
            for kind in ("images", "labels"):
                (tmp / split / kind).mkdir(parents=True, exist_ok=True)
            stored = images.path(key)
            shutil.copyfile(stored, tmp / split / "images" / stored.name)
            lines = "".join(
                f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for (c, cx, cy, w, h), _ in boxes
            )
            (tmp / split / "labels" / f"{key}.txt").write_text(lines)
            image = f"{split}/images/{stored.name}"
            model = f"v{model_version}"
            tasks.append(label_studio.task(image, split, row["width"], row["height"], boxes, model))
            splits[split] += 1
        write_data_yaml(tmp)
        (tmp / "tasks.json").write_text(json.dumps(tasks, indent=1))
        (tmp / "label-config.xml").write_text(label_studio.LABEL_CONFIG)
        batch = LabellingBatch(
            path=out, tasks_path=out / "tasks.json", images=len(tasks), splits=splits,
            model_version=model_version, window_first=window[0], window_last=window[1],
        )  # fmt: skip
        (tmp / MANIFEST).write_text(batch.model_dump_json(indent=2))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return batch
