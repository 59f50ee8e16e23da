"""One drawn face crop: the 96x96 RGB image of a cartoon face and its YOLO box.

`draw_face` draws a skin-tone ellipse over hair and background clutter, with ears, lets
`ml.face_expression.draw_expression` draw the features that show the emotion (brows, eyes,
mouth and nose wrinkles), rotates the face a little, adds noise and applies the batch's
`Shift`. The box is the face ellipse's bounding box. Everything random comes from the
generator passed in, so the same generator state gives the same image.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ml.config import EMOTIONS
from ml.face_expression import Face, col, draw_expression

IMAGE_SIZE = 96
"""Width and height of every drawn image, in pixels (AffectNet's crops are 96x96)."""

_SS = 2  # supersampling factor: draw at 2x, then downsample (cheap anti-aliasing)


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


def background(rng: np.random.Generator, size: int) -> Image.Image:
    """A colour gradient with a few flat shapes of clutter (also behind the faces of
    `ml.sample_data.compose_frame`)."""
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
        fill = col(rng.uniform(0, 255, 3))
        if shape == 0:
            d.ellipse(box, fill=fill)
        else:
            d.rectangle(box, fill=fill)
    return img


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
    img = background(rng, n)

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
    hair = col(_HAIR[rng.integers(0, len(_HAIR))] + rng.normal(0, 10, 3))
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
            fill=col(skin * 0.93),
        )
    d.ellipse((cx - a, cy - b, cx + a, cy + b), fill=col(skin))
    if hair_style == 3:  # fringe over the forehead (kept above the brows)
        d.chord((cx - 0.95 * a, cy - 1.02 * b, cx + 0.95 * a, cy - 0.25 * b), 180, 360, fill=hair)

    lw = max(3, int(round(rng.uniform(0.06, 0.085) * b)))  # feature line width
    face = Face(cx, cy, a, b, lw, dark, skin, hair, hair_style)
    draw_expression(d, rng, emotion_id, face)

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
