"""(image, box, text) -> model tensors: eval letterbox (§1.6) and train augmentation (§1.5).

Conventions
-----------
* Input box: ``(x0, y0, x1, y1)`` float pixels of the *original* image (continuous coordinates:
  pixel column c spans [c, c+1)). A box reaching outside the image is clamped to it; a box with
  x1 < x0 or y1 < y0, or a non-finite value, is a ValueError.
* Output: a :class:`GroundingSample` on an S x S canvas (S = ``size``, default 224):
  ``image`` (3,S,S) float32, normalised, padding exactly 0 *after* normalisation (so padding reads
  as the mean colour); ``pixel_mask`` (S,S) int32 with 1 = padding; ``box`` (4,) float32
  ``(cx, cy, w, h) / S`` relative to the padded canvas (not the image).
* Geometry: every step is a uniform scale plus a shift, so ``canvas_xy = image_xy * scale + offset``
  with ``offset = (left, top)`` in canvas pixels (for a crop, the crop origin is folded into
  ``offset``). :func:`canvas_to_image_box` inverts it. The *box* uses the exact ratio while the
  resized image size is rounded to integers, so box and image edges may differ by < 0.5 px, as in
  the official code.
* Randomness (train) comes only from the ``random.Random`` passed in, so a seed reproduces a sample.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from clipvg.config import AugmentConfig

# Re-exported: the train augmentation's constants and helpers live in clipvg.data.augment.
from clipvg.data.augment import (  # noqa: F401
    BLUR_P,
    BLUR_RADIUS,
    CROP_ATTEMPTS,
    CROP_MAX,
    CROP_MIN,
    JITTER_P,
    JITTER_RANGE,
    SHORT_SIDES,
    SPATIAL_WORDS,
    apply_params,
    draw_params,
    encode_box,
    has_spatial_word,
    resized_size,
    train_scales,
)
from clipvg.data.augment import (
    centred as _centred,
)
from clipvg.data.augment import (
    check_box as _check_box,
)


def _clip_stats() -> tuple[tuple, tuple]:
    # deferred: loads open_clip/torch; paid only when this runs, not on import
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)


class _Stats(dict):
    """name -> (mean, std). CLIP's statistics are read from open_clip on first use: importing
    open_clip costs seconds (it pulls in torchvision), and Ray Data's decode workers, which
    import this module, never need it."""

    def __getitem__(self, name: str) -> tuple[tuple, tuple]:
        value = super().__getitem__(name)
        return value() if callable(value) else value


NORM_STATS = _Stats({
    # Official CLIP-VG normalises with ImageNet statistics, not CLIP's (§1.5 step 5).
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": _clip_stats,
})


@dataclass(frozen=True)
class GroundingSample:
    """One preprocessed sample.

    image: (3,S,S) float32, normalised; padding = 0 (uint8, unnormalised, with ``raw``/``normalize=None``).
    pixel_mask: (S,S) int32, 1 = padding, 0 = image pixel.
    box: (4,) float32, (cx, cy, w, h) / S on the padded canvas.
    text: the input text, unchanged (no flip, so no left/right swap).
    scale: canvas pixels per original-image pixel.
    offset: (left, top) such that canvas_xy = original_xy * scale + offset (canvas pixels).
    placed_hw: (h, w) of the image pixels on the canvas.
    """

    image: torch.Tensor
    pixel_mask: torch.Tensor
    box: torch.Tensor
    text: str
    scale: float
    offset: tuple[float, float]
    placed_hw: tuple[int, int]


# --------------------------------------------------------------------------------------------
# Helpers on (PIL image, float64 xyxy box)
# --------------------------------------------------------------------------------------------


def _as_rgb(image) -> Image.Image:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _resize(img: Image.Image, box: np.ndarray, ratio: float):
    """Aspect-kept bilinear resize by ``ratio``; returns (image, box * ratio, ratio).

    The box gets the exact ratio while the image size is rounded, as in the official code.
    """
    new = resized_size(img.size, ratio)
    w, h = img.size
    if new != (w, h):
        img = img.resize(new, Image.BILINEAR)
    return img, box * ratio, ratio


def _resize_long(img, box, side: int):
    return _resize(img, box, side / max(img.size))


def _to_normalized_array(img: Image.Image, normalize: str) -> np.ndarray:
    """uint8 HWC -> (3,h,w) float32 in [0,1] -> (x - mean) / std.

    numpy, not torch: these small element-wise ops would otherwise go through torch's intra-op
    thread pool, which is pure overhead per sample (and very slow on an oversubscribed CPU).
    """
    if normalize not in NORM_STATS:
        raise ValueError(f"normalize must be one of {sorted(NORM_STATS)}, got {normalize!r}")
    mean, std = NORM_STATS[normalize]
    x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    return (x - mean) / np.asarray(std, dtype=np.float32).reshape(3, 1, 1)


def _as_chw(img: Image.Image, normalize: str | None) -> np.ndarray:
    """(3,h,w): normalised float32, or the raw uint8 pixels when ``normalize`` is None (the
    streaming path ships uint8 and normalises on the consumer, see :func:`normalize_images`)."""
    if normalize is None:
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    return _to_normalized_array(img, normalize)


def _canvas(chw: np.ndarray, size: int, top: int, left: int) -> tuple[np.ndarray, np.ndarray]:
    """Place (3,h,w) on a zero (3,S,S) canvas of the same dtype; mask (S,S) int32, 1 = padding."""
    _, h, w = chw.shape
    if not (0 <= top <= size - h and 0 <= left <= size - w):
        raise RuntimeError(f"image {h}x{w} at ({top},{left}) does not fit canvas {size}")
    image = np.zeros((3, size, size), dtype=chw.dtype)
    image[:, top : top + h, left : left + w] = chw
    mask = np.ones((size, size), dtype=np.int32)
    mask[top : top + h, left : left + w] = 0
    return image, mask


def _letterbox(
    chw: np.ndarray, box: np.ndarray, size: int, top: int, left: int, text: str,
    scale: float, shift: tuple[float, float],
) -> GroundingSample:
    """Place (3,h,w) on a zero (3,S,S) canvas at (top, left) and encode the box for the canvas.

    ``box``/``scale``/``shift`` describe the current image: current_xy = original_xy*scale + shift.
    """
    image, mask = _canvas(chw, size, top, left)
    _, h, w = chw.shape
    return GroundingSample(
        image=torch.from_numpy(image),
        pixel_mask=torch.from_numpy(mask),
        box=torch.from_numpy(encode_box(box, size, top, left)),
        text=text,
        scale=float(scale),
        offset=(float(shift[0] + left), float(shift[1] + top)),
        placed_hw=(h, w),
    )


# --------------------------------------------------------------------------------------------
# Public transforms
# --------------------------------------------------------------------------------------------


def eval_transform(
    image: Image.Image,
    box_xyxy,
    text: str,
    size: int = 224,
    normalize: Literal["imagenet", "clip"] | None = "imagenet",
) -> GroundingSample:
    """Evaluation preprocessing (§1.6): long side to S, normalise, centred zero padding.

    ``normalize=None`` keeps the canvas uint8 (padding 0); :func:`normalize_images` finishes it.
    """
    img = _as_rgb(image)
    box = _check_box(box_xyxy, *img.size)
    img, box, ratio = _resize_long(img, box, size)
    chw = _as_chw(img, normalize)
    _, h, w = chw.shape
    return _letterbox(chw, box, size, _centred(size, h), _centred(size, w), text, ratio, (0.0, 0.0))


@dataclass(frozen=True)
class EvalCanvas:
    """The eval letterbox of one image, shared by all of its expressions (decode + resize once).

    image: (3,S,S) uint8, zero padding; pixel_mask: (S,S) int32, 1 = padding;
    ``canvas_xy = original_xy * scale + offset``.
    """

    image: np.ndarray
    pixel_mask: np.ndarray
    scale: float
    offset: tuple[float, float]
    image_size: tuple[int, int]  # (W, H) of the original image, for clamping boxes

    def target(self, box_xyxy) -> np.ndarray:
        """(4,) float32 (cx,cy,w,h)/S of an original-pixel box: identical to what
        :func:`eval_transform` gives for the same image and box."""
        box = _check_box(box_xyxy, *self.image_size) * self.scale
        left, top = self.offset
        return encode_box(box, self.image.shape[-1], int(top), int(left))

    def targets(self, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`target` for (N, 4) boxes at once -> ((N, 4) float32, (N,) bool valid).

        The same float64 operations element by element, so each row equals :meth:`target`;
        rows that :meth:`target` would refuse (non-finite, x1 < x0 or y1 < y0) are invalid.
        """
        box = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        valid = np.isfinite(box).all(1) & (box[:, 2] >= box[:, 0]) & (box[:, 3] >= box[:, 1])
        w, h = self.image_size
        box = np.clip(np.where(valid[:, None], box, 0.0), 0.0, [w, h, w, h]) * self.scale
        left, top = self.offset
        box = box + np.array([left, top, left, top], dtype=np.float64)
        size = self.image.shape[-1]
        out = np.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2,
                        box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], axis=1) / size
        return out.astype(np.float32), valid


def eval_canvas(image: Image.Image, size: int = 224) -> EvalCanvas:
    """Resize + letterbox one image for evaluation, without normalising (uint8)."""
    img = _as_rgb(image)
    original = img.size
    img, _, ratio = _resize_long(img, np.zeros(4), size)
    chw = _as_chw(img, None)
    _, h, w = chw.shape
    top, left = _centred(size, h), _centred(size, w)
    canvas, mask = _canvas(chw, size, top, left)
    return EvalCanvas(canvas, mask, float(ratio), (float(left), float(top)), original)


def normalize_images(images: torch.Tensor, pixel_mask: torch.Tensor,
                     normalize: Literal["imagenet", "clip"] = "imagenet") -> torch.Tensor:
    """(B,3,S,S) uint8 canvases -> float32 normalised with padding exactly 0, on their device.

    The values are those of the per-sample path, ``(x/255 - mean)/std`` in float32, so the
    result is bit-identical to :func:`eval_transform`. On the CPU they come from a 3 x 256
    lookup table computed with those very operations (one gather instead of four passes, ~3x
    faster); on an accelerator the arithmetic runs there, and the host ships 4x fewer bytes.
    """
    if normalize not in NORM_STATS:
        raise ValueError(f"normalize must be one of {sorted(NORM_STATS)}, got {normalize!r}")
    mean, std = (torch.tensor(v, dtype=torch.float32, device=images.device).view(-1, 3, 1, 1)
                 for v in NORM_STATS[normalize])
    if images.device.type != "cpu":
        x = (images.to(torch.float32) / 255.0 - mean) / std
        return x.masked_fill_(pixel_mask.unsqueeze(1).bool(), 0.0)
    lut = ((torch.arange(256, dtype=torch.float32) / 255.0).view(1, 1, 256) - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    lut, u8 = lut.view(3, 256).numpy(), images.numpy()
    out = np.empty(u8.shape, np.float32)
    for c in range(3):
        np.take(lut[c], u8[:, c], out=out[:, c])
    np.copyto(out, 0.0, where=pixel_mask.numpy()[:, None].astype(bool))
    return torch.from_numpy(out)


def train_transform(
    image: Image.Image,
    box_xyxy,
    text: str,
    rng: random.Random,
    cfg: AugmentConfig | None = None,
    size: int = 224,
    raw: bool = False,
) -> GroundingSample:
    """Official training augmentation (§1.5), in order; every switch of ``cfg`` is honoured.

    ``raw=True`` returns the uint8 canvas (for :func:`normalize_images` on the consumer).
    It is :func:`~clipvg.data.augment.draw_params` (every random draw, no pixels) followed by
    :func:`train_sample` (the PIL backend), byte-identical to the former one-piece transform.

    1. random select: resize long side to a scale, or (p=0.5, ``cfg.crop``, never when the text
       holds a spatial word) resize short side to {400,500,600} -> random size crop -> resize long
       side to a scale; scales = :func:`train_scales` if ``cfg.scale`` else [S];
    2. colour jitter (p=0.8, ``cfg.color``); 3. Gaussian blur (p=0.5, ``cfg.blur``); no flip;
    4. normalise (``cfg.normalize``); 5. pad to S at a random place (``cfg.translate``) or centred.
    """
    img = _as_rgb(image)
    params = draw_params(img.size[0], img.size[1], box_xyxy, text, cfg, rng, size)
    return train_sample(img, params, None if raw else (cfg or AugmentConfig()).normalize)


def train_sample(image: Image.Image, params, normalize: str | None) -> GroundingSample:
    """The CPU (PIL) backend: apply ``params`` (:func:`draw_params`) to an RGB image, normalise
    (``None``: keep uint8) and place it on the canvas."""
    chw = _as_chw(apply_params(image, params), normalize)
    canvas, mask = _canvas(chw, params.size, params.top, params.left)
    return GroundingSample(
        image=torch.from_numpy(canvas), pixel_mask=torch.from_numpy(mask),
        box=torch.from_numpy(params.target.copy()), text=params.text, scale=params.scale,
        offset=params.offset, placed_hw=(chw.shape[1], chw.shape[2]))


def canvas_to_image_box(
    box_cxcywh_norm, scale: float, offset, canvas_size: int = 224
) -> torch.Tensor:
    """Map canvas boxes back to original-image pixels (inverse of the letterbox geometry).

    Args:
        box_cxcywh_norm: (..., 4) (cx, cy, w, h) / S on the canvas (a model output or target).
        scale, offset: ``GroundingSample.scale`` and ``.offset`` (left, top); scalars, or tensors
            of shape (...,) / (..., 2) for a batch.
        canvas_size: S.
    Returns:
        (..., 4) float64 tensor (x0, y0, x1, y1) in original-image pixels (not clamped).
    """
    b = torch.as_tensor(box_cxcywh_norm).to(torch.float64) * canvas_size
    scale = torch.as_tensor(scale, dtype=torch.float64).unsqueeze(-1)
    off = torch.as_tensor(offset, dtype=torch.float64)
    half = b[..., 2:] / 2
    x0y0 = (b[..., :2] - half - off) / scale
    x1y1 = (b[..., :2] + half - off) / scale
    return torch.cat([x0y0, x1y1], dim=-1)
