"""The images the service answered, kept for labelling: one JPEG (quality `JPEG_QUALITY`) per
prediction, named by the `image_key` of its prediction-log row. JPEG, not PNG: the prediction
log's writer encodes every answered image, on the same cores as the requests, and a 640 x 480
frame costs about a tenth of the time (and bytes) as JPEG (bench/face_store_save.py). A store
written by an older emoflow holds PNGs: they are still found, exported and pruned.

Bounded: `prune` keeps the newest `keep` images and none older than `max_age_days` (params
`labelling.keep_images`, `labelling.image_retention_days`; the `monitor` step prunes every
run). These are people's faces: keep them no longer than labelling needs, and set
`EMOFLOW_PREDICTION_IMAGES=false` where they must not be stored at all.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

SUFFIX = ".jpg"
JPEG_QUALITY = 90  # a camera's own quality; a face's features survive it
SUFFIXES = (SUFFIX, ".png")  # what the store writes, then what older stores wrote


class FaceStore:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        """The file of `key`: the JPEG, or the PNG an older emoflow wrote where only that is
        there."""
        path = self.folder / f"{key}{SUFFIX}"
        if not path.is_file():
            older = path.with_suffix(SUFFIXES[1])
            if older.is_file():
                return older
        return path

    def save(self, image: np.ndarray) -> str:
        """Write an (H, W, 3) RGB uint8 image; return its key. Written to a temporary name and
        renamed, so a reader never sees half a file."""
        import cv2

        key = uuid.uuid4().hex
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(SUFFIX, bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ValueError(f"could not encode a {image.shape} image as JPEG")
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{key}.tmp"
        tmp.write_bytes(encoded.tobytes())
        os.replace(tmp, self.folder / f"{key}{SUFFIX}")
        return key

    def load(self, key: str) -> np.ndarray | None:
        """The RGB image of `key`, or None once it has been pruned."""
        import cv2

        data = cv2.imread(str(self.path(key)), cv2.IMREAD_COLOR)
        return None if data is None else cv2.cvtColor(data, cv2.COLOR_BGR2RGB)

    def prune(self, keep: int, max_age_days: float | None) -> int:
        """Delete all but the newest `keep` images, and those older than `max_age_days`;
        return how many went."""
        if not self.folder.is_dir():
            return 0
        entries = sorted(
            ((entry.stat().st_mtime, entry.path) for entry in os.scandir(self.folder)
             if entry.name.endswith(SUFFIXES)),
            reverse=True,
        )  # fmt: skip
        oldest = time.time() - max_age_days * 86400 if max_age_days is not None else -1
        gone = 0
        for rank, (mtime, path) in enumerate(entries):
            if rank >= keep or mtime < oldest:
                Path(path).unlink(missing_ok=True)
                gone += 1
        return gone
