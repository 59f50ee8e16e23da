"""The expression of a drawn face: the eyes, brows, nose and mouth that show its emotion.

`draw_expression` draws them onto the face layer that `ml.face_drawing.draw_face` has drawn the
head on, at places given in units of the face ellipse's semi-axes (`Face.at`). Each feature
draws its own jitter from the face's random generator, in a fixed order (eyes, brows, nose,
mouth), so that the same generator state always gives the same face.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

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


def col(c: np.ndarray) -> tuple[int, int, int]:
    """An RGB fill from a float colour, clipped to 0..255."""
    c = np.clip(c, 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def jit(rng: np.random.Generator, scale: float) -> float:
    """A uniform jitter in [-scale, scale)."""
    return float(rng.uniform(-scale, scale))


@dataclass(frozen=True)
class Face:
    """What the features need of the head drawn under them (supersampled pixels)."""

    cx: float  # centre of the face ellipse
    cy: float
    a: float  # semi-axis, horizontal
    b: float  # semi-axis, vertical
    lw: int  # feature line width
    dark: np.ndarray  # ink of the drawn lines
    skin: np.ndarray
    hair: tuple[int, int, int]
    hair_style: int  # 0 bald, 1 short, 2 long, 3 fringe

    def at(self, u: float, v: float) -> tuple[float, float]:
        """The point ``u`` half-widths right and ``v`` half-heights down of the centre."""
        return (self.cx + u * self.a, self.cy + v * self.b)


def draw_expression(
    d: ImageDraw.ImageDraw, rng: np.random.Generator, emotion_id: int, face: Face
) -> None:
    """Draw the eyes, brows, nose and mouth showing ``emotion_id`` (0..7, EMOTIONS order)."""
    _eyes(d, rng, emotion_id, face)
    _brows(d, rng, emotion_id, face)
    _nose(d, rng, emotion_id, face)
    _mouth(d, rng, emotion_id, face)


def _curve(
    cx: float, cy: float, hw: float, bend: Callable[[float], float], n: int = 9
) -> list[tuple[float, float]]:
    """Points of a mouth-like curve: x from cx-hw to cx+hw, y = cy + bend(t), t in [-1, 1]."""
    pts = []
    for i in range(n):
        t = -1.0 + 2.0 * i / (n - 1)
        pts.append((cx + t * hw, cy + bend(t)))
    return pts


def _eyes(d: ImageDraw.ImageDraw, rng: np.random.Generator, emotion_id: int, face: Face) -> None:
    """Eyes, with the lid lines of a squint, a sad droop or a smile."""
    a, lw, dark, P = face.a, face.lw, face.dark, face.at
    eye_v = -0.12 + jit(rng, 0.03)
    eye_u = 0.38 + jit(rng, 0.04)
    ew = (0.17 + jit(rng, 0.02)) * a
    openness = _EYE_OPEN[emotion_id] * rng.uniform(0.85, 1.15)
    eh = ew * openness
    iris = col(_IRIS[rng.integers(0, len(_IRIS))])
    look = jit(rng, 0.25) * ew
    for s in (-1, 1):
        ex, ey = P(s * eye_u, eye_v)
        d.ellipse(
            (ex - ew, ey - eh, ex + ew, ey + eh),
            fill=(245, 245, 240),
            outline=col(dark),
            width=max(1, lw // 2),
        )
        ir = min(eh * 0.95, ew * (0.38 if openness > 0.7 else 0.55))
        d.ellipse((ex + look - ir, ey - ir, ex + look + ir, ey + ir), fill=iris)
        pr = ir * 0.45
        d.ellipse((ex + look - pr, ey - pr, ex + look + pr, ey + pr), fill=(10, 10, 10))
        if emotion_id in (0, 2):  # squint: heavy lid line over the top of the eye
            d.line(
                [(ex - ew * 1.1, ey - eh * 0.6), (ex + ew * 1.1, ey - eh * 0.6)],
                fill=col(dark),
                width=lw,
            )
        if emotion_id == 6:  # sad: upper lid drooping towards the outer corner
            d.line(
                [(ex - s * ew * 1.1, ey - eh * 0.9), (ex + s * ew * 1.1, ey + eh * 0.1)],
                fill=col(dark),
                width=lw,
            )
        if emotion_id == 4:  # smiling eyes: lower lid pushed up (cheek arc)
            d.arc(
                (ex - ew, ey - eh * 0.2, ex + ew, ey + eh * 2.2),
                200,
                340,
                fill=col(dark),
                width=max(1, lw // 2),
            )


def _brows(d: ImageDraw.ImageDraw, rng: np.random.Generator, emotion_id: int, face: Face) -> None:
    """Brows, placed and tilted per emotion (`_BROWS`); contempt raises one."""
    hair, hair_style, lw, dark, P = face.hair, face.hair_style, face.lw, face.dark, face.at
    inner_dv, outer_dv, arch = _BROWS[emotion_id]
    brow_v = -0.36 + jit(rng, 0.03)
    if emotion_id == 3 or emotion_id == 7:
        brow_v -= 0.04
    brow_col = col((np.array(hair) * 0.4 + dark * 0.6 if hair_style else dark) * 0.8)
    bw = max(2, int(round(lw * rng.uniform(1.1, 1.6))))
    raised_side = 1 if rng.random() < 0.5 else -1
    for s in (-1, 1):
        di, do = inner_dv + jit(rng, 0.02), outer_dv + jit(rng, 0.02)
        if emotion_id == 1 and s == raised_side:
            di, do = di - 0.06, do - 0.10  # contempt: one brow raised
        ui, uo = s * (0.14 + jit(rng, 0.03)), s * (0.62 + jit(rng, 0.04))
        um = (ui + uo) / 2
        vm = brow_v + (di + do) / 2 - arch
        d.line(
            [P(ui, brow_v + di), P(um, vm), P(uo, brow_v + do)],
            fill=brow_col,
            width=bw,
            joint="curve",
        )


def _nose(d: ImageDraw.ImageDraw, rng: np.random.Generator, emotion_id: int, face: Face) -> None:
    """Nose, with the wrinkles of disgust."""
    cx, cy, a, b, lw, dark, P = face.cx, face.cy, face.a, face.b, face.lw, face.dark, face.at
    nose_v = 0.16 + jit(rng, 0.03)
    nw = (0.09 + jit(rng, 0.02)) * a
    nx, ny = P(jit(rng, 0.03), nose_v)
    d.arc(
        (nx - nw, ny - nw * 0.7, nx + nw, ny + nw * 0.7),
        20,
        160,
        fill=col(dark),
        width=max(1, lw // 2),
    )
    if emotion_id == 2:  # disgust: wrinkled nose bridge
        for k in range(3):
            wy = cy + (-0.02 + 0.06 * k) * b
            d.arc(
                (cx - 0.14 * a, wy - 0.03 * b, cx + 0.14 * a, wy + 0.05 * b),
                200,
                340,
                fill=col(dark),
                width=max(1, lw // 2),
            )


def _mouth(d: ImageDraw.ImageDraw, rng: np.random.Generator, emotion_id: int, face: Face) -> None:
    """Mouth, one shape per emotion."""
    a, b, lw, dark, skin, P = face.a, face.b, face.lw, face.dark, face.skin, face.at
    mv = 0.50 + jit(rng, 0.04)
    mx, my = P(jit(rng, 0.03), mv)
    if skin.mean() > 120:  # dark red lips on light skin, rose on dark skin (kept visible)
        lip = col(np.array((120.0, 30.0, 40.0)) * rng.uniform(0.45, 0.9))
    else:
        lip = col(np.array((200.0, 100.0, 105.0)) * rng.uniform(0.8, 1.05))
    inside = (60, 20, 25)
    teeth = (240, 238, 225)
    if emotion_id == 4:  # happy: smile, often open with teeth
        hw = (0.44 + jit(rng, 0.05)) * a
        k = (0.22 + jit(rng, 0.04)) * b
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
        hw = (0.34 + jit(rng, 0.05)) * a
        k = (0.24 + jit(rng, 0.03)) * b
        d.line(
            _curve(mx, my, hw, lambda t: -k * (1 - t * t) + k * 0.5),
            fill=lip,
            width=lw,
            joint="curve",
        )
    elif emotion_id == 1:  # contempt: one corner raised (a smirk)
        hw = (0.34 + jit(rng, 0.04)) * a
        k = (0.32 + jit(rng, 0.04)) * b
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
            fill=col(dark),
            width=max(1, lw // 2),
        )
    elif emotion_id == 0:  # anger: short, tight, pressed line, corners slightly down
        hw = (0.22 + jit(rng, 0.04)) * a
        k = (0.04 + jit(rng, 0.02)) * b
        d.line(
            _curve(mx, my, hw, lambda t: -k * (1 - t * t)),
            fill=lip,
            width=int(lw * 1.5),
            joint="curve",
        )
    elif emotion_id == 5:  # neutral: plain flat line
        hw = (0.30 + jit(rng, 0.04)) * a
        d.line([(mx - hw, my), (mx + hw, my)], fill=lip, width=lw)
    elif emotion_id == 2:  # disgust: upper lip raised into a peak, teeth showing
        hw = (0.36 + jit(rng, 0.04)) * a
        k = (0.24 + jit(rng, 0.03)) * b
        upper = _curve(mx, my, hw, lambda t: -k * (1 - abs(t)) ** 0.8)
        lower = _curve(mx, my, hw, lambda t: 0.04 * b * (1 - t * t))
        d.polygon(upper + lower[::-1], fill=teeth, outline=lip, width=max(1, lw))
        d.line(
            [(mx - hw * 0.7, my - 0.01 * b), (mx + hw * 0.7, my - 0.01 * b)],
            fill=inside,
            width=max(1, lw // 2),
        )
    elif emotion_id == 3:  # fear: wide, stretched, open mouth
        hw = (0.42 + jit(rng, 0.05)) * a
        mh = (0.12 + jit(rng, 0.02)) * b
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
        hw = (0.17 + jit(rng, 0.03)) * a
        mh = (0.24 + jit(rng, 0.04)) * b
        d.ellipse((mx - hw, my - mh, mx + hw, my + mh), fill=inside, outline=lip, width=lw)
