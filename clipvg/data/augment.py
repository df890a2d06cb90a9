"""The official training augmentation (§1.5) split in two: draw the parameters, apply them.

No random draw of the augmentation depends on pixels: the crop, the scales, the jitter order and
factors, the blur radius and the placement are functions of the image size, the box, the text and
the ``random.Random`` alone. So :func:`draw_params` (pure, CPU, no pixels) makes every draw, in
the official order, and records it in :class:`AugmentParams`; an *apply* step turns params +
pixels into the augmented image anywhere:

* :func:`apply_params` - the reference, PIL on the CPU (:func:`clipvg.data.transforms.train_transform`
  is draw + this + letterbox, byte-identical to the former one-piece transform);
* :func:`clipvg.data.augment_torch.apply_batch` - torch, a batch at once on any device.

The box target, the text and the geometry (``scale``/``offset``) come from the params, so both
backends give identical boxes and texts. :meth:`AugmentParams.to_vector` packs the params into
``PARAM_LEN`` float64 numbers (exact: ints and Python floats) for shipping in a stream.

Geometry helpers shared with the eval transform live here too (they are the lower layer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from clipvg.config import AugmentConfig

SPATIAL_WORDS = ("left", "right", "top", "bottom", "middle")
SHORT_SIDES = (400, 500, 600)  # resize-short-side choices before the random crop
# Crop sizes act on the 400-600 px intermediate image, which is independent of the canvas size,
# so they stay fixed for every S.
CROP_MIN, CROP_MAX, CROP_ATTEMPTS = 384, 600, 20
JITTER_P, JITTER_RANGE = 0.8, (0.6, 1.4)
BLUR_P, BLUR_RADIUS = 0.5, (0.1, 2.0)
JITTER_OPS = ("brightness", "contrast", "color")  # official order before the shuffle
_ENHANCERS = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
              "color": ImageEnhance.Color}


def train_scales(size: int = 224) -> list[int]:
    """Long-side choices of the scale augmentation: [224, 192, ..., 32] for S = 224.

    For another canvas size S this generalises to round(S * (224 - 32 i) / 224), i = 0..6
    (same fractions of the canvas; our choice, the official code only knows 224).
    """
    return [max(1, round(size * (224 - 32 * i) / 224)) for i in range(7)]


def has_spatial_word(text: str) -> bool:
    """Plain substring test, as official: "bright" and "topping" count too."""
    low = text.lower()
    return any(w in low for w in SPATIAL_WORDS)


def check_box(box_xyxy, width: int, height: int) -> np.ndarray:
    """Validate a pixel box and clamp it to the image [0,W] x [0,H]. Returns float64 (4,)."""
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise ValueError(f"box must be 4 finite numbers (x0,y0,x1,y1), got {box_xyxy!r}")
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"box must have x1 >= x0 and y1 >= y0, got {box_xyxy!r}")
    return np.clip(box, 0.0, [width, height, width, height])


def resized_size(wh: tuple[int, int], ratio: float) -> tuple[int, int]:
    """(w, h) * ratio as the official code rounds it (Python round), each side >= 1 so extreme
    aspect ratios do not produce a 0-px side."""
    return max(1, round(wh[0] * ratio)), max(1, round(wh[1] * ratio))


def centred(size: int, extent: int) -> int:
    # Official centring: round(diff/2 - 0.1), i.e. odd leftovers put the extra pixel after.
    return round((size - extent) / 2 - 0.1)


def encode_box(box: np.ndarray, size: int, top: int, left: int) -> np.ndarray:
    """(4,) float32 target: ``box`` (x0,y0,x1,y1 in placed-image pixels) shifted by the
    placement and encoded as (cx, cy, w, h) / S on the canvas (float64 math, as official)."""
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64) + np.array([left, top, left, top], dtype=np.float64)
    target = np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dtype=np.float64) / size
    return target.astype(np.float32)


NO_CROP = (-1, -1, -1, -1)
PARAM_LEN = 21  # floats of AugmentParams.to_vector


@dataclass(frozen=True)
class AugmentParams:
    """Every draw of one sample's augmentation, and what it does to the geometry.

    Sizes are (w, h) in pixels. Steps, in order: resize to ``short_wh`` (crop branch; None: not
    taken) -> crop ``(left, top, w, h)`` of that (``NO_CROP``: no crop accepted in 20 tries) ->
    resize to ``placed_wh`` -> jitter (``jitter``: (op index into JITTER_OPS, factor) in the
    drawn order; empty: none) -> Gaussian blur (``blur`` radius; 0: none) -> place at
    (``top``, ``left``) on the S x S canvas. A resize to the current size is a no-op.
    ``target``: (4,) float32 (cx,cy,w,h)/S; ``canvas_xy = original_xy * scale + offset``.
    """

    src_wh: tuple[int, int]
    short_wh: tuple[int, int] | None
    crop: tuple[int, int, int, int]
    placed_wh: tuple[int, int]
    jitter: tuple[tuple[int, float], ...]
    blur: float
    top: int
    left: int
    size: int
    target: np.ndarray
    text: str
    scale: float
    offset: tuple[float, float]

    def to_vector(self) -> np.ndarray:
        """(PARAM_LEN,) float64 of the pixel steps and S (target, text and geometry travel apart)."""
        v = np.zeros(PARAM_LEN, np.float64)
        v[0:2] = self.src_wh
        v[2:4] = self.short_wh if self.short_wh is not None else (-1, -1)
        v[4:8] = self.crop
        v[8:10] = self.placed_wh
        v[10] = len(self.jitter)
        for i, (op, factor) in enumerate(self.jitter):
            v[11 + 2 * i: 13 + 2 * i] = (op, factor)
        v[17], v[18], v[19], v[20] = self.blur, self.top, self.left, self.size
        return v

    @classmethod
    def from_vector(cls, v) -> "AugmentParams":
        """Inverse of :meth:`to_vector` for the pixel steps (target empty, text "", scale 1)."""
        v = [float(x) for x in v]
        short = None if v[2] < 0 else (int(v[2]), int(v[3]))
        jitter = tuple((int(v[11 + 2 * i]), v[12 + 2 * i]) for i in range(int(v[10])))
        return cls((int(v[0]), int(v[1])), short, tuple(int(x) for x in v[4:8]), (int(v[8]), int(v[9])),
                   jitter, v[17], int(v[18]), int(v[19]), int(v[20]), np.zeros(4, np.float32), "", 1.0, (0.0, 0.0))


def _draw_crop(wh: tuple[int, int], box: np.ndarray, rng: random.Random):
    """Random size crop (§1.5): up to 20 attempts; returns (left, top, cw, ch) or None.

    The acceptance test compares the box centre-x with the crop's *top* and centre-y with its
    *left*: an x/y mix-up inherited from TransVG that we keep for fidelity.
    """
    width, height = wh
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for _ in range(CROP_ATTEMPTS):
        # Sides are >= 400 here (short side resized to 400-600); min(CROP_MIN, .) only keeps the
        # range valid for smaller images.
        cw = rng.randint(min(CROP_MIN, width), min(width, CROP_MAX))
        ch = rng.randint(min(CROP_MIN, height), min(height, CROP_MAX))
        top, left = rng.randint(0, height - ch), rng.randint(0, width - cw)
        if cx > top and cy > left:
            return left, top, cw, ch
    return None


def draw_params(width: int, height: int, box_xyxy, text: str, cfg: AugmentConfig | None,
                rng: random.Random, size: int = 224) -> AugmentParams:
    """Every random draw of the official train augmentation, in its order (no pixels needed).

    1. random select: resize long side to a scale, or (p=0.5, ``cfg.crop``, never when the text
       holds a spatial word) resize short side to {400,500,600} -> random size crop -> resize long
       side to a scale; scales = :func:`train_scales` if ``cfg.scale`` else [S];
    2. colour jitter (p=0.8, ``cfg.color``): the 3 ops shuffled, a factor ~ U(0.6,1.4) each;
    3. Gaussian blur (p=0.5, ``cfg.blur``), radius ~ U(0.1, 2); no flip, so the text is unchanged;
    4. placement at a random place (``cfg.translate``) or centred.
    The box is clamped to the image first (ValueError if invalid). Boxes use the exact ratio
    while image sizes are rounded (< 0.5 px apart), as in the official code.
    """
    cfg = cfg if cfg is not None else AugmentConfig()
    box = check_box(box_xyxy, width, height)
    scales = train_scales(size) if cfg.scale else [size]
    wh = (width, height)
    scale, shift = 1.0, np.zeros(2)  # current_xy = original_xy * scale + shift
    short_wh, crop = None, NO_CROP
    # Cropping could cut away what "left"/"right"/... refers to, hence the spatial-word guard.
    if cfg.crop and not has_spatial_word(text) and rng.random() < 0.5:
        r = rng.choice(SHORT_SIDES) / min(wh)
        short_wh, box, scale, shift = resized_size(wh, r), box * r, scale * r, shift * r
        wh = short_wh
        drawn = _draw_crop(wh, box, rng)
        if drawn is not None:
            crop = drawn
            left, top, cw, ch = drawn
            shifted = box - np.array([left, top, left, top], dtype=np.float64)
            box, wh = np.clip(shifted, 0.0, [cw, ch, cw, ch]), (cw, ch)
            shift = shift - np.asarray((left, top), dtype=np.float64)
    r = rng.choice(scales) / max(wh)
    placed, box, scale, shift = resized_size(wh, r), box * r, scale * r, shift * r

    jitter: tuple = ()
    if cfg.color and rng.random() < JITTER_P:
        order = list(range(len(JITTER_OPS)))
        rng.shuffle(order)
        jitter = tuple((op, rng.uniform(*JITTER_RANGE)) for op in order)
    blur = rng.uniform(*BLUR_RADIUS) if cfg.blur and rng.random() < BLUR_P else 0.0

    w, h = placed
    if not (w <= size and h <= size):
        raise RuntimeError(f"image {h}x{w} does not fit canvas {size}")
    if cfg.translate:
        top, left = rng.randint(0, size - h), rng.randint(0, size - w)
    else:
        top, left = centred(size, h), centred(size, w)
    return AugmentParams(
        src_wh=(width, height), short_wh=short_wh, crop=crop, placed_wh=placed, jitter=jitter,
        blur=blur, top=top, left=left, size=size, target=encode_box(box, size, top, left), text=text,
        scale=float(scale), offset=(float(shift[0] + left), float(shift[1] + top)))


def _resize_to(img: Image.Image, wh: tuple[int, int]) -> Image.Image:
    return img if img.size == wh else img.resize(wh, Image.BILINEAR)


def apply_params(image: Image.Image, params: AugmentParams) -> Image.Image:
    """The pixel steps of ``params`` on an RGB PIL image (the reference backend): the augmented
    image, ``params.placed_wh`` in size, before normalisation and placement."""
    if image.size != params.src_wh:
        raise ValueError(f"params were drawn for a {params.src_wh} image, got {image.size}")
    img = image
    if params.short_wh is not None:
        img = _resize_to(img, params.short_wh)
        if params.crop != NO_CROP:
            left, top, cw, ch = params.crop
            img = img.crop((left, top, left + cw, top + ch))
    img = _resize_to(img, params.placed_wh)
    for op, factor in params.jitter:
        img = _ENHANCERS[JITTER_OPS[op]](img).enhance(factor)
    if params.blur:
        img = img.filter(ImageFilter.GaussianBlur(radius=params.blur))
    return img
