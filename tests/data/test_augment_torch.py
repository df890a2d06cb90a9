"""The device backend (torch) against the CPU backend (PIL) on thousands of random cases."""

import random

import numpy as np
import torch
from PIL import Image

from clipvg.config import AugmentConfig
from clipvg.data.augment import draw_params
from clipvg.data.augment_torch import apply_batch
from clipvg.data.transforms import train_transform

# clipvg.data.augment_torch's docstring: max abs difference 0 measured (bit-exact), asserted


def _case(rs: np.random.Generator, seed: int):
    r = random.Random(seed)
    w, h = int(rs.integers(4, 90)), int(rs.integers(4, 90))
    pixels = rs.integers(0, 256, (h, w, 3), dtype=np.uint8)
    x0, y0 = rs.uniform(0, w), rs.uniform(0, h)
    box = [x0, y0, rs.uniform(x0, w + 5), rs.uniform(y0, h + 5)]
    # the crop branch resizes to 400-600 px (slow here): it is drawn in ~1 case of 7
    cfg = AugmentConfig(scale=r.random() < .8, crop=r.random() < .3, translate=r.random() < .8,
                        color=r.random() < .8, blur=r.random() < .5)
    text = r.choice(["the man", "dog on the left", "a cup"])
    return pixels, box, text, cfg, r.choice([32, 48, 64])


def test_device_backend_equals_the_cpu_backend_on_2000_random_cases():
    rs = np.random.default_rng(7)
    taken = set()
    for seed in range(2000):
        pixels, box, text, cfg, size = _case(rs, seed)
        ref = train_transform(Image.fromarray(pixels), box, text, random.Random(seed), cfg, size=size, raw=True)
        params = draw_params(pixels.shape[1], pixels.shape[0], box, text, cfg, random.Random(seed), size)
        taken |= {k for k, on in [("crop", params.short_wh), ("jitter", params.jitter),
                                  ("blur", params.blur)] if on}
        out = apply_batch([pixels, pixels], [params, params], image_index=[1, 0], normalize=None)
        assert torch.equal(out["image"][0], out["image"][1])
        assert torch.equal(out["pixel_mask"][0], ref.pixel_mask)  # placement exactly
        assert torch.equal(out["image"][0], ref.image), seed  # uint8 canvases, bit for bit
        if seed % 10 == 0:  # normalised, as the model sees it (every 10th case: same pixels)
            norm = apply_batch([pixels], [params])["image"][0]
            ref_norm = train_transform(Image.fromarray(pixels), box, text, random.Random(seed), cfg, size=size)
            assert torch.equal(norm, ref_norm.image), seed
    assert taken == {"crop", "jitter", "blur"}


def test_device_backend_runs_a_batch_of_several_images_and_sizes():
    rs = np.random.default_rng(1)
    cases = [_case(rs, s) for s in range(12)]
    images = [c[0] for c in cases]
    params = [draw_params(c[0].shape[1], c[0].shape[0], c[1], c[2], c[3], random.Random(s), 64)
              for s, c in enumerate(cases)]
    out = apply_batch(images, params)
    assert out["image"].shape == (12, 3, 64, 64) and out["image"].dtype == torch.float32
    for b, p in enumerate(params):
        one = apply_batch([images[b]], [p])
        assert torch.equal(one["image"][0], out["image"][b])


def test_resize_pass_order_is_pillows_where_the_two_orders_differ():
    """The pass-order rule of ``_resize`` is empirical: sizes on both sides of it, and where
    the two orders give different pixels, the result must be Pillow's."""
    from clipvg.data.augment_torch import _resize

    rs = np.random.default_rng(3)
    for w, h, w2, h2 in [(40, 40, 21, 2), (40, 40, 22, 2), (40, 60, 37, 55), (40, 60, 38, 55),
                         (60, 40, 61, 39), (51, 38, 75, 46), (22, 35, 8, 7), (640, 480, 224, 168),
                         (640, 480, 800, 600), (800, 600, 224, 168), (533, 400, 160, 120)]:
        pixels = rs.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(pixels).resize((w2, h2), Image.BILINEAR)).transpose(2, 0, 1)
        out = _resize(torch.from_numpy(pixels).permute(2, 0, 1).to(torch.int32), (w2, h2))
        assert np.array_equal(out.numpy(), ref), (w, h, w2, h2)
