"""Drawn sample data: face crops in the AffectNet YOLO layout, for tests and the demo.

AffectNet itself cannot be downloaded here, so the project draws its own faces. Each image is a
96x96 RGB crop holding one cartoon face (a skin-tone ellipse over hair and background clutter,
with noise) whose emotion shows in drawn features: brows, eyes, mouth and nose wrinkles. The
label is one YOLO line, ``class cx cy w h``, whose box is the face ellipse's bounding box.

Layout written by :func:`generate` (the same as the public ``affectnet-yolo-format`` set)::

    <out>/data.yaml
    <out>/{train,valid,test}/images/<prefix><seed>_<split>_<index:06d>.png
    <out>/{train,valid,test}/labels/<prefix><seed>_<split>_<index:06d>.txt

``data.yaml`` has no ``path:`` key on purpose: ultralytics (8.4, ``check_det_dataset``) then
resolves ``train``/``val``/``test`` against the folder that holds the YAML file, so the dataset
works from any working directory and keeps working after it is moved or pulled elsewhere.
(``path: .`` would be resolved against the working directory instead.)

Output is deterministic: each image draws from its own random generator seeded by
``(seed, split, index)``, so the same arguments give byte-identical files, and a batch made
with another ``shift`` (drift) shows the same faces under other conditions.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ml.config import EMOTIONS

log = logging.getLogger(__name__)

IMAGE_SIZE = 96
"""Width and height of every drawn image, in pixels (AffectNet's crops are 96x96)."""

SPLITS: tuple[str, ...] = ("train", "valid", "test")

_SS = 2  # supersampling factor: draw at 2x, then downsample (cheap anti-aliasing)
_MAX_PER_SPLIT = 1_000_000  # file names hold a six-digit index
# The seed follows the prefix in file names: a trailing digit would let "b1"+"0" meet "b"+"10".
_PREFIX = re.compile(r"[A-Za-z](?:[A-Za-z0-9-]{0,30}[A-Za-z-])?")


class Shift(BaseModel):
    """Knobs that make a batch differ from the others (simulated drift). Defaults = no shift."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    brightness: float = Field(
        0.0, ge=-1.0, le=1.0, description="Added to pixel values, as a fraction of full range."
    )
    contrast: float = Field(
        1.0, gt=0.0, le=10.0, description="Multiplier on each image's deviation from its mean."
    )
    face_scale: float = Field(
        1.0, ge=0.25, le=2.0, description="Multiplier on the face size (the box is clipped)."
    )
    class_weights: list[float] | None = Field(
        None,
        description="Eight relative weights for the class mix, in EMOTIONS order; None = uniform.",
    )

    @field_validator("class_weights")
    @classmethod
    def _check_weights(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if len(v) != len(EMOTIONS):
            raise ValueError(
                f"class_weights needs {len(EMOTIONS)} weights ({', '.join(EMOTIONS)}), got {len(v)}"
            )
        for name, w in zip(EMOTIONS, v, strict=True):
            if not math.isfinite(w) or w < 0:
                raise ValueError(
                    f"class_weights: weight for {name!r} must be finite and >= 0, got {w}"
                )
        if sum(v) <= 0:
            raise ValueError("class_weights: at least one weight must be > 0")
        return v


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------

_SKIN = np.array(
    [
        (255, 224, 196),
        (241, 194, 160),
        (224, 172, 135),
        (198, 134, 96),
        (170, 110, 75),
        (141, 85, 54),
        (110, 66, 42),
        (80, 50, 35),
    ],
    dtype=np.float64,
)
_HAIR = np.array(
    [
        (20, 16, 14),
        (60, 40, 25),
        (100, 70, 40),
        (170, 130, 70),
        (215, 185, 120),
        (150, 150, 150),
        (120, 45, 25),
        (235, 235, 230),
    ],
    dtype=np.float64,
)
_IRIS = np.array([(70, 45, 25), (40, 25, 15), (60, 100, 150), (70, 110, 70)], dtype=np.float64)

# Per emotion: brow (inner dv, outer dv, arch), eye openness, eye-squint flag.
# dv is in units of the face half-height; negative = up.
_BROWS = {
    0: (0.14, -0.08, 0.0),  # anger: inner ends pulled down -> V
    1: (0.00, 0.00, 0.0),  # contempt: neutral brows (one raised a little)
    2: (0.09, 0.03, 0.0),  # disgust: lowered
    3: (-0.15, 0.03, 0.0),  # fear: inner ends raised
    4: (-0.02, -0.02, 0.02),  # happy: relaxed
    5: (0.00, 0.00, 0.01),  # neutral
    6: (-0.13, 0.07, 0.0),  # sad: inner raised, outer drooping
    7: (-0.17, -0.15, 0.07),  # surprise: high and arched
}
_EYE_OPEN = {0: 0.25, 1: 0.50, 2: 0.22, 3: 1.0, 4: 0.38, 5: 0.50, 6: 0.50, 7: 1.0}


def _col(c: np.ndarray) -> tuple[int, int, int]:
    c = np.clip(c, 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def _jit(rng: np.random.Generator, scale: float) -> float:
    return float(rng.uniform(-scale, scale))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A colour gradient with a few flat shapes of clutter."""
    c0 = rng.uniform(20, 235, 3)
    c1 = np.clip(c0 + rng.normal(0, 50, 3), 0, 255)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(0.0, 1.0, 16)
    t = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    arr = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img = Image.fromarray(arr.astype(np.uint8), "RGB").resize(
        (size, size), Image.Resampling.BILINEAR
    )
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 4))):
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(0.05, 0.25) * size
        shape = rng.integers(0, 2)
        box = (x - r, y - r * rng.uniform(0.4, 1.0), x + r, y + r * rng.uniform(0.4, 1.0))
        fill = _col(rng.uniform(0, 255, 3))
        if shape == 0:
            d.ellipse(box, fill=fill)
        else:
            d.rectangle(box, fill=fill)
    return img


def _curve(cx: float, cy: float, hw: float, bend, n: int = 9) -> list[tuple[float, float]]:
    """Points of a mouth-like curve: x from cx-hw to cx+hw, y = cy + bend(t), t in [-1, 1]."""
    pts = []
    for i in range(n):
        t = -1.0 + 2.0 * i / (n - 1)
        pts.append((cx + t * hw, cy + bend(t)))
    return pts


def draw_face(
    rng: np.random.Generator, emotion_id: int, shift: Shift | None = None
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """Draw one 96x96 face crop showing ``emotion_id``.

    Returns the image and the face ellipse's bounding box as normalised, clipped YOLO
    ``(cx, cy, w, h)``. The brightness/contrast of ``shift`` are applied here too.
    """
    if not 0 <= emotion_id < len(EMOTIONS):
        raise ValueError(f"emotion_id must be in 0..{len(EMOTIONS) - 1}, got {emotion_id}")
    shift = shift or Shift()
    n = IMAGE_SIZE * _SS
    img = _background(rng, n)

    # Face geometry (in supersampled pixels). Box side ~55-95 % of the image before face_scale.
    h_frac = rng.uniform(0.60, 0.95) * shift.face_scale
    aspect = rng.uniform(0.74, 0.88)
    b = h_frac * n / 2  # semi-axis, vertical
    a = b * aspect  # semi-axis, horizontal
    cx = n / 2 + rng.uniform(-0.10, 0.10) * n
    cy = n / 2 + rng.uniform(-0.08, 0.10) * n
    theta_deg = rng.uniform(-10, 10)

    # Face layer: hair, ears, face, features; rotated about the face centre, then composited.
    layer = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    skin = _SKIN[rng.integers(0, len(_SKIN))] + rng.normal(0, 8, 3)
    dark = np.array((18.0, 12.0, 12.0)) + rng.uniform(0, 25)  # ink of the drawn lines
    hair_style = int(rng.integers(0, 4))  # 0 bald, 1 short, 2 long, 3 fringe
    hair = _col(_HAIR[rng.integers(0, len(_HAIR))] + rng.normal(0, 10, 3))
    if hair_style == 2:
        d.ellipse((cx - 1.2 * a, cy - 1.2 * b, cx + 1.2 * a, cy + 0.9 * b), fill=hair)
    elif hair_style in (1, 3):
        d.ellipse((cx - 1.08 * a, cy - 1.2 * b, cx + 1.08 * a, cy + 0.3 * b), fill=hair)
    # ears
    ear_w, ear_h = 0.16 * a, 0.26 * b
    for s in (-1, 1):
        ex = cx + s * a * 0.98
        d.ellipse(
            (ex - ear_w, cy - 0.05 * b - ear_h, ex + ear_w, cy - 0.05 * b + ear_h),
            fill=_col(skin * 0.93),
        )
    d.ellipse((cx - a, cy - b, cx + a, cy + b), fill=_col(skin))
    if hair_style == 3:  # fringe over the forehead (kept above the brows)
        d.chord((cx - 0.95 * a, cy - 1.02 * b, cx + 0.95 * a, cy - 0.25 * b), 180, 360, fill=hair)

    lw = max(3, int(round(rng.uniform(0.06, 0.085) * b)))  # feature line width

    def P(u: float, v: float) -> tuple[float, float]:
        return (cx + u * a, cy + v * b)

    # Eyes
    eye_v = -0.12 + _jit(rng, 0.03)
    eye_u = 0.38 + _jit(rng, 0.04)
    ew = (0.17 + _jit(rng, 0.02)) * a
    openness = _EYE_OPEN[emotion_id] * rng.uniform(0.85, 1.15)
    eh = ew * openness
    iris = _col(_IRIS[rng.integers(0, len(_IRIS))])
    look = _jit(rng, 0.25) * ew
    for s in (-1, 1):
        ex, ey = P(s * eye_u, eye_v)
        d.ellipse(
            (ex - ew, ey - eh, ex + ew, ey + eh),
            fill=(245, 245, 240),
            outline=_col(dark),
            width=max(1, lw // 2),
        )
        ir = min(eh * 0.95, ew * (0.38 if openness > 0.7 else 0.55))
        d.ellipse((ex + look - ir, ey - ir, ex + look + ir, ey + ir), fill=iris)
        pr = ir * 0.45
        d.ellipse((ex + look - pr, ey - pr, ex + look + pr, ey + pr), fill=(10, 10, 10))
        if emotion_id in (0, 2):  # squint: heavy lid line over the top of the eye
            d.line(
                [(ex - ew * 1.1, ey - eh * 0.6), (ex + ew * 1.1, ey - eh * 0.6)],
                fill=_col(dark),
                width=lw,
            )
        if emotion_id == 6:  # sad: upper lid drooping towards the outer corner
            d.line(
                [(ex - s * ew * 1.1, ey - eh * 0.9), (ex + s * ew * 1.1, ey + eh * 0.1)],
                fill=_col(dark),
                width=lw,
            )
        if emotion_id == 4:  # smiling eyes: lower lid pushed up (cheek arc)
            d.arc(
                (ex - ew, ey - eh * 0.2, ex + ew, ey + eh * 2.2),
                200,
                340,
                fill=_col(dark),
                width=max(1, lw // 2),
            )

    # Brows
    inner_dv, outer_dv, arch = _BROWS[emotion_id]
    brow_v = -0.36 + _jit(rng, 0.03)
    if emotion_id == 3 or emotion_id == 7:
        brow_v -= 0.04
    brow_col = _col((np.array(hair) * 0.4 + dark * 0.6 if hair_style else dark) * 0.8)
    bw = max(2, int(round(lw * rng.uniform(1.1, 1.6))))
    raised_side = 1 if rng.random() < 0.5 else -1
    for s in (-1, 1):
        di, do = inner_dv + _jit(rng, 0.02), outer_dv + _jit(rng, 0.02)
        if emotion_id == 1 and s == raised_side:
            di, do = di - 0.06, do - 0.10  # contempt: one brow raised
        ui, uo = s * (0.14 + _jit(rng, 0.03)), s * (0.62 + _jit(rng, 0.04))
        um = (ui + uo) / 2
        vm = brow_v + (di + do) / 2 - arch
        d.line(
            [P(ui, brow_v + di), P(um, vm), P(uo, brow_v + do)],
            fill=brow_col,
            width=bw,
            joint="curve",
        )

    # Nose
    nose_v = 0.16 + _jit(rng, 0.03)
    nw = (0.09 + _jit(rng, 0.02)) * a
    nx, ny = P(_jit(rng, 0.03), nose_v)
    d.arc(
        (nx - nw, ny - nw * 0.7, nx + nw, ny + nw * 0.7),
        20,
        160,
        fill=_col(dark),
        width=max(1, lw // 2),
    )
    if emotion_id == 2:  # disgust: wrinkled nose bridge
        for k in range(3):
            wy = cy + (-0.02 + 0.06 * k) * b
            d.arc(
                (cx - 0.14 * a, wy - 0.03 * b, cx + 0.14 * a, wy + 0.05 * b),
                200,
                340,
                fill=_col(dark),
                width=max(1, lw // 2),
            )

    # Mouth
    mv = 0.50 + _jit(rng, 0.04)
    mx, my = P(_jit(rng, 0.03), mv)
    if skin.mean() > 120:  # dark red lips on light skin, rose on dark skin (kept visible)
        lip = _col(np.array((120.0, 30.0, 40.0)) * rng.uniform(0.45, 0.9))
    else:
        lip = _col(np.array((200.0, 100.0, 105.0)) * rng.uniform(0.8, 1.05))
    inside = (60, 20, 25)
    teeth = (240, 238, 225)
    if emotion_id == 4:  # happy: smile, often open with teeth
        hw = (0.44 + _jit(rng, 0.05)) * a
        k = (0.22 + _jit(rng, 0.04)) * b
        if rng.random() < 0.6:
            upper = _curve(mx, my, hw, lambda t: -k * (t * t) + 0.02 * b)
            lower = _curve(mx, my, hw, lambda t: 1.6 * k * (1 - t * t) - k + 0.02 * b)
            d.polygon(upper + lower[::-1], fill=inside, outline=lip, width=max(1, lw // 2))
            tooth = _curve(mx, my, hw * 0.8, lambda t: -k * 0.64 * (t * t) + 0.1 * k)
            d.line(tooth, fill=teeth, width=max(2, lw))
        else:
            d.line(
                _curve(mx, my, hw, lambda t: k * (1 - t * t) - k * 0.5),
                fill=lip,
                width=lw,
                joint="curve",
            )
    elif emotion_id == 6:  # sad: frown
        hw = (0.34 + _jit(rng, 0.05)) * a
        k = (0.24 + _jit(rng, 0.03)) * b
        d.line(
            _curve(mx, my, hw, lambda t: -k * (1 - t * t) + k * 0.5),
            fill=lip,
            width=lw,
            joint="curve",
        )
    elif emotion_id == 1:  # contempt: one corner raised (a smirk)
        hw = (0.34 + _jit(rng, 0.04)) * a
        k = (0.32 + _jit(rng, 0.04)) * b
        side = 1 if rng.random() < 0.5 else -1
        d.line(
            _curve(mx, my, hw, lambda t: -k * max(0.0, side * t) ** 2),
            fill=lip,
            width=lw,
            joint="curve",
        )
        # dimple at the raised corner
        dx, dy = mx + side * hw * 1.08, my - k * 0.9
        d.arc(
            (dx - 0.05 * a, dy - 0.07 * b, dx + 0.05 * a, dy + 0.07 * b),
            (-60 if side > 0 else 120),
            (60 if side > 0 else 240),
            fill=_col(dark),
            width=max(1, lw // 2),
        )
    elif emotion_id == 0:  # anger: short, tight, pressed line, corners slightly down
        hw = (0.22 + _jit(rng, 0.04)) * a
        k = (0.04 + _jit(rng, 0.02)) * b
        d.line(
            _curve(mx, my, hw, lambda t: -k * (1 - t * t)),
            fill=lip,
            width=int(lw * 1.5),
            joint="curve",
        )
    elif emotion_id == 5:  # neutral: plain flat line
        hw = (0.30 + _jit(rng, 0.04)) * a
        d.line([(mx - hw, my), (mx + hw, my)], fill=lip, width=lw)
    elif emotion_id == 2:  # disgust: upper lip raised into a peak, teeth showing
        hw = (0.36 + _jit(rng, 0.04)) * a
        k = (0.24 + _jit(rng, 0.03)) * b
        upper = _curve(mx, my, hw, lambda t: -k * (1 - abs(t)) ** 0.8)
        lower = _curve(mx, my, hw, lambda t: 0.04 * b * (1 - t * t))
        d.polygon(upper + lower[::-1], fill=teeth, outline=lip, width=max(1, lw))
        d.line(
            [(mx - hw * 0.7, my - 0.01 * b), (mx + hw * 0.7, my - 0.01 * b)],
            fill=inside,
            width=max(1, lw // 2),
        )
    elif emotion_id == 3:  # fear: wide, stretched, open mouth
        hw = (0.42 + _jit(rng, 0.05)) * a
        mh = (0.12 + _jit(rng, 0.02)) * b
        d.rounded_rectangle(
            (mx - hw, my - mh, mx + hw, my + mh),
            radius=mh * 0.8,
            fill=inside,
            outline=lip,
            width=max(1, lw // 2),
        )
        d.line(
            [(mx - hw * 0.8, my - mh * 0.55), (mx + hw * 0.8, my - mh * 0.55)],
            fill=teeth,
            width=max(2, lw),
        )
    else:  # surprise: round open "O"
        hw = (0.17 + _jit(rng, 0.03)) * a
        mh = (0.24 + _jit(rng, 0.04)) * b
        d.ellipse((mx - hw, my - mh, mx + hw, my + mh), fill=inside, outline=lip, width=lw)

    # NEAREST is enough: the 2x box downsample below smooths the edges.
    layer = layer.rotate(theta_deg, resample=Image.Resampling.NEAREST, center=(cx, cy))
    img.paste(layer, (0, 0), layer)
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)

    # Pixel-level conditions: noise, then the shift's brightness and contrast.
    arr = np.array(img, dtype=np.float32)
    sigma = rng.uniform(2.0, 9.0)
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(sigma)
    if shift.contrast != 1.0:
        arr = (arr - arr.mean()) * shift.contrast + arr.mean()
    if shift.brightness:
        arr = arr + shift.brightness * 255.0
    img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")

    # Bounding box of the rotated ellipse (PIL rotates counter-clockwise for positive angles;
    # the extent is symmetric in the sign, so the formula holds either way).
    th = math.radians(theta_deg)
    half_w = math.sqrt((a * math.cos(th)) ** 2 + (b * math.sin(th)) ** 2)
    half_h = math.sqrt((a * math.sin(th)) ** 2 + (b * math.cos(th)) ** 2)
    x0, x1 = max(0.0, (cx - half_w) / n), min(1.0, (cx + half_w) / n)
    y0, y1 = max(0.0, (cy - half_h) / n), min(1.0, (cy + half_h) / n)
    box = ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
    return img, box


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def _data_yaml() -> str:
    names = "\n".join(f"  - {name}" for name in EMOTIONS)
    return (
        "# Drawn sample faces (ml/sample_data.py). No 'path:' key: ultralytics resolves the\n"
        "# splits against this file's folder, so the dataset works from any working directory.\n"
        "train: train/images\n"
        "val: valid/images\n"
        "test: test/images\n"
        f"nc: {len(EMOTIONS)}\n"
        f"names:\n{names}\n"
    )


def _check_args(
    out_dir: Path, counts: dict[str, int], seed: int, shift: Shift, prefix: str
) -> None:
    for split, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"{split} must be an int (number of images), got {count!r}")
        if not 0 <= count < _MAX_PER_SPLIT:
            raise ValueError(f"{split} must be in 0..{_MAX_PER_SPLIT - 1} images, got {count}")
    if sum(counts.values()) == 0:
        raise ValueError("train, valid and test are all 0: nothing to generate")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(shift, Shift):
        raise TypeError(f"shift must be a ml.sample_data.Shift, got {type(shift).__name__}")
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError(
            "prefix must be 1-32 ASCII letters, digits or '-', start with a letter and not end "
            f"with a digit (file names are <prefix><seed>_...), got {prefix!r}"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(
            f"{out_dir} already exists and is not an empty folder; "
            "choose a new folder or remove it first"
        )


def generate(
    out_dir: Path,
    *,
    train: int,
    valid: int,
    test: int,
    seed: int = 0,
    shift: Shift = Shift(),  # noqa: B008 - frozen model, safe as a default
    prefix: str = "s",
) -> Path:
    """Write a drawn dataset in the AffectNet YOLO layout into ``out_dir``; return data.yaml.

    Everything is written into a temporary sibling folder first and renamed into place at the
    end, so ``out_dir`` either holds the complete dataset or is left as it was. ``out_dir``
    must not exist, or be an empty folder.
    """
    out_dir = Path(out_dir)
    counts = {"train": train, "valid": valid, "test": test}
    _check_args(out_dir, counts, seed, shift, prefix)

    weights = np.full(len(EMOTIONS), 1.0 / len(EMOTIONS))
    if shift.class_weights is not None:
        weights = np.asarray(shift.class_weights, dtype=np.float64)
        weights = weights / weights.sum()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for split_no, split in enumerate(SPLITS):
            images, labels = tmp / split / "images", tmp / split / "labels"
            images.mkdir(parents=True)
            labels.mkdir(parents=True)
            for i in range(counts[split]):
                rng = np.random.default_rng([seed, split_no, i])
                emotion = int(rng.choice(len(EMOTIONS), p=weights))
                img, (bx, by, bw, bh) = draw_face(rng, emotion, shift)
                stem = f"{prefix}{seed}_{split}_{i:06d}"
                img.save(images / f"{stem}.png", format="PNG", compress_level=1)
                (labels / f"{stem}.txt").write_text(
                    f"{emotion} {bx:.6f} {by:.6f} {bw:.6f} {bh:.6f}\n", encoding="ascii"
                )
            log.info("sample data: %s %d images", split, counts[split])
        (tmp / "data.yaml").write_text(_data_yaml(), encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if out_dir.is_dir():  # an empty folder (checked above): replace it
            out_dir.rmdir()
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "data.yaml"


def compose_frame(
    faces: list[tuple[Image.Image, tuple[float, float, float, float], int]],
    *,
    width: int = 640,
    height: int = 480,
    sizes: tuple[int, int] = (80, 140),
    seed: int = 0,
) -> tuple[Image.Image, list[tuple[tuple[float, float, float, float], int]]]:
    """A camera-like frame: `faces` (crop image, its normalised YOLO face box, class id), each
    scaled to a side in `sizes` and placed apart from the others on a drawn background.

    Returns the frame and, per face, its box in frame pixels (x1, y1, x2, y2) and class id.
    Raises ValueError when the faces do not fit apart in the frame.
    """
    rng = np.random.default_rng(seed)
    frame = _background(rng, max(width, height)).crop((0, 0, width, height))
    placed: list[tuple[float, float, float, float]] = []
    truth = []
    for crop, (cx, cy, bw, bh), class_id in faces:
        side = int(rng.integers(sizes[0], sizes[1] + 1))
        for _ in range(200):
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            if all(x + side <= a or a + (c - a) <= x or y + side <= b or d <= y
                   for a, b, c, d in placed):  # fmt: skip
                break
        else:
            raise ValueError(f"{len(faces)} faces of up to {sizes[1]} px do not fit apart in "
                             f"{width}x{height}")  # fmt: skip
        frame.paste(crop.convert("RGB").resize((side, side), Image.Resampling.BILINEAR), (x, y))
        placed.append((x, y, x + side, y + side))
        box = (x + (cx - bw / 2) * side, y + (cy - bh / 2) * side,
               x + (cx + bw / 2) * side, y + (cy + bh / 2) * side)  # fmt: skip
        truth.append((box, class_id))
    return frame, truth
