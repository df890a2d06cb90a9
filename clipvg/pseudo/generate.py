"""Run one pseudo-label generator over a batch of images: the body of a Ray Data
``map_batches`` stage (pure Python and pyarrow, no Ray here).

Each generator sees the records of one image at a time and draws its randomness from
``default_rng([seed, crc32(image_id)])``, so an image's rows are the same whichever batch it
is in and in whatever order its records come. Boxes are x0, y0, x1, y1 pixels of the original
image throughout (the detections / triplets tables' convention, kept in the samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from clipvg.data.schema import SAMPLES_SCHEMA
from clipvg.pseudo import caption, relation, template

Records = dict[str, list[dict]]  # table name -> this image's rows


@dataclass(frozen=True)
class Generator:
    """A pseudo-label source: which record tables it reads, its options and their defaults,
    and ``run(image, records, seed, split, dataset, options) -> samples rows``."""

    name: str
    needs: tuple[str, ...]
    defaults: dict
    run: Callable[..., list[dict]]


def _template(image: dict, rec: Records, seed: int, split: str, dataset: str, opts: dict):
    return template.template_samples(image["image_id"], image["width"], image["height"],
                                     rec["detections"], seed=seed, split=split,
                                     dataset=dataset, **opts)


def _relation(image: dict, rec: Records, seed: int, split: str, dataset: str, opts: dict):
    return relation.relation_samples(image["image_id"], rec["triplets"], split=split,
                                     dataset=dataset, **opts)


def _caption(image: dict, rec: Records, seed: int, split: str, dataset: str, opts: dict):
    return caption.caption_samples(image["image_id"], image["width"], image["height"],
                                   rec["captions"], rec["detections"], seed=seed, split=split,
                                   dataset=dataset, **opts)


GENERATORS = {
    "template": Generator("template", ("detections",), template.DEFAULTS, _template),
    "relation": Generator("relation", ("triplets",), relation.DEFAULTS, _relation),
    "caption": Generator("caption", ("captions", "detections"), caption.DEFAULTS, _caption),
}


def resolve_options(source: str, options: dict | None) -> dict:
    """The generator's defaults updated with ``options``; an unknown key is a ValueError."""
    gen = _generator(source)
    unknown = sorted(set(options or {}) - set(gen.defaults))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for the {source} generator; "
                         f"known: {sorted(gen.defaults)}")
    return {**gen.defaults, **(options or {})}


def _generator(source: str) -> Generator:
    if source not in GENERATORS:
        raise ValueError(f"unknown pseudo-label source {source!r}; expected one of "
                         f"{sorted(GENERATORS)}")
    return GENERATORS[source]


def _group(table: pa.Table, image_ids: list[str]) -> dict[str, list[dict]]:
    """This batch's rows of ``table`` by image_id (rows of other images are ignored)."""
    rows = table.filter(pc.is_in(table.column("image_id"), pa.array(image_ids, pa.string())))
    out: dict[str, list[dict]] = {}
    for row in rows.to_pylist():
        out.setdefault(row["image_id"], []).append(row)
    return out


def generate_for_images(
    source: str, images: pa.Table, detections: pa.Table | None,
    triplets: pa.Table | None = None, captions: pa.Table | None = None, *,
    seed: int, split: str = "train", dataset: str, options: dict | None = None,
) -> pa.Table:
    """Pseudo-labels of ``source`` for every image of ``images`` (columns image_id, width,
    height; extra columns ignored), as a samples table (``SAMPLES_SCHEMA``).

    Record tables may hold other images' rows too; only this batch's are used. ``seed`` is a
    non-negative int. ``options``: the generator's options (see :data:`GENERATORS` defaults).
    """
    gen = _generator(source)
    opts = resolve_options(source, options)
    tables = dict(detections=detections, triplets=triplets, captions=captions)
    missing = [name for name in gen.needs if tables[name] is None]
    if missing:
        raise ValueError(f"the {source} generator needs the {missing[0]} table")
    batch: dict[str, dict] = {}
    for im in images.select(["image_id", "width", "height"]).to_pylist():
        batch.setdefault(im["image_id"], im)  # an image listed twice is labelled once
    ids = list(batch)
    grouped = {name: _group(tables[name], ids) for name in gen.needs}
    rows: list[dict] = []
    for image_id, im in batch.items():
        rec = {name: grouped[name].get(image_id, []) for name in gen.needs}
        rows += gen.run(im, rec, seed, split, dataset, opts)
    return pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA)
