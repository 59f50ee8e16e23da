"""Crops and frames without a trained model: which views an image gets, how boxes found in
several views become one per face, and how concurrent requests share batched model calls."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import serving.model
from ml.dataset_format import Letterbox
from serving.batching import Batcher
from serving.model import (
    MAX_BOXES_PER_VIEW,
    MAX_VIEWS,
    Detector,
    View,
    _cut_by_window,
    merge_views,
    windows,
)


def test_a_crop_is_one_view_of_the_whole_image() -> None:
    assert windows(96, 96, 96) == [(0, 0, 96, 96)]
    assert windows(120, 192, 96) == [(0, 0, 192, 120)]  # up to twice the model input


def test_a_frame_gets_overlapping_windows_that_cover_it() -> None:
    assert {w for _, _, w, _ in windows(480, 640, 96)[1:]} == {240, 160}  # 1/2, 1/3 of 480
    views = windows(960, 1280, 96)
    assert views[0] == (0, 0, 1280, 960)
    sides = sorted({w for _, _, w, h in views[1:] if w == h}, reverse=True)
    assert sides == [480, 320]  # 1/2 and 1/3 (1/4 would pass MAX_VIEWS)
    assert windows(280, 280, 96) == [(0, 0, 280, 280)]  # 140 px windows: under 1.5 x the input
    for x, y, w, h in views:
        assert 0 <= x and 0 <= y and x + w <= 1280 and y + h <= 960
    for side in sides:  # any face up to half a window wide lies wholly inside some window
        level = [(x, y) for x, y, w, _ in views[1:] if w == side]
        for fx in range(0, 1280 - side // 2 + 1, 13):
            for fy in range(0, 960 - side // 2 + 1, 13):
                assert any(
                    x <= fx
                    and fx + side // 2 <= x + side
                    and y <= fy
                    and fy + side // 2 <= y + side
                    for x, y in level
                ), (side, fx, fy)


def test_a_huge_frame_keeps_the_number_of_views_bounded() -> None:
    assert len(windows(2160, 3840, 96)) <= MAX_VIEWS


def test_boxes_cut_by_an_inner_window_edge_are_dropped() -> None:
    fit = Letterbox(1.0, 1.0, 0, 0)
    boxes = np.array([[0.0, 10, 30, 40], [50, 50, 80, 80], [90, 10, 100, 40]])
    inner = View(x=100, y=0, width=100, height=100, fit=fit)  # left and right edges are inner
    assert _cut_by_window(boxes, inner, width=300, height=100).tolist() == [True, False, True]
    whole = View(x=0, y=0, width=300, height=100, fit=fit)
    assert not _cut_by_window(boxes, whole, width=300, height=100).any()


def test_one_box_per_face_across_views() -> None:
    boxes = np.array([
        [100.0, 100, 200, 200],  # the face, from a window
        [102.0, 98, 203, 201],  # the same face, from another window
        [120.0, 120, 180, 190],  # a part of it, from a window that saw less
        [400.0, 100, 480, 180],  # another face
    ])  # fmt: skip
    confidences = np.array([0.9, 0.8, 0.95, 0.6])
    assert merge_views(boxes, confidences, iou=0.7).tolist() == [2, 3]
    confidences = np.array([0.95, 0.8, 0.9, 0.6])
    assert merge_views(boxes, confidences, iou=0.7).tolist() == [0, 3]


def test_each_view_brings_at_most_its_top_boxes_into_the_merge(onnx_path, monkeypatch) -> None:
    """A view full of confident boxes (hundreds, apart) hands only its MAX_BOXES_PER_VIEW best
    to the merge loop; a single view keeps up to max_det."""
    detector = Detector(onnx_path)
    side, nc, per_row = detector.imgsz[0], len(detector.names), 12
    centres = (np.arange(per_row) + 0.5) * side / per_row
    xs, ys = np.meshgrid(centres, centres)
    boxes = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, 4.0), np.full(xs.size, 4.0)])
    scores = np.zeros((nc, xs.size), np.float32)
    scores[0] = np.linspace(0.5, 0.99, xs.size)
    rows = np.concatenate([boxes, scores]).astype(np.float32)  # (4 + nc, 144 boxes)
    frame = detector.prepare(np.zeros((480, 640, 3), np.uint8))
    merged: list[int] = []
    real_merge = serving.model.merge_views
    monkeypatch.setattr(
        serving.model,
        "merge_views",
        lambda b, c, iou: merged.append(len(b)) or real_merge(b, c, iou),
    )
    faces = detector.faces(frame, np.stack([rows] * len(frame.views)))
    assert merged == [len(frame.views) * MAX_BOXES_PER_VIEW] and len(faces) <= merged[0]
    crop = detector.prepare(np.zeros((96, 96, 3), np.uint8))
    assert len(detector.faces(crop, rows[None])) == xs.size  # no merge: max_det (300) holds


def test_concurrent_requests_share_a_model_call(onnx_path) -> None:
    """Five requests queue while the model is busy with a sixth; they run as one batch. The
    first call is held on an event so that the others are queued before it returns."""
    detector = Detector(onnx_path)
    release, calls = threading.Event(), []

    class Held:
        def run(self, batch: np.ndarray) -> np.ndarray:
            calls.append(len(batch))
            if len(calls) == 1:
                release.wait(timeout=30)
            return detector.run(batch)

    model = Held()
    images = [np.random.default_rng(i).integers(0, 255, (96, 96, 3), np.uint8) for i in range(6)]
    prepared = [detector.prepare(image) for image in images]

    async def main() -> list[np.ndarray]:
        batcher = Batcher(max_rows=64)
        first = asyncio.create_task(batcher.run(model, prepared[0].batch))
        while not calls:
            await asyncio.sleep(0.01)
        rest = [asyncio.create_task(batcher.run(model, p.batch)) for p in prepared[1:]]
        await asyncio.sleep(0.2)
        release.set()
        outputs = await asyncio.gather(first, *rest)
        await asyncio.to_thread(batcher.close)
        return outputs

    outputs = asyncio.run(main())
    assert calls == [1, 5]
    for image, item, output in zip(images, prepared, outputs, strict=True):
        assert detector.faces(item, output) == detector.predict(image)


def test_a_failed_batch_fails_its_requests_and_the_batcher_goes_on(onnx_path) -> None:
    detector = Detector(onnx_path)
    good = detector.prepare(np.zeros((96, 96, 3), np.uint8)).batch

    async def main() -> None:
        batcher = Batcher()
        with pytest.raises(Exception, match="INVALID_ARGUMENT|Got invalid dimensions"):
            await batcher.run(detector, good[:, :1])  # one channel: ONNX Runtime refuses it
        assert (await batcher.run(detector, good)).shape[0] == 1
        await asyncio.to_thread(batcher.close)

    asyncio.run(main())
