"""The device backend of the train augmentation: :class:`~clipvg.data.augment.AugmentParams`
applied with torch ops, on the device of the images (CPU or an accelerator).

Every step re-implements Pillow's own integer arithmetic (Pillow 13, ``libImaging``), so the
result is the CPU backend's (:func:`clipvg.data.augment.apply_params`) bit for bit:

* bilinear resize (``Resample.c``): per output pixel the triangle filter, widened by the scale
  when reducing (that is the antialias), coefficients normalised in float64 then rounded to
  22-bit fixed point, each pass rounded to uint8 (int32 arithmetic here: 255 * 2^22 fits), the
  two passes in Pillow's order (:func:`_resize`); only the crop window of the first resize is
  computed (each output pixel depends on its own coefficients alone).
* colour jitter (``ImageEnhance`` -> ``Image.blend``): ``trunc(d + f * (x - d))`` in float32,
  clamped to 0..255; ``d`` = 0 (brightness), the grey of each pixel (colour: L = (19595 R +
  38470 G + 7471 B + 2^15) >> 16) or the rounded mean grey of the image (contrast).
* Gaussian blur (``BoxBlur.c``): three extended box passes per axis, horizontal first, with
  Pillow's float32 radius and 24-bit fixed-point weights, edges replicated.

Measured against the CPU backend (every switch random): 3,000 cases with images of 8-120 px
and canvases of 32/64/224, and 200 cases of 375-640 px JPEG photos at 224 (crop branch
included): max abs difference 0, in 0-255 units and after normalisation. The tests assert
equality (tests/data/test_augment_torch.py: 2,000 cases). Boxes, texts and geometry come from
the params: identical by construction. On CPU, float32 normalisation is bit-identical too
(:func:`~clipvg.data.transforms.normalize_images`); on an accelerator it is the same float32
arithmetic (IEEE division), not checked here (no device in the test machine). Cost: a loop
over the samples (tens of small ops each); a batched variant would save kernel launches.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from clipvg.data.augment import JITTER_OPS, NO_CROP, AugmentParams
from clipvg.data.transforms import normalize_images

PRECISION_BITS = 22  # Pillow's 8-bit resampling: 32 - 8 - 2


@lru_cache(maxsize=4096)
def _coeffs(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the bilinear filter over
    the whole input: (out, K) int64 tap indices and (out, K) int32 weights (unused taps: weight
    0 on a valid index)."""
    scale = in_size / out_size  # float32(in1 - in0) is exact for the integer box (0, in)
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.clip(np.trunc(center - support + 0.5), 0, None).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    w = np.abs(((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where((w < 1.0) & (taps[None, :] < xmax[:, None]), 1.0 - w, 0.0)
    ww = np.zeros((out_size, 1))
    for t in range(ksize):  # the C loop's summation order, left to right (np.sum is pairwise)
        ww = ww + w[:, t:t + 1]
    w = np.where(ww != 0.0, w / np.where(ww != 0.0, ww, 1.0), w)
    kk = np.trunc(0.5 + w * (1 << PRECISION_BITS)).astype(np.int32)
    idx = np.minimum(taps[None, :] + xmin[:, None], in_size - 1)
    return idx, kk


def _resample(x: torch.Tensor, in_size: int, out_size: int, dim: int, start: int, stop: int,
              first: int = 0) -> torch.Tensor:
    """One Pillow bilinear pass of int32 ``x`` (C, H, W) along ``dim`` (-1 or -2) from
    ``in_size`` to ``out_size``, outputs [start, stop) only; ``x`` holds the input from index
    ``first`` on (the rest is not needed). A pass to the same size is skipped, as Pillow does."""
    if in_size == out_size:
        return x.narrow(dim, start - first, stop - start)
    idx_np, kk_np = _coeffs(in_size, out_size)
    idx = torch.from_numpy(idx_np[start:stop] - first).to(x.device)
    kk = torch.from_numpy(kk_np[start:stop]).to(x.device)
    # Rows are gathered whole (index_select on dim 1 of a contiguous tensor: ~5x faster on the
    # CPU than a strided gather along the last dim), so the horizontal pass runs transposed;
    # one tap at a time keeps the temporaries (C, n, W) instead of (C, n, K, W).
    rows = x.transpose(-1, -2).contiguous() if dim == -1 else x.contiguous()
    acc = rows.index_select(1, idx[:, 0]) * kk[:, 0, None]
    for k in range(1, idx.shape[1]):
        acc += rows.index_select(1, idx[:, k]) * kk[:, k, None]
    out = ((acc + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp_(0, 255)
    return out.transpose(-1, -2) if dim == -1 else out


def _needed(in_size: int, out_size: int, start: int, stop: int) -> tuple[int, int]:
    """[first, last] input indices that the outputs [start, stop) of a pass read."""
    if in_size == out_size:
        return start, stop - 1
    idx = _coeffs(in_size, out_size)[0][start:stop]
    return int(idx.min()), int(idx.max())


def _resize(x: torch.Tensor, wh: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Pillow's ``resize(wh, BILINEAR)`` of int32 (C, H, W), then ``crop(box)`` = (left, top,
    w, h) computed directly: the first pass runs on the input the kept pixels need only.

    Pass order: Pillow 13 runs the vertical pass first when it reduces the height and
    2 (w' - W) > h' - H, else the horizontal one (found by experiment: it decides every one of
    ~2,800 cases where the two orders differ, tests/data/test_augment_torch.py)."""
    out_w, out_h = wh
    in_h, in_w = x.shape[-2:]
    left, top, cw, ch = box if box is not None else (0, 0, out_w, out_h)
    if out_h < in_h and 2 * (out_w - in_w) > out_h - in_h:
        first, last = _needed(in_w, out_w, left, left + cw)
        x = _resample(x[:, :, first:last + 1], in_h, out_h, -2, top, top + ch)
        return _resample(x, in_w, out_w, -1, left, left + cw, first)
    first, last = _needed(in_h, out_h, top, top + ch)
    x = _resample(x[:, first:last + 1], in_w, out_w, -1, left, left + cw)
    return _resample(x, in_h, out_h, -2, top, top + ch, first)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L (ITU-R 601-2 luma in 16-bit fixed point): (H, W) int32."""
    return (x[0] * 19595 + x[1] * 38470 + x[2] * 7471 + 0x8000) >> 16


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: float) -> torch.Tensor:
    """``Image.blend(degenerate, x, factor)``: float32 ``d + f * (x - d)``, truncated and clamped
    (two separate float32 ops, as the C code: no fused multiply-add)."""
    f = float(np.float32(factor))
    t = degenerate.to(torch.float32) + (x - degenerate).to(torch.float32) * f
    return t.clamp_(0.0, 255.0).to(torch.int32)  # values >= 0: the int cast truncates = C's


def _jitter(x: torch.Tensor, op: str, factor: float) -> torch.Tensor:
    if op == "brightness":
        return _blend(torch.zeros_like(x), x, factor)
    grey = _grey(x)
    if op == "color":
        return _blend(grey.expand_as(x), x, factor)
    # ImageStat mean of the L image, + 0.5, int(): float64 division of exact integers
    mean = torch.floor(grey.sum(dtype=torch.int64).to(torch.float64) / grey.numel() + 0.5)
    return _blend(mean.to(torch.int32).expand_as(x), x, factor)


def _box_radius(radius: float, passes: int = 3) -> float:
    """Pillow's ``_gaussian_blur_radius``: the extended box radius, in C float/double mix."""
    f = np.float32
    sigma2 = f(f(radius) * f(radius)) / f(passes)
    big_l = f(np.sqrt(12.0 * float(sigma2) + 1.0))
    small_l = f(np.floor((float(big_l) - 1.0) / 2.0))
    a = f(f(2 * small_l + 1) * f(small_l * f(small_l + 1) - f(3 * sigma2)))
    a = f(a / f(6 * f(sigma2 - f(small_l + 1) * f(small_l + 1))))
    return float(f(small_l + a))


def _box_pass(x: torch.Tensor, radius: float) -> torch.Tensor:
    """One ``ImagingHorizontalBoxBlur`` pass along the last dim of int64 (C, H, W)."""
    r = int(radius)
    ww = int(np.float32(1 << 24) / (np.float32(radius) * np.float32(2) + np.float32(1)))
    fw = ((1 << 24) - (r * 2 + 1) * ww) // 2
    n = x.shape[-1]
    pos = torch.arange(n, device=x.device)
    acc = sum(x[..., (pos + d).clamp(0, n - 1)] for d in range(-r, r + 1))
    far = x[..., (pos - r - 1).clamp(0, n - 1)] + x[..., (pos + r + 1).clamp(0, n - 1)]
    return (acc * ww + far * fw + (1 << 23)) >> 24


def _blur(x: torch.Tensor, radius: float, passes: int = 3) -> torch.Tensor:
    box = _box_radius(radius, passes)
    x = x.to(torch.int64)
    if box != 0:
        for _ in range(passes):
            x = _box_pass(x, box)
        x = x.transpose(-1, -2)
        for _ in range(passes):
            x = _box_pass(x, box)
        x = x.transpose(-1, -2)
    return x.to(torch.int32)


def apply_one(image: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """(H, W, 3) uint8 image (any device) -> (3, h, w) uint8, h, w = ``params.placed_wh``."""
    if (image.shape[1], image.shape[0]) != tuple(params.src_wh):
        raise ValueError(f"params were drawn for a {params.src_wh} image, got {tuple(image.shape[1::-1])}")
    x = image.permute(2, 0, 1).to(torch.int32)
    if params.short_wh is not None:
        x = _resize(x, params.short_wh, None if params.crop == NO_CROP else params.crop)
    x = _resize(x, params.placed_wh)
    for op, factor in params.jitter:
        x = _jitter(x, JITTER_OPS[op], factor)
    if params.blur:
        x = _blur(x, params.blur)
    return x.to(torch.uint8)


def apply_batch(images, params: list[AugmentParams], device: torch.device | str = "cpu",
                image_index=None, normalize: str | None = "imagenet") -> dict[str, torch.Tensor]:
    """Apply each sample's params to its image, on ``device``, into a model batch's pixels.

    ``images``: (H, W, 3) uint8 tensors or arrays (decoded once per image, any sizes);
    ``image_index[i]``: which image sample ``i`` uses (default: image ``i``). Returns
    ``image`` (B, 3, S, S) float32 normalised with padding exactly 0 (``normalize=None``:
    uint8, padding 0) and ``pixel_mask`` (B, S, S) int32, 1 = padding; equal to the CPU
    backend's :func:`clipvg.data.transforms.train_transform` output.
    """
    if not params:
        raise ValueError("apply_batch needs at least one sample")
    size = params[0].size
    index = range(len(params)) if image_index is None else image_index
    on_device = {}
    canvas = torch.zeros((len(params), 3, size, size), dtype=torch.uint8, device=device)
    mask = torch.ones((len(params), size, size), dtype=torch.int32, device=device)
    for b, (i, p) in enumerate(zip(index, params)):
        if i not in on_device:
            on_device[i] = torch.as_tensor(images[i]).to(device, non_blocking=True)
        out = apply_one(on_device[i], p)
        h, w = out.shape[1:]
        canvas[b, :, p.top:p.top + h, p.left:p.left + w] = out
        mask[b, p.top:p.top + h, p.left:p.left + w] = 0
    if normalize is None:
        return dict(image=canvas, pixel_mask=mask)
    return dict(image=normalize_images(canvas, mask, normalize), pixel_mask=mask)
