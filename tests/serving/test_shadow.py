"""Shadow scoring over HTTP: with a challenger registered beside the champion, the real service
answers with the champion only, the challenger's answers fill the shadow log, the report at
/reports/shadow.html shows the agreement, and a saturated shadow queue drops (counted) while
every request is still answered.

The challenger is the fixture model's weights exported at a smaller input (64 px against the
champion's 96), so its answers differ and the shadow thread prepares each image again."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from emoflow import services
from ml import registry, yolo
from ml.config import Settings

MODEL = "emotion-detector-shadow-test"
QUEUE = 4  # the test service's shadow queue


@pytest.fixture(scope="module")
def shadow_settings(
    free_port, mlflow_settings: Settings, weights: Path, onnx_path: Path, yolo_dir: Path,
    service_settings, register_fixture_model, tmp_path_factory: pytest.TempPathFactory,
) -> Settings:  # fmt: skip
    """Champion: the fixture model; challenger (a newer version): its weights at 64 px."""
    settings = service_settings(
        mlflow_settings, tmp_path_factory.mktemp("shadow-home"), MODEL, free_port(),
        serve_workers=1, serve_shadow_share=1.0, serve_shadow_queue=QUEUE, serve_poll_seconds=2,
        prediction_images=False,
    )  # fmt: skip
    champion = register_fixture_model(settings, weights, onnx_path)
    registry.promote(settings, champion.version, reason="test fixture")
    small = yolo_dir / "challenger" / "challenger.pt"
    small.parent.mkdir()
    shutil.copy(weights, small)
    challenger = register_fixture_model(settings, small, yolo.export_onnx(small, 64, yolo_dir))
    assert registry.version_by_alias(settings, registry.CHALLENGER) == challenger
    return settings


@pytest.fixture(scope="module")
def shadow_url(shadow_settings: Settings) -> Iterator[str]:
    services.start(services.bento_service(shadow_settings), shadow_settings, timeout=180)
    yield shadow_settings.service_url
    services.stop(shadow_settings, "service")


def _shadow_rows(settings: Settings) -> list[sqlite3.Row]:
    path = settings.prediction_log.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        try:
            return db.execute("SELECT * FROM shadow_predictions ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # no table yet
            return []


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def _wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.25)


def _versions(settings: Settings) -> tuple[int, int]:
    champion = registry.version_by_alias(settings, registry.CHAMPION).version
    return champion, registry.version_by_alias(settings, registry.CHALLENGER).version


def test_the_champion_answers_and_the_challenger_fills_the_shadow_log(
    shadow_url: str, shadow_settings: Settings, png_bytes, drawn_image, photo_scenes
) -> None:
    champion, challenger = _versions(shadow_settings)
    before = len(_shadow_rows(shadow_settings))
    images = [drawn_image(96, 96, seed) for seed in range(6)] + [photo_scenes.faces[1][1]]
    answers = []
    for image in images:
        files = {"image": ("image.png", png_bytes(image), "image/png")}
        response = httpx.post(f"{shadow_url}/predict", files=files, timeout=60)
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == str(champion)
        assert response.json()["model_version"] == champion
        answers.append(response.json())
    _wait_for(lambda: len(_shadow_rows(shadow_settings)) >= before + len(images))
    rows = _shadow_rows(shadow_settings)[before:]
    assert len(rows) == len(images)  # sent one at a time: the queue of 4 never fills
    assert {(r["champion_version"], r["challenger_version"]) for r in rows} == {
        (champion, challenger)
    }
    assert [r["champion_emotion"] for r in rows] == [a["emotion"] for a in answers]
    assert [r["champion_faces"] for r in rows] == [len(a["faces"]) for a in answers]
    assert rows[-1]["challenger_faces"] == len(answers[-1]["faces"]) >= 1  # the detector's faces

    every = _shadow_rows(shadow_settings)
    agree = sum(r["champion_emotion"] == r["challenger_emotion"] for r in every) / len(every)
    page = httpx.get(f"{shadow_url}/reports/shadow.html")
    assert page.status_code == 200
    assert f"champion v{champion} vs challenger v{challenger}" in page.text
    assert f"{len(every)} images scored in shadow" in page.text
    assert f"the challenger agreed on <b>{agree:.0%}</b>" in page.text
    assert _metric(shadow_url, "emoflow_shadow_scored_total") >= len(every)


def test_a_saturated_shadow_queue_drops_and_counts_and_every_request_is_answered(
    shadow_url: str, shadow_settings: Settings, png_bytes, drawn_image
) -> None:
    champion, _ = _versions(shadow_settings)
    crops = [png_bytes(drawn_image(96, 96, seed)) for seed in range(32)]
    files = [("images", (f"{k}.png", data, "image/png")) for k, data in enumerate(crops)]

    def batch(_: int) -> list[int]:
        response = httpx.post(f"{shadow_url}/predict/batch", files=files, timeout=120)
        assert response.status_code == 200, response.text
        return [p["model_version"] for p in response.json()["predictions"]]

    with ThreadPoolExecutor(4) as pool:
        versions = [v for answer in pool.map(batch, range(8)) for v in answer]
    assert versions == [champion] * 8 * 32  # every image answered, by the champion
    dropped = _metric(shadow_url, "emoflow_shadow_dropped_total")
    assert dropped > 0  # 256 images at once into a queue of 4
    # a later scored image carries the count into the shadow log (the queue may still be full:
    # each try that is dropped is counted too, and carried by the next row)
    one = {"image": ("image.png", crops[0], "image/png")}

    def carried() -> bool:
        assert httpx.post(f"{shadow_url}/predict", files=one, timeout=60).status_code == 200
        time.sleep(1)
        logged = sum(r["dropped_before"] for r in _shadow_rows(shadow_settings))
        return logged == _metric(shadow_url, "emoflow_shadow_dropped_total")

    _wait_for(carried)
    dropped = _metric(shadow_url, "emoflow_shadow_dropped_total")
    assert sum(r["dropped_before"] for r in _shadow_rows(shadow_settings)) == dropped
    page = httpx.get(f"{shadow_url}/reports/shadow.html").text
    assert f"{dropped:.0f} sampled images dropped" in page
