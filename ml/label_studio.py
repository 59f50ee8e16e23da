"""Label Studio's JSON, both ways: the tasks emoflow sends to labelling, with the champion's
boxes and emotions as pre-annotations (`predictions`), and the JSON export a labelling team
sends back (`emoflow data add-batch --from export.json`), which becomes a canonical batch.

A task's image is ``data.image``: a path relative to the JSON file's folder, or a Label Studio
URL whose file is found there (``/data/local-files/?d=<path>``, ``/data/upload/<n>/<name>``).
``data.split`` (train, valid, test; default train) says where the image goes. Boxes are
``rectanglelabels`` results in percent of the image, as Label Studio writes them. A task's
newest annotation that was not cancelled is its label; a task nobody annotated is left out
(and counted), never taken from its pre-annotation.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from ml.config import EMOTIONS
from ml.dataset_format import SPLITS, write_data_yaml

FROM_NAME, TO_NAME = "label", "image"
LABEL_CONFIG = (
    '<View>\n  <Image name="image" value="$image"/>\n'
    '  <RectangleLabels name="label" toName="image">\n'
    + "".join(f'    <Label value="{emotion}"/>\n' for emotion in EMOTIONS)
    + "  </RectangleLabels>\n</View>\n"
)
"""The labelling interface these tasks are made for (Label Studio's project settings)."""

Box = tuple[int, float, float, float, float]  # class id, cx, cy, w, h (normalised, as YOLO)


def rectangle(box: Box, width: int, height: int, score: float | None = None) -> dict[str, Any]:
    class_id, cx, cy, w, h = box
    result = {
        "type": "rectanglelabels", "from_name": FROM_NAME, "to_name": TO_NAME,
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": (cx - w / 2) * 100, "y": (cy - h / 2) * 100, "width": w * 100,
                  "height": h * 100, "rotation": 0, "rectanglelabels": [EMOTIONS[class_id]]},
    }  # fmt: skip
    if score is not None:
        result["score"] = score
    return result


def task(
    image: str, split: str, width: int, height: int, boxes: list[tuple[Box, float]], model: str
) -> dict[str, Any]:
    """One Label Studio task: the image, its split, and the model's boxes as a prediction."""
    return {
        "data": {"image": image, "split": split},
        "predictions": [{
            "model_version": model,
            "score": min((score for _, score in boxes), default=0.0),
            "result": [rectangle(box, width, height, score) for box, score in boxes],
        }],
    }  # fmt: skip


class LabelStudioError(ValueError):
    """The export cannot be read; the message names the file, the task and what is wrong."""


def to_canonical(
    export: Path, out: Path, emotion_id: Callable[[str], int]
) -> dict[str, dict[str, int]]:
    """Write the annotated tasks of a Label Studio JSON export into `out` (canonical layout);
    returns images per split per emotion (``background``: annotated with no box, ``unlabelled``:
    tasks left out because nobody annotated them). `emotion_id` maps a label to its class id
    (`ml.layouts.canonical_emotion`: the same names and aliases as every layout)."""
    try:
        tasks = json.loads(Path(export).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LabelStudioError(f"{export}: not a Label Studio JSON export ({exc})") from None
    if not isinstance(tasks, list):
        raise LabelStudioError(f"{export}: expected a list of tasks, got {type(tasks).__name__}")
    counts = {split: dict.fromkeys((*EMOTIONS, "background", "unlabelled"), 0) for split in SPLITS}
    by_name = {p.name: p for p in Path(export).parent.rglob("*") if p.is_file()}
    for number, item in enumerate(tasks, start=1):
        where = f"{export}: task {item.get('id', number)}"
        data = item.get("data") or {}
        split = data.get("split", "train")
        if split not in SPLITS:
            raise LabelStudioError(f"{where}: data.split must be one of {SPLITS}, got {split!r}")
        annotations = [a for a in item.get("annotations") or [] if not a.get("was_cancelled")]
        if not annotations:
            counts[split]["unlabelled"] += 1
            continue
        newest = max(annotations, key=lambda a: a.get("updated_at") or a.get("created_at") or "")
        image = _image_file(str(data.get("image", "")), Path(export).parent, by_name, where)
        lines, ids = [], set()
        for result in newest.get("result") or []:
            if result.get("type") != "rectanglelabels":
                continue
            value = result.get("value") or {}
            try:
                (name,) = value["rectanglelabels"]
                x, y, w, h = (float(value[k]) / 100 for k in ("x", "y", "width", "height"))
            except (KeyError, TypeError, ValueError):
                raise LabelStudioError(
                    f"{where}: a rectangle needs x, y, width, height and one label, got {value}"
                ) from None
            class_id = emotion_id(name)
            ids.add(class_id)
            lines.append(f"{class_id} {x + w / 2:.6f} {y + h / 2:.6f} {w:.6f} {h:.6f}\n")
        images_dir, labels_dir = out / split / "images", out / split / "labels"
        images_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, images_dir / image.name)
        (labels_dir / f"{image.stem}.txt").write_text("".join(lines))
        for class_id in ids:
            counts[split][EMOTIONS[class_id]] += 1
        counts[split]["background"] += not ids
    write_data_yaml(out)
    return {split: c for split, c in counts.items() if any(c.values())}


def _image_file(ref: str, folder: Path, by_name: dict[str, Path], where: str) -> Path:
    """The file a task's `data.image` names, looked up under the export's folder."""
    parsed = urlparse(ref)
    path = unquote(parse_qs(parsed.query).get("d", [parsed.path])[0])
    for candidate in (folder / path, folder / path.lstrip("/")):
        if path and candidate.is_file():
            return candidate
    name = Path(path).name
    prefix, _, rest = name.partition("-")  # uploads are renamed <8 hex digits>-<name>
    for key in (name, rest if len(prefix) == 8 and _is_hex(prefix) else None):
        if key in by_name:
            return by_name[key]
    raise LabelStudioError(f"{where}: image {ref!r} not found under {folder}")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text.lower())
