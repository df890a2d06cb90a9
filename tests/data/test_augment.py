"""draw_params + apply_params = the one-piece train transform of before the split (kept below,
verbatim in substance, as the frozen reference), byte for byte for the same rng."""

import random

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from clipvg.config import AugmentConfig
from clipvg.data.augment import PARAM_LEN, AugmentParams, apply_params, draw_params
from clipvg.data.transforms import train_transform

IMAGENET = (np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32))


def _scales(size):
    return [max(1, round(size * (224 - 32 * i) / 224)) for i in range(7)]


def _resize(img, box, ratio):
    w, h = img.size
    new = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    if new != (w, h):
        img = img.resize(new, Image.BILINEAR)
    return img, box * ratio, ratio


def _crop(img, box, rng):
    width, height = img.size
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for _ in range(20):
        cw = rng.randint(min(384, width), min(width, 600))
        ch = rng.randint(min(384, height), min(height, 600))
        top, left = rng.randint(0, height - ch), rng.randint(0, width - cw)
        if cx > top and cy > left:
            img = img.crop((left, top, left + cw, top + ch))
            shifted = box - np.array([left, top, left, top], dtype=np.float64)
            return img, np.clip(shifted, 0.0, [cw, ch, cw, ch]), (left, top)
    return img, box, None


def reference(img, box, text, rng, cfg, size):
    """The former clipvg.data.transforms.train_transform: (canvas (3,S,S) float32, mask, target)."""
    w0, h0 = img.size
    box = np.clip(np.asarray(box, np.float64), 0.0, [w0, h0, w0, h0])
    scales = _scales(size) if cfg.scale else [size]
    if cfg.crop and not any(k in text.lower() for k in ("left", "right", "top", "bottom", "middle")) \
            and rng.random() < 0.5:
        side = rng.choice((400, 500, 600))
        img, box, _ = _resize(img, box, side / min(img.size))
        img, box, _ = _crop(img, box, rng)
    img, box, _ = _resize(img, box, rng.choice(scales) / max(img.size))
    if cfg.color and rng.random() < 0.8:
        ops = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
        rng.shuffle(ops)
        for op in ops:
            img = op(img).enhance(rng.uniform(0.6, 1.4))
    if cfg.blur and rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    x = (x - IMAGENET[0].reshape(3, 1, 1)) / IMAGENET[1].reshape(3, 1, 1)
    _, h, w = x.shape
    if cfg.translate:
        top, left = rng.randint(0, size - h), rng.randint(0, size - w)
    else:
        top, left = round((size - h) / 2 - 0.1), round((size - w) / 2 - 0.1)
    canvas = np.zeros((3, size, size), np.float32)
    canvas[:, top:top + h, left:left + w] = x
    mask = np.ones((size, size), np.int32)
    mask[top:top + h, left:left + w] = 0
    x0, y0, x1, y1 = box + np.array([left, top, left, top], dtype=np.float64)
    target = (np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]) / size).astype(np.float32)
    return canvas, mask, target


def _case(rs, seed):
    r = random.Random(seed)
    w, h = int(rs.integers(4, 100)), int(rs.integers(4, 100))
    img = Image.fromarray(rs.integers(0, 256, (h, w, 3), dtype=np.uint8))
    x0, y0 = rs.uniform(0, w), rs.uniform(0, h)
    box = [x0, y0, rs.uniform(x0, w + 5), rs.uniform(y0, h + 5)]
    cfg = AugmentConfig(scale=r.random() < .8, crop=r.random() < .5, translate=r.random() < .8,
                        color=r.random() < .8, blur=r.random() < .5)
    return img, box, r.choice(["the man", "dog on the left", "a cup"]), cfg, r.choice([32, 64, 224])


def test_draw_plus_apply_is_the_former_transform_byte_for_byte():
    rs = np.random.default_rng(11)
    for seed in range(500):
        img, box, text, cfg, size = _case(rs, seed)
        canvas, mask, target = reference(img, box, text, random.Random(seed), cfg, size)
        s = train_transform(img, box, text, random.Random(seed), cfg, size=size)
        assert s.image.numpy().tobytes() == canvas.tobytes(), seed
        assert np.array_equal(s.pixel_mask.numpy(), mask) and s.box.numpy().tobytes() == target.tobytes()
        assert s.text == text


def test_draw_needs_no_pixels_and_consumes_the_rng_like_the_transform():
    rs = np.random.default_rng(5)
    for seed in range(200):
        img, box, text, cfg, size = _case(rs, seed)
        a, b = random.Random(seed), random.Random(seed)
        params = draw_params(img.size[0], img.size[1], box, text, cfg, a, size)  # sizes only
        train_transform(img, box, text, b, cfg, size=size)
        assert a.getstate() == b.getstate()  # every draw is made in draw_params
        assert apply_params(img, params).size == params.placed_wh
        again = AugmentParams.from_vector(params.to_vector())
        assert params.to_vector().shape == (PARAM_LEN,)
        assert np.array_equal(apply_params(img, again), apply_params(img, params))


def test_apply_refuses_params_of_another_image_size():
    params = draw_params(50, 40, [1, 2, 30, 20], "x", None, random.Random(0))
    with pytest.raises(ValueError, match="drawn for a"):
        apply_params(Image.new("RGB", (40, 50)), params)
