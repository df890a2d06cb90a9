"""Eval letterboxing against the official fixture; train augmentation properties."""

import dataclasses
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipvg.config import AugmentConfig
from clipvg.data.transforms import (
    GroundingSample,
    canvas_to_image_box,
    eval_transform,
    train_scales,
    train_transform,
)

IMAGENET = (torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225]))
CLIP = (torch.tensor([0.48145466, 0.4578275, 0.40821073]),
        torch.tensor([0.26862954, 0.26130258, 0.27577711]))
MAGENTA = (255, 0, 255)
OFF = AugmentConfig(scale=False, crop=False, translate=False, color=False, blur=False)


@pytest.fixture(scope="module")
def cases(official_cases):
    return official_cases


def _levels(img: torch.Tensor, stats=IMAGENET) -> torch.Tensor:
    """(3,H,W) normalised -> intensity levels 0..255 (float)."""
    mean, std = stats
    return (img * std.view(3, 1, 1) + mean.view(3, 1, 1)) * 255


def _image_region(mask: torch.Tensor):
    """(top, left, h, w) of the mask==0 rectangle."""
    rows = torch.nonzero((mask == 0).any(1)).flatten()
    cols = torch.nonzero((mask == 0).any(0)).flatten()
    return int(rows[0]), int(cols[0]), len(rows), len(cols)


def _noise_with_rect(w, h, box, seed):
    """Noise in [0, 200] (never near magenta) with a magenta rectangle exactly at ``box``."""
    arr = np.random.default_rng(seed).integers(0, 201, (h, w, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = MAGENTA
    return Image.fromarray(arr)


# ---------------------------------------------------------------------------------- eval


@pytest.mark.parametrize("k", range(6))
def test_eval_reproduces_fixture(cases, k):
    raw = Image.fromarray(cases["raw_images"][k].numpy())
    s = eval_transform(raw, cases["raw_boxes_xyxy"][k].tolist(), cases["texts"][k])
    tol = (1 / 255) / IMAGENET[1].view(3, 1, 1) + 1e-6  # one intensity level per channel
    assert s.image.dtype == torch.float32 and s.image.shape == (3, 224, 224)
    assert torch.all((s.image - cases["images"][k]).abs() <= tol)
    assert s.pixel_mask.dtype == torch.int32
    assert torch.equal(s.pixel_mask, cases["pixel_mask"][k])
    assert torch.allclose(s.box, cases["target_boxes"][k], atol=1e-6, rtol=0)
    top, left, _, _ = cases["pad_top_left_bottom_right"][k].tolist()
    assert s.offset == (left, top)
    assert s.placed_hw == tuple(cases["resized_hw"][k].tolist())
    assert s.scale == pytest.approx(224 / max(cases["raw_hw"][k].tolist()))
    assert s.text == cases["texts"][k]


def test_eval_clip_normalisation_same_pixels(cases):
    raw = Image.fromarray(cases["raw_images"][0].numpy())
    s = eval_transform(raw, (30, 40, 120, 230), "x", normalize="clip")
    img = s.pixel_mask == 0
    assert torch.all(s.image[:, ~img] == 0)
    diff = _levels(s.image, CLIP)[:, img] - _levels(cases["images"][0], IMAGENET)[:, img]
    assert diff.abs().max() < 1e-3


def test_eval_other_canvas_size():
    # 240x320 at S=112: ratio 0.35 -> 84x112; top = round(28/2 - 0.1) = 14.
    img = Image.new("RGB", (320, 240), (10, 200, 30))
    s = eval_transform(img, (32, 40, 96, 200), "x", size=112)
    assert s.image.shape == (3, 112, 112) and s.pixel_mask.shape == (112, 112)
    assert _image_region(s.pixel_mask) == (14, 0, 84, 112)
    # box * 0.35 + (0, 14): (11.2, 28, 33.6, 84) -> cxcywh / 112
    want = torch.tensor([22.4, 56.0, 22.4, 56.0]) / 112
    assert torch.allclose(s.box, want, atol=1e-6)


def test_eval_clamps_box_to_image_and_rejects_bad_boxes():
    img = Image.new("RGB", (320, 240))
    s = eval_transform(img, (-10, -10, 330, 250), "x")  # -> the whole image: (0,28)-(224,196)
    assert torch.allclose(s.box, torch.tensor([112, 112, 224, 168]) / 224, atol=1e-6)
    s = eval_transform(img, (400, 10, 500, 50), "x")  # wholly outside -> zero width at x = W
    assert s.box[2] == 0 and s.box[0] == pytest.approx(1.0)
    for bad in [(50, 10, 40, 20), (0, 0, float("nan"), 5), (1, 2, 3)]:
        with pytest.raises(ValueError):
            eval_transform(img, bad, "x")


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "1", "I;16"])
def test_modes_are_converted_to_rgb(mode):
    img = Image.new(mode, (50, 30))
    for s in (eval_transform(img, (5, 5, 20, 20), "x"),
              train_transform(img, (5, 5, 20, 20), "x", random.Random(0), AugmentConfig())):
        assert s.image.shape == (3, 224, 224)


@pytest.mark.parametrize("wh", [(1, 1), (1, 120), (120, 1), (2, 3)])
def test_tiny_and_extreme_images(wh):
    img = Image.new("RGB", wh, (255, 0, 0))
    box = (0, 0, wh[0], wh[1])
    s = eval_transform(img, box, "x")
    assert min(s.placed_hw) >= 1 and (s.pixel_mask == 0).sum() == s.placed_hw[0] * s.placed_hw[1]
    for seed in range(4):
        s = train_transform(img, box, "x", random.Random(seed), AugmentConfig(blur=True))
        assert torch.all(s.box[2:] >= 0) and torch.isfinite(s.box).all()


# ---------------------------------------------------------------------------------- train

_box_sizes = st.integers(8, 400)


@st.composite
def _image_and_box(draw, min_frac: float = 0.0):
    """(W, H, integer xyxy box) with box sides >= min_frac of the image sides (and >= 1 px)."""
    w, h = draw(_box_sizes), draw(_box_sizes)
    bw = draw(st.integers(max(1, round(min_frac * w)), w))
    bh = draw(st.integers(max(1, round(min_frac * h)), h))
    x0, y0 = draw(st.integers(0, w - bw)), draw(st.integers(0, h - bh))
    return w, h, (x0, y0, x0 + bw, y0 + bh)


_cfgs = st.builds(AugmentConfig, scale=st.booleans(), crop=st.booleans(),
                  translate=st.booleans(), color=st.booleans(), blur=st.booleans())
_settings = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(_image_and_box(), _cfgs, st.integers(0, 2**31), st.sampled_from(["a dog", "left dog"]))
def test_train_invariants(ibox, cfg, seed, text):
    w, h, box = ibox
    s = train_transform(_noise_with_rect(w, h, box, seed), box, text, random.Random(seed), cfg)
    assert s.image.shape == (3, 224, 224) and s.image.dtype == torch.float32
    assert s.box.shape == (4,) and s.box.dtype == torch.float32 and s.text == text
    # mask == 1 exactly where every channel is 0 (a real pixel is never exactly the mean)
    assert torch.equal(s.pixel_mask == 1, (s.image == 0).all(0))
    top, left, ph, pw = _image_region(s.pixel_mask)
    assert (ph, pw) == s.placed_hw and int((s.pixel_mask == 0).sum()) == ph * pw
    if not cfg.translate:
        assert (top, left) == (round((224 - ph) / 2 - 0.1), round((224 - pw) / 2 - 0.1))
    cx, cy, bw, bh = (s.box.double() * 224).tolist()
    assert bw >= 0 and bh >= 0
    # inside the placed image, up to the < 1 px of box-vs-rounded-image-size difference
    assert left - 1 <= cx - bw / 2 and cx + bw / 2 <= left + pw + 1
    assert top - 1 <= cy - bh / 2 and cy + bh / 2 <= top + ph + 1
    if not cfg.crop or "left" in text:  # no crop: the affine geometry is exact
        back = canvas_to_image_box(s.box, s.scale, s.offset)
        assert torch.allclose(back, torch.tensor(box, dtype=back.dtype), atol=1e-4 / s.scale)


def _content_check(s: GroundingSample):
    """Pixels whose centre is > margin inside the box are magenta; > margin outside are not.

    margin: a bilinear downscale mixes within +-1 output px; an upscale by f (canvas px per source
    px, at most ``s.scale``) mixes within +-f/2; box vs rounded image size adds < 1 px.
    """
    margin = 2.5 + 0.5 * s.scale
    lv = _levels(s.image)
    cx, cy, bw, bh = (s.box.double() * 224).tolist()
    x0, x1, y0, y1 = cx - bw / 2, cx + bw / 2, cy - bh / 2, cy + bh / 2
    c = torch.arange(224, dtype=torch.float64) + 0.5
    in_y, in_x = (c > y0 + margin) & (c < y1 - margin), (c > x0 + margin) & (c < x1 - margin)
    out_y, out_x = (c < y0 - margin) | (c > y1 + margin), (c < x0 - margin) | (c > x1 + margin)
    inside = in_y[:, None] & in_x[None, :]
    outside = out_y[:, None] | out_x[None, :]
    outside &= s.pixel_mask == 0
    magenta = torch.tensor(MAGENTA, dtype=lv.dtype).view(3, 1, 1)
    is_magenta = ((lv - magenta).abs() <= 2.01).all(0)
    assert bool(is_magenta[inside].all()), "box interior is not the object"
    assert not bool((lv[0][outside] > 210).any()), "object pixels outside the box"
    return int(inside.sum())


@_settings
@given(_image_and_box(min_frac=0.4), st.booleans(), st.booleans(), st.booleans(),
       st.integers(0, 2**31))
def test_train_box_tracks_content(ibox, scale, crop, translate, seed):
    w, h, box = ibox
    cfg = AugmentConfig(scale=scale, crop=crop, translate=translate, color=False, blur=False)
    s = train_transform(_noise_with_rect(w, h, box, seed), box, "a dog", random.Random(seed), cfg)
    n_inside = _content_check(s)
    margin = 2.5 + 0.5 * s.scale  # as in _content_check
    if not crop and min(box[2] - box[0], box[3] - box[1]) * s.scale > 2 * margin + 2:
        assert n_inside > 0  # no crop: a box this big keeps an interior, the check bites


def test_content_check_is_sensitive():
    # The same check must fail for a box that is off by a few pixels.
    box = (100, 80, 220, 200)
    s = eval_transform(_noise_with_rect(300, 300, box, 0), box, "x")
    assert _content_check(s) > 1000
    moved = dataclasses.replace(s, box=s.box + torch.tensor([6 / 224, 0, 0, 0]))
    with pytest.raises(AssertionError):
        _content_check(moved)
    shrunk = dataclasses.replace(s, box=s.box * torch.tensor([1, 1, 0.8, 0.8]))
    with pytest.raises(AssertionError):
        _content_check(shrunk)


def test_crop_clamps_box_to_crop():
    # A box covering the whole image covers the whole crop after any crop, so it must equal the
    # placed image region (within the < 1 px rounding of the two resizes).
    img, box = _noise_with_rect(800, 700, (0, 0, 800, 700), 1), (0, 0, 800, 700)
    cfg = AugmentConfig(scale=False, color=False)
    cropped = 0
    for seed in range(30):
        s = train_transform(img, box, "a dog", random.Random(seed), cfg)
        top, left, ph, pw = _image_region(s.pixel_mask)
        want = torch.tensor([left + pw / 2, top + ph / 2, pw, ph], dtype=torch.float64) / 224
        assert torch.allclose(s.box.double(), want, atol=1 / 224)
        cropped += abs(s.offset[0] - left) > 1e-6 or abs(s.offset[1] - top) > 1e-6
    assert cropped >= 5  # crop origin folded into the offset: crops did happen


def test_spatial_words_disable_crop():
    # 300x480 (aspect 1.6) at long side 224 -> 140x224 unless a crop changes the aspect.
    img, box = _noise_with_rect(480, 300, (180, 100, 300, 200), 2), (180, 100, 300, 200)
    cfg = AugmentConfig(scale=False)
    for text in ["the dog on the LEFT", "bright dog", "middle", "topping", "bottom"]:
        for seed in range(25):
            s = train_transform(img, box, text, random.Random(seed), cfg)
            assert s.placed_hw == (140, 224) and s.scale == pytest.approx(224 / 480)
    shapes = {train_transform(img, box, "a dog", random.Random(seed), cfg).placed_hw
              for seed in range(25)}
    assert len(shapes - {(140, 224)}) >= 3  # control: without the words crops do happen
    no_crop = dataclasses.replace(cfg, crop=False)
    assert {train_transform(img, box, "a dog", random.Random(seed), no_crop).placed_hw
            for seed in range(25)} == {(140, 224)}


def test_scale_switch_and_scales():
    assert train_scales(224) == [224, 192, 160, 128, 96, 64, 32]
    assert train_scales(448) == [448, 384, 320, 256, 192, 128, 64]
    img, box = Image.new("RGB", (400, 300)), (10, 10, 100, 100)
    longs = {max(train_transform(img, box, "x", random.Random(i),
                                 AugmentConfig(crop=False)).placed_hw) for i in range(60)}
    assert longs == set(train_scales(224))
    off = {max(train_transform(img, box, "x", random.Random(i), OFF).placed_hw) for i in range(10)}
    assert off == {224}


def test_translate_places_randomly_within_canvas():
    img, box = Image.new("RGB", (400, 300)), (10, 10, 100, 100)
    cfg = AugmentConfig(crop=False, color=False)
    spots = set()
    for i in range(30):
        s = train_transform(img, box, "x", random.Random(i), cfg)
        top, left, ph, pw = _image_region(s.pixel_mask)
        assert s.offset == (left, top) and top + ph <= 224 and left + pw <= 224
        spots.add((top, left))
    assert len(spots) > 20


def test_all_off_equals_eval_and_color_blur_change_pixels():
    box = (30, 20, 200, 150)
    img = _noise_with_rect(320, 240, box, 3)
    ref = eval_transform(img, box, "x")
    s = train_transform(img, box, "x", random.Random(0), OFF)
    assert torch.equal(s.image, ref.image) and torch.equal(s.box, ref.box)
    for switch in ("color", "blur"):
        cfg = dataclasses.replace(OFF, **{switch: True})
        outs = [train_transform(img, box, "x", random.Random(i), cfg) for i in range(8)]
        assert all(torch.equal(o.pixel_mask, ref.pixel_mask) for o in outs)
        assert any(not torch.equal(o.image, ref.image) for o in outs), switch
    clip_cfg = dataclasses.replace(OFF, normalize="clip")
    clip = train_transform(img, box, "x", random.Random(0), clip_cfg)
    m = ref.pixel_mask == 0
    assert (_levels(clip.image, CLIP)[:, m] - _levels(ref.image)[:, m]).abs().max() < 1e-3


def test_determinism():
    box = (30, 20, 200, 150)
    img = _noise_with_rect(320, 240, box, 4)
    cfg = AugmentConfig(blur=True)
    runs = [[train_transform(img, box, "a dog", random.Random(seed), cfg) for seed in (7, 7, 8, 9)]
            for _ in range(2)]
    a, b = runs[0][0], runs[0][1]
    assert torch.equal(a.image, b.image) and torch.equal(a.box, b.box) and a.offset == b.offset
    assert torch.equal(runs[1][0].image, a.image)
    assert any(not torch.equal(o.image, a.image) or not torch.equal(o.box, a.box)
               for o in runs[0][2:])


@settings(max_examples=40, deadline=None)
@given(_image_and_box(), st.integers(32, 512))
def test_canvas_to_image_box_inverts_eval(ibox, size):
    w, h, box = ibox
    s = eval_transform(Image.new("RGB", (w, h)), box, "x", size=size)
    back = canvas_to_image_box(s.box, s.scale, s.offset, size)
    assert torch.allclose(back, torch.tensor(box, dtype=back.dtype), atol=1e-4 / s.scale, rtol=0)


def test_canvas_to_image_box_batched():
    img = Image.new("RGB", (320, 240))
    boxes = [(30, 40, 120, 230), (0, 0, 320, 240)]
    samples = [eval_transform(img, b, "x") for b in boxes]
    batch = torch.stack([s.box for s in samples])
    back = canvas_to_image_box(batch, torch.tensor([s.scale for s in samples]),
                               torch.tensor([s.offset for s in samples]), 224)
    assert back.shape == (2, 4)
    assert torch.allclose(back, torch.tensor(boxes, dtype=back.dtype), atol=1e-3)


def test_crop_acceptance_keeps_official_xy_mixup():
    # Official rule: accept a crop when centre-x > crop top and centre-y > crop left. On a 3:1
    # image the crop's left ranges over ~1000 px and its top over <= 216 px, so a box centre
    # hugging the top edge (cy ~ 0) is almost never accepted (needs left == 0) while one hugging
    # the left edge (cx ~ 0) is often accepted (needs top == 0). A "fixed" rule flips this.
    img = Image.new("RGB", (300, 100))  # -> 1200..1800 x 400..600 before the crop
    cfg = AugmentConfig(scale=False, color=False, translate=False)

    def n_cropped(box):
        n = 0
        for seed in range(30):
            s = train_transform(img, box, "a dog", random.Random(seed), cfg)
            n += s.placed_hw != (75, 224) or s.offset != (0.0, round((224 - 75) / 2 - 0.1))
        return n

    assert n_cropped((290, 0, 300, 0.1)) <= 2  # top strip at the right: cy ~ 0.25 px resized
    assert n_cropped((0, 90, 0.1, 100)) >= 5  # left strip at the bottom: cx ~ 0.25 px resized
