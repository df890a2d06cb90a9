"""The synthetic grounding world: the embedded default dataset, deterministic by seed.

Each image is a square canvas (``SynthConfig.image_size`` px) with a pale, plain or mildly
noisy background and ``min_objects..max_objects`` flat-coloured shapes (shape x colour x size
class) with exact boxes, several referring expressions that each name one object
(:mod:`clipvg.sources.synthetic.text`), and the output of a *simulated detector*
(:mod:`clipvg.sources.synthetic.detector`: jittered boxes, class confusions, colour errors,
misses, false positives, scores), of a *simulated scene-graph model*
(:mod:`clipvg.sources.synthetic.scenegraph`) and of a *simulated captioner*
(:mod:`clipvg.sources.synthetic.captioner`), each noisy in its own way, that the pseudo-label
generators (:mod:`clipvg.pseudo`) start from, as real models' outputs would be for a real
dataset.

Objects of one image are drawn from a few shapes and colours only, so most share a shape or a
colour with another object and expressions need all their words. Every image comes from its
own random stream ``SeedSequence([seed, crc32(split), index])``: images are reproducible one by
one (in any order, on any worker) and the splits never share an image. The scene-graph model
and the captioner draw from a child stream of it (:func:`sources_rng`), so adding them left
the images, expressions and detections of a seed unchanged.

:func:`write_world` writes a whole world (train/val/test) in the dataset layout to any URI.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from clipvg import __version__
from clipvg.config import SynthConfig
from clipvg.data import storage
from clipvg.sources.synthetic.captioner import Caption, simulate_captions
from clipvg.sources.synthetic.scenegraph import Triplet, simulate_triplets
from clipvg.sources.synthetic.tables import RECORD_TABLES, build_tables, image_rows, simulator_rates
from clipvg.data.validate import ingest
from clipvg.sources.synthetic.detector import (  # noqa: F401  (the rates are re-exported)
    BOX_JITTER,
    COLOR_ERROR_RATE,
    COLOR_MISSING_RATE,
    FALSE_POSITIVES_PER_IMAGE,
    LABEL_CONFUSION_RATE,
    MISS_RATE,
    Detection,
    simulate_detections,
)
from clipvg.sources.synthetic.text import (
    EXPR_TYPES,
    HUE_RING,
    SHAPES,
    Expression,
    generate_expressions,
)

# How the canonical shapes / colours / sizes look (their words live in text.py).
COLORS = {  # base RGB; each object gets a small shade jitter (COLOR_JITTER)
    "red": (214, 39, 40),
    "orange": (245, 135, 20),
    "yellow": (235, 205, 30),
    "green": (44, 160, 44),
    "blue": (31, 90, 210),
    "purple": (135, 65, 185),
    "pink": (240, 110, 180),
}
# Side of an object (sqrt(w*h)) as a fraction of the image side; the gaps keep classes apart.
SIZES = {"small": (0.09, 0.12), "medium": (0.16, 0.20), "large": (0.25, 0.30)}
COLOR_JITTER = 12  # +- per channel, so pixels of one colour class are not all identical
TEXTURE_P = 0.5  # share of images with a noisy background
TEXTURE_AMPLITUDE = 5  # +- grey levels of the background noise
MAX_OVERLAP = 0.1  # intersection / smaller area, allowed only when a free spot is not found
PLACEMENT_TRIES = 40
assert set(COLORS) == set(HUE_RING), "every colour word needs an RGB value"


@dataclass(frozen=True)
class SynthObject:
    """One drawn object; ``box`` = (x0, y0, x1, y1), pixel columns x0..x1-1 are painted."""

    index: int
    shape: str
    color: str
    size: str
    rgb: tuple[int, int, int]
    box: tuple[float, float, float, float]


@dataclass
class SyntheticImage:
    image_id: str
    image: Image.Image
    objects: list[SynthObject]
    expressions: list[Expression]
    detections: list[Detection] = field(default_factory=list)
    triplets: list[Triplet] = field(default_factory=list)
    captions: list[Caption] = field(default_factory=list)

    def encode(self, image_format: str = "png") -> bytes:
        """The image as file bytes (PNG at a fast compression level, or JPEG q=95)."""
        buf = io.BytesIO()
        if image_format == "png":
            self.image.save(buf, format="PNG", compress_level=1)
        elif image_format in ("jpg", "jpeg"):
            self.image.save(buf, format="JPEG", quality=95)
        else:
            raise ValueError(f"image_format must be png or jpeg, got {image_format!r}")
        return buf.getvalue()


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of ``split`` (independent of every other image)."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]))


def sources_rng(rng: np.random.Generator) -> np.random.Generator:
    """The scene-graph model's and captioner's stream: child 2 of ``rng``'s seed sequence,
    derived without drawing from (or spawning on) ``rng`` itself."""
    ss = rng.bit_generator.seed_seq
    return np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, 2)))


# --------------------------------------------------------------------------------------------
# Scene layout
# --------------------------------------------------------------------------------------------


def _overlap(a, b) -> float:
    """Intersection over the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _place(rng, w: int, h: int, size: int, boxes: list) -> tuple | None:
    """A random free spot for a w x h box (2 px apart from the others); failing that, one with
    mild overlap; None if neither is found."""
    for limit, pad in ((0.0, 2), (MAX_OVERLAP, 0)):
        for _ in range(PLACEMENT_TRIES):
            x0 = int(rng.integers(0, size - w + 1))
            y0 = int(rng.integers(0, size - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            padded = (x0 - pad, y0 - pad, x0 + w + pad, y0 + h + pad)
            if all(_overlap(padded, b) <= limit for b in boxes):
                return box
    return None


def sample_objects(rng: np.random.Generator, cfg: SynthConfig) -> list[SynthObject]:
    """Objects with non-overlapping (rarely mildly overlapping) boxes, larger ones placed first.

    Shapes and colours come from small per-image palettes so that attributes repeat; a size
    class that does not fit is downgraded, and an object that fits nowhere is dropped.
    """
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    k = max(2, (n + 1) // 2)
    shapes = rng.choice(len(SHAPES), size=min(k + 1, len(SHAPES)), replace=False)
    colors = rng.choice(len(HUE_RING), size=min(k, len(HUE_RING)), replace=False)
    size_names = list(SIZES)
    picks = rng.integers(0, (3, len(shapes), len(colors)), size=(n, 3))  # size, shape, colour
    specs = sorted(
        ((int(a), SHAPES[shapes[b]], HUE_RING[colors[c]]) for a, b, c in picks.tolist()),
        key=lambda s: -s[0],
    )
    objects: list[SynthObject] = []
    for size_idx, shape, color in specs:
        for s in range(size_idx, -1, -1):
            lo, hi = SIZES[size_names[s]]
            side = rng.uniform(lo, hi) * cfg.image_size
            aspect = 1.0 if shape in ("circle", "square") else rng.uniform(0.8, 1.25)
            w = max(3, round(side * aspect**0.5))
            h = max(3, round(side / aspect**0.5))
            box = _place(rng, w, h, cfg.image_size, [o.box for o in objects])
            if box is not None:
                base = np.array(COLORS[color])
                rgb = np.clip(base + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3), 0, 255)
                objects.append(SynthObject(len(objects), shape, color, size_names[s],
                                           tuple(int(v) for v in rgb),
                                           tuple(float(v) for v in box)))
                break
    return objects


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------

def _unit_star(inner: float = 0.42) -> np.ndarray:
    """A 5-pointed star's 10 vertices, normalised to [0, 1]^2 so it spans its box exactly."""
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    pts = np.stack([np.cos(angles) * radii, -np.sin(angles) * radii], 1)
    return (pts - pts.min(0)) / (pts.max(0) - pts.min(0))


_STAR = _unit_star()


def _draw_object(draw: ImageDraw.ImageDraw, o: SynthObject) -> None:
    """Paint ``o`` so its pixels span exactly its box (PIL coordinates are inclusive)."""
    x0, y0 = int(o.box[0]), int(o.box[1])
    x1, y1 = int(o.box[2]) - 1, int(o.box[3]) - 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    fill = o.rgb
    if o.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif o.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif o.shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), (cx, y0)], fill=fill)
    elif o.shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif o.shape == "cross":
        tx, ty = max(1, round((x1 - x0) * 0.18)), max(1, round((y1 - y0) * 0.18))
        draw.rectangle((x0, round(cy) - ty, x1, round(cy) + ty), fill=fill)
        draw.rectangle((round(cx) - tx, y0, round(cx) + tx, y1), fill=fill)
    elif o.shape == "star":
        pts = _STAR * (x1 - x0, y1 - y0) + (x0, y0)
        draw.polygon([tuple(p) for p in pts.round().tolist()], fill=fill)
    else:
        raise ValueError(f"unknown shape {o.shape!r}")


def render(objects: list[SynthObject], size: int, rng: np.random.Generator) -> Image.Image:
    """A pale background (plain, or with faint grey noise) with the objects painted in order."""
    # Near-neutral grey with a faint tint, so no background reads as one of the COLORS.
    base = int(rng.integers(205, 246)) + rng.integers(-8, 9, 3)  # stays in [197, 253]
    if rng.random() < TEXTURE_P:
        # int16 noise and no clip: the base keeps base +- amplitude inside [0, 255] (fast path)
        noise = rng.integers(-TEXTURE_AMPLITUDE, TEXTURE_AMPLITUDE + 1, (size, size, 1),
                             dtype=np.int16)
        pixels = (noise + base.astype(np.int16)).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB")
    else:
        image = Image.new("RGB", (size, size), tuple(int(v) for v in base))
    draw = ImageDraw.Draw(image)
    for o in objects:
        _draw_object(draw, o)
    return image


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


def generate_image(
    rng: np.random.Generator | int,
    cfg: SynthConfig | None = None,
    *,
    image_id: str = "syn",
    n_expressions: int | None = None,
) -> SyntheticImage:
    """Generate one image with its objects, expressions, detections, scene-graph triplets and
    captions.

    ``rng`` is a numpy Generator (consumed) or an int seed. Pure: the same stream gives the
    same image, byte for byte. Triplets and captions come from :func:`sources_rng`.
    """
    cfg = cfg or SynthConfig()
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    side = sources_rng(rng)
    objects = sample_objects(rng, cfg)
    image = render(objects, cfg.image_size, rng)
    expressions = generate_expressions(objects, cfg.image_size, rng, n_expressions)
    detections = simulate_detections(objects, cfg.image_size, rng)
    triplets = simulate_triplets(objects, cfg.image_size, side)
    captions = simulate_captions(objects, cfg.image_size, side)
    return SyntheticImage(image_id, image, objects, expressions, detections, triplets, captions)


# --------------------------------------------------------------------------------------------
# A whole world on storage
# --------------------------------------------------------------------------------------------


def _generate(uri, cfg, seed, splits, ext, embed, show, storage_options) -> dict[str, list]:
    """Generate every image, upload its file (unless embedded), return the tables' rows.

    Uploads run on a few threads (object stores are latency bound) with a bounded queue, so
    memory stays flat however big the world is; the first failed upload stops the run.
    """
    rows: dict[str, list] = {"images": [], "samples": [], **{t: [] for t in RECORD_TABLES}}
    total = sum(splits.values())
    with ThreadPoolExecutor(4) as pool, tqdm(total=total, disable=not show, unit="img",
                                             desc="synth") as bar:
        pending: list = []
        for split, n in splits.items():
            for i in range(int(n)):
                im = generate_image(image_rng(seed, split, i), cfg,
                                    image_id=f"syn-s{seed}-{split}-{i:06d}")
                data = im.encode(ext)
                rel = None if embed else f"files/{im.image_id}.{ext}"
                if rel:
                    pending.append(pool.submit(storage.write_bytes, data,
                                               storage.join(uri, rel), **storage_options))
                rows["images"].append(dict(image_id=im.image_id, uri=rel,
                                           bytes=data if embed else None, width=cfg.image_size,
                                           height=cfg.image_size, split=split))
                for name, more in image_rows(im, split).items():
                    rows[name] += more
                while len(pending) > 64:
                    pending.pop(0).result()
                bar.update(1)
        for f in pending:
            f.result()
    return rows


def _write_tables(uri: str, rows: dict[str, list], manifest: dict, show: bool,
                  storage_options: dict) -> None:
    """Build the tables and publish them with :func:`clipvg.data.validate.ingest` (row
    validation, quarantine/, manifest.json last). ``split`` is an extra column of every table
    but samples, whose schema has it already. Synthetic rows are valid by construction, so
    anything quarantined is a generator bug: raised, and the world is left without a manifest
    (incomplete) rather than published short of rows."""
    tables = build_tables(rows)
    report = ingest(uri, tables["samples"], tables["images"], manifest=manifest,
                    extra_tables={t: tables[t] for t in RECORD_TABLES}, progress=show,
                    **storage_options)
    if report.quarantined or report.sizes_corrected:
        storage.remove(storage.join(uri, "manifest.json"), **storage_options)
        raise RuntimeError(f"synthetic world at {uri} failed validation (a generator bug; "
                           f"see {storage.join(uri, 'quarantine')}): {report.summary()}")


def world_key(cfg: SynthConfig, seed: int, splits: dict[str, int], image_format: str = "png",
              embed_images: bool = False) -> dict:
    """What identifies a written world (the manifest fields :func:`write_world` compares)."""
    ext = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}.get(image_format)
    if ext is None:
        raise ValueError(f"image_format must be png or jpeg, got {image_format!r}")
    rates = simulator_rates()  # the scene graph's and captioner's are part of the key, so a
    # world written before they existed (no triplets/ nor captions/) is regenerated
    return dict(seed=seed, images={s: int(n) for s, n in splits.items()},
                config=dataclasses.asdict(cfg), image_format=ext, embedded_images=embed_images,
                scene_graph=rates["scene_graph"], captioner=rates["captioner"])


def same_world(manifest: dict, key: dict) -> bool:
    """Whether an existing ``manifest.json`` is the world of ``key`` (:func:`world_key`)."""
    return {k: manifest.get(k) for k in key} == key


def write_world(
    uri: str,
    cfg: SynthConfig | None = None,
    seed: int = 0,
    splits: dict[str, int] | None = None,
    image_format: str = "png",
    *,
    embed_images: bool = False,
    progress: bool | None = None,
    force: bool = False,
    **storage_options,
) -> dict:
    """Write a synthetic world in the dataset layout to ``uri`` and return its manifest.

    Layout: ``samples/``, ``images/``, ``detections/``, ``triplets/``, ``captions/`` (Parquet
    folders, each with a ``split`` column; see ``docs/pseudo.md``), ``files/<image_id>.<ext>``
    (unless ``embed_images``, which stores the encoded bytes in the images table instead) and
    ``manifest.json``, written last: its presence means the world is complete. ``splits``
    defaults to the config's train/val/test counts. If a manifest for the same seed, splits,
    config, format and scene-graph / captioner rates exists, nothing is rewritten
    (``force=True`` regenerates; the old manifest is removed first, and files of an earlier,
    different world are left in ``files/`` but no longer referenced by the images table).
    ``progress``: tqdm bar; None = only on a TTY for big worlds.
    ``storage_options`` (e.g. ``endpoint_url``) go to :func:`clipvg.data.storage.filesystem`.
    """
    cfg = cfg or SynthConfig()
    if splits is None:
        splits = {"train": cfg.train_images, "val": cfg.val_images, "test": cfg.test_images}
    key = world_key(cfg, seed, splits, image_format, embed_images)
    ext = key["image_format"]
    rates = simulator_rates()
    manifest_uri = storage.join(uri, "manifest.json")
    if not force and storage.exists(manifest_uri, **storage_options):
        old = storage.read_json(manifest_uri, **storage_options)
        if same_world(old, key):
            return old
    storage.remove(manifest_uri, **storage_options)  # incomplete until rewritten (also: force)
    total = sum(splits.values())
    show = (sys.stderr.isatty() and total >= 1000) if progress is None else progress
    rows = _generate(uri, cfg, seed, splits, ext, embed_images, show, storage_options)
    samples = rows["samples"]
    manifest = dict(
        key,
        kind="clipvg-dataset", dataset="synthetic", created_by=f"clipvg {__version__}",
        counts={s: dict(images=int(n), samples=sum(r["split"] == s for r in samples),
                        **{t: sum(r["split"] == s for r in rows[t]) for t in RECORD_TABLES})
                for s, n in splits.items()},
        expr_types={t: sum(r["expr_type"] == t for r in samples) for t in EXPR_TYPES},
        tables=["samples", "images", *RECORD_TABLES, "quarantine"],
        detector=rates["detector"],
    )
    _write_tables(uri, rows, manifest, show, storage_options)  # writes the manifest last
    return storage.read_json(manifest_uri, **storage_options)  # + ingest's validation report
