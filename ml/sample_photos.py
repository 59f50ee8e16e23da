"""Frames of real face photographs with known face boxes, for the tests and benches of the face
detector: scikit-image's `astronaut` and its LFW subset, which the package ships (a dev
dependency: `pip install -e .[dev]`; nothing here is downloaded).
"""

from __future__ import annotations

import numpy as np

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels

ASTRONAUT_FACE: Box = (175.0, 72.0, 277.0, 180.0)
"""Eileen Collins' face in `skimage.data.astronaut()` (512 x 512), hairline to chin, by eye."""


def rgb(image: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 copy of a scikit-image picture (grey, floats in [0, 1], RGBA)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:  # floats in [0, 1], or a binary mask
        image = (image.astype(np.float64) * 255).clip(0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def iou(a: Box, b: Box) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def tiles_on_photo(
    tiles: np.ndarray, backgrounds: list[np.ndarray], sizes: tuple[int, int], seed: int,
    width: int = 640, height: int = 480,
) -> tuple[np.ndarray, list[Box]]:  # fmt: skip
    """Square tiles, each scaled to a side in `sizes`, placed apart on one of `backgrounds`
    scaled to the frame; returns the frame and each tile's box."""
    rng = np.random.default_rng(seed)
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    frame = resized(background, width, height).copy()
    boxes: list[Box] = []
    for tile in tiles:
        side = int(rng.integers(sizes[0], sizes[1] + 1))
        for _ in range(1000):
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            if all(x + side + 8 <= a or c + 8 <= x or y + side + 8 <= b or d + 8 <= y
                   for a, b, c, d in boxes):  # fmt: skip
                break
        else:
            raise ValueError(f"{len(tiles)} tiles of up to {sizes[1]} px do not fit apart")
        frame[y : y + side, x : x + side] = resized(rgb(tile), side, side)
        boxes.append((x, y, x + side, y + side))
    return frame, boxes


def astronauts(
    columns: int, rows: int, width: int = 640, height: int = 480
) -> tuple[np.ndarray, list[Box]]:
    """Copies of the astronaut photo in a grid on a grey frame, and their face boxes."""
    from skimage import data

    side = min(width // columns, height // rows)
    frame = np.full((height, width, 3), 120, np.uint8)
    small, scale = resized(data.astronaut(), side, side), side / 512
    boxes = []
    for row in range(rows):
        for column in range(columns):
            x, y = column * side, row * side
            frame[y : y + side, x : x + side] = small
            x1, y1, x2, y2 = (v * scale for v in ASTRONAUT_FACE)
            boxes.append((x + x1, y + y1, x + x2, y + y2))
    return frame, boxes
