"""Pre-training data: fresh synthetic scenes, their captions, phrases and per-patch targets.

This plays the part of CLIP's web data (see :mod:`clipvg.pretrain`): images come from the
synthetic renderer under their own seed stream (split name ``"pretrain"``, never a world split),
and the text is *captions* and *object phrases* ("a small red circle", "a blue star at the top
left"), never the referring expressions of :mod:`clipvg.sources.synthetic.text`: a phrase may
match several objects, and it never relates one object to another.

Per-patch targets (``G x G`` grid of ``patch`` px cells, raster order): each cell belongs to the
object whose box covers most of it (at least ``MIN_COVER`` of the cell or of the object), or to
the background (-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipvg.config import SynthConfig
from clipvg.sources.synthetic.scenes import SIZES, SynthObject, image_rng, render, sample_objects
from clipvg.sources.synthetic.text import COLOR_WORDS, FILLER_NOUNS, HUE_RING, SHAPE_WORDS, SHAPES, SIZE_WORDS

PRETRAIN_SPLIT = "pretrain"  # the seed-stream name; world splits are train/val/test
SIZE_NAMES = tuple(SIZES)
MIN_COVER = 0.3  # share of the cell (or of the object, for objects smaller than a cell)
PHRASES_PER_IMAGE = 8  # object phrases + phrases that match nothing, padded to this
NEGATIVE_PHRASES = 2
POSITION_P = 0.3  # share of object phrases that also name the object's region of the image
HORIZONTAL = ("left", "center", "right")  # thirds of the image, by box centre
VERTICAL = ("top", "middle", "bottom")


@dataclass
class Scene:
    """One pre-training image and everything its losses need.

    ``phrases``: ``PHRASES_PER_IMAGE`` strings ("" = padding); ``phrase_targets``
    ``(PHRASES_PER_IMAGE, G*G)`` bool, True where the cell belongs to an object the phrase
    describes; ``cell_object`` ``(G*G,)`` object index or -1; ``cell_color`` / ``cell_shape`` /
    ``cell_size`` ``(G*G,)`` class ids with the background as the last class; ``cell_box``
    ``(G*G, 4)`` the owning object's ``(cx, cy, w, h)`` / image side (0 for background).
    """

    pixels: np.ndarray  # (S, S, 3) uint8
    objects: list[SynthObject]
    caption: str
    phrases: list[str]
    phrase_targets: np.ndarray
    cell_object: np.ndarray
    cell_color: np.ndarray
    cell_shape: np.ndarray
    cell_size: np.ndarray
    cell_box: np.ndarray


def region(o: SynthObject, size: int) -> tuple[str, str]:
    """(horizontal third, vertical third) of the object's box centre."""
    cx, cy = (o.box[0] + o.box[2]) / 2 / size, (o.box[1] + o.box[3]) / 2 / size
    return HORIZONTAL[min(2, int(cx * 3))], VERTICAL[min(2, int(cy * 3))]


def region_words(h: str, v: str) -> str:
    if h == "center" and v == "middle":
        return "in the center"
    if h == "center":
        return f"at the {v}"
    if v == "middle":
        return f"on the {h}"
    return f"at the {v} {h}"


def cell_owners(objects: list[SynthObject], size: int, patch: int) -> np.ndarray:
    """``(G*G,)`` index of the object owning each cell, -1 for background (see module doc)."""
    grid = size // patch
    owner = np.full(grid * grid, -1, dtype=np.int64)
    if not objects:
        return owner
    edges = np.arange(grid) * patch
    cells = np.stack(np.meshgrid(edges, edges, indexing="xy"), -1).reshape(-1, 2)  # (x0, y0)
    boxes = np.array([o.box for o in objects], dtype=np.float64)  # (n, 4)
    iw = np.minimum(cells[:, None, 0] + patch, boxes[None, :, 2]) - np.maximum(cells[:, None, 0], boxes[None, :, 0])
    ih = np.minimum(cells[:, None, 1] + patch, boxes[None, :, 3]) - np.maximum(cells[:, None, 1], boxes[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)  # (cells, n)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cover = inter / np.minimum(area[None, :], patch * patch)
    best = cover.argmax(1)
    owner[cover.max(1) >= MIN_COVER] = best[cover.max(1) >= MIN_COVER]
    # Every object owns at least the cell holding its centre (tiny objects straddle cells).
    for k, o in enumerate(objects):
        cx = min(grid - 1, int((o.box[0] + o.box[2]) / 2 // patch))
        cy = min(grid - 1, int((o.box[1] + o.box[3]) / 2 // patch))
        if owner[cy * grid + cx] == -1:
            owner[cy * grid + cx] = k
    return owner


def _describe(o: SynthObject, rng: np.random.Generator, size: int) -> tuple[str, tuple]:
    """A phrase for ``o`` with a random subset of its attributes; returns (text, key) where
    key = (size, colour, shape, region or None) with None for words left out."""
    use_size = rng.random() < 0.4
    use_color = rng.random() < 0.8
    use_shape = rng.random() < 0.8 or not use_color
    words = []
    if use_size:
        words.append(str(rng.choice(SIZE_WORDS[o.size])))
    if use_color:
        words.append(str(rng.choice(COLOR_WORDS[o.color])))
    words.append(str(rng.choice(SHAPE_WORDS[o.shape])) if use_shape else str(rng.choice(FILLER_NOUNS)))
    where = region(o, size) if rng.random() < POSITION_P else None
    text = " ".join(words)
    text = f"{'an' if text[0] in 'aeiou' else 'a'} {text}"
    if where:
        text = f"{text} {region_words(*where)}"
    key = (o.size if use_size else None, o.color if use_color else None,
           o.shape if use_shape else None, where)
    return text, key


def _matches(o: SynthObject, key: tuple, size: int) -> bool:
    s, c, sh, where = key
    return ((s is None or o.size == s) and (c is None or o.color == c)
            and (sh is None or o.shape == sh) and (where is None or region(o, size) == where))


def _absent_phrase(objects: list[SynthObject], rng: np.random.Generator) -> str:
    """A colour + shape phrase that matches no object of the image."""
    present = {(o.color, o.shape) for o in objects}
    while True:
        color, shape = str(rng.choice(HUE_RING)), str(rng.choice(SHAPES))
        if (color, shape) not in present:
            return f"a {COLOR_WORDS[color][0]} {SHAPE_WORDS[shape][0]}"


def caption(objects: list[SynthObject], rng: np.random.Generator, size: int) -> str:
    """A web-style caption listing every object with its attributes and region, shuffled."""
    parts = []
    for k in rng.permutation(len(objects)):
        o = objects[k]
        text = f"{SIZE_WORDS[o.size][0]} {COLOR_WORDS[o.color][0]} {SHAPE_WORDS[o.shape][0]}"
        parts.append(f"a {text} {region_words(*region(o, size))}")
    return ", ".join(parts) if parts else "an empty picture"


def make_scene(seed: int, index: int, cfg: SynthConfig, patch: int) -> Scene:
    """Scene ``index`` of the pre-training stream ``seed`` (pure: same arguments, same scene)."""
    rng = image_rng(seed, PRETRAIN_SPLIT, index)
    objects = sample_objects(rng, cfg)
    pixels = np.asarray(render(objects, cfg.image_size, rng))
    S, grid = cfg.image_size, cfg.image_size // patch
    owner = cell_owners(objects, S, patch)
    phrases, targets = [], np.zeros((PHRASES_PER_IMAGE, grid * grid), dtype=bool)
    order = rng.permutation(len(objects))[: PHRASES_PER_IMAGE - NEGATIVE_PHRASES]
    for k in order:
        text, key = _describe(objects[k], rng, S)
        matching = [j for j, o in enumerate(objects) if _matches(o, key, S)]
        targets[len(phrases)] = np.isin(owner, matching)
        phrases.append(text)
    for _ in range(NEGATIVE_PHRASES):
        phrases.append(_absent_phrase(objects, rng))  # its targets stay all False
    phrases += [""] * (PHRASES_PER_IMAGE - len(phrases))
    fg = owner >= 0
    pick = np.where(fg, owner, 0)
    box = np.zeros((grid * grid, 4), dtype=np.float32)
    color = np.full(grid * grid, len(HUE_RING), dtype=np.int64)
    shape = np.full(grid * grid, len(SHAPES), dtype=np.int64)
    size_cls = np.full(grid * grid, len(SIZE_NAMES), dtype=np.int64)
    if objects:
        b = np.array([o.box for o in objects], dtype=np.float32) / S
        cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
        box[fg] = cxcywh[pick[fg]]
        color[fg] = np.array([HUE_RING.index(o.color) for o in objects])[pick[fg]]
        shape[fg] = np.array([SHAPES.index(o.shape) for o in objects])[pick[fg]]
        size_cls[fg] = np.array([SIZE_NAMES.index(o.size) for o in objects])[pick[fg]]
    return Scene(pixels, objects, caption(objects, rng, S), phrases, targets, owner, color, shape,
                 size_cls, box)
