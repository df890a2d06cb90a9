"""The pseudo-label generators as a Ray Data stage (method doc §8; rules in :mod:`clipvg.pseudo`).

Per-image records (detections, scene-graph triplets, captions) of a dataset's train split are
grouped by image into one nested row per image, so each batch of images carries its own
records wherever Ray runs it; every batch goes through
:func:`clipvg.pseudo.generate.generate_for_images` (pure, deterministic per image), and the rows
are written as a samples table (``source`` set) to ``out_uri``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipvg.data import storage
from clipvg.data.schema import SAMPLES, SAMPLES_SCHEMA, validate_table
from clipvg.errors import UserError
from clipvg.pseudo.generate import GENERATORS, generate_for_images

RECORD_TABLES = ("detections", "triplets", "captions")


def _records(root: str, name: str, split: str, **options: Any) -> pa.Table | None:
    uri = storage.join(root, name)
    if not storage.exists(uri, **options):
        return None
    table = storage.read_table(uri, **options)
    if "split" in table.column_names:
        table = table.filter(pc.field("split") == split)
    return table


def nest(images: pa.Table, records: dict[str, pa.Table | None]) -> pa.Table:
    """One row per image: its columns plus ``<table>`` = list<struct> of its records."""
    ids = images.column("image_id")
    out = images
    for name, table in records.items():
        if table is None:
            continue
        table = table.drop_columns([c for c in ("split",) if c in table.column_names])
        order = pc.sort_indices(table, [("image_id", "ascending")])
        table = table.take(order)
        structs = pa.StructArray.from_arrays([table.column(c).combine_chunks() for c in table.column_names],
                                             names=table.column_names)
        keys = table.column("image_id").to_pylist()
        bounds: dict[str, tuple[int, int]] = {}
        for i, k in enumerate(keys):
            lo, _ = bounds.get(k, (i, i))
            bounds[k] = (lo, i + 1)
        offsets, pos = [0], 0
        take = []
        for k in ids.to_pylist():
            lo, hi = bounds.get(k, (0, 0))
            take.extend(range(lo, hi))
            pos += hi - lo
            offsets.append(pos)
        values = structs.take(pa.array(take, pa.int64()))
        out = out.append_column(name, pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values))
    return out


def unnest(batch: pa.Table, name: str) -> pa.Table | None:
    """The flat records table ``name`` of a batch of nested image rows."""
    if name not in batch.column_names:
        return None
    flat = pc.list_flatten(batch.column(name).combine_chunks())
    return pa.Table.from_struct_array(flat) if len(flat) else pa.Table.from_struct_array(
        pa.array([], flat.type))


def generate_batch(batch: pa.Table, *, source: str, seed: int, dataset: str, options: dict) -> pa.Table:
    """Ray Data UDF: the pseudo-labels of a batch of nested image rows."""
    images = batch.drop_columns([c for c in RECORD_TABLES if c in batch.column_names])
    return generate_for_images(source, images, unnest(batch, "detections"), unnest(batch, "triplets"),
                               unnest(batch, "captions"), seed=seed, split="train", dataset=dataset,
                               options=options)


def generation_images(root: str, split: str, records: dict[str, pa.Table | None], needs: tuple[str, ...],
                      exclude_splits: tuple[str, ...] = (), **storage_options: Any) -> tuple[pa.Table, int]:
    """The images to label (``image_id``, ``width``, ``height``) and how many were left out
    because an evaluation split uses them.

    A dataset whose images table has a ``split`` column (the synthetic world) labels the images
    of ``split``. One made elsewhere (``import-official`` + ``clipvg records``) has images shared
    by every split, as COCO's train2014 folder is shared by RefCOCO's: there the images are those
    the source's record tables name, less every image of ``exclude_splits`` (the validation and
    test splits: labelling them would train on the images the model is judged on)."""
    uri = storage.join(root, "images")
    columns = storage.table_schema(uri, **storage_options).names
    if "split" in columns:
        images = storage.read_table(uri, columns=["image_id", "width", "height", "split"], **storage_options)
        return images.filter(pc.field("split") == split).drop_columns(["split"]), 0
    images = storage.read_table(uri, columns=["image_id", "width", "height"], **storage_options)
    named = set()
    for name in needs:
        if records.get(name) is not None:
            named.update(records[name].column("image_id").to_pylist())
    held_out: set = set()
    if exclude_splits:
        samples = storage.read_table(storage.join(root, "samples"), columns=["image_id"],
                                     filter=pc.field("split").isin(pa.array(list(exclude_splits), pa.string())),
                                     **storage_options)
        held_out = set(samples.column("image_id").to_pylist())
    keep = pa.array(sorted(named - held_out), pa.string())
    return images.filter(pc.is_in(images.column("image_id"), keep)), len(named & held_out)


def generate_source(root: str, source: str, out_uri: str, *, seed: int, options: dict | None = None,
                    split: str = "train", exclude_splits: tuple[str, ...] = (), num_cpus: float = 1.0,
                    resources: dict | None = None, batch_size: int = 256, **storage_options: Any) -> dict:
    """Generate source ``source`` for the train images of the dataset at ``root`` (see
    :func:`generation_images`) and write it to ``out_uri`` (a samples table). Returns
    ``{"rows": pseudo-labels written, "images": images labelled, "held_out_images": n}``."""
    # deferred: loads Ray; paid only when this runs, not on import
    import ray

    # deferred: loads Ray and torch; paid only when this runs, not on import
    from clipvg.distributed.streaming import task_resources

    needs = GENERATORS[source].needs if source in GENERATORS else ()
    records = {name: _records(root, name, split, **storage_options) for name in RECORD_TABLES}
    missing = [name for name in needs if records[name] is None]
    if missing:
        raise UserError(f"{root}: the {source} pseudo-labels are generated from the {missing[0]} table, "
                        f"which this dataset does not have (add it with `clipvg records`, or import "
                        f"ready-made {source} labels with `clipvg import-official`)")
    images, held_out = generation_images(root, split, records, needs, exclude_splits, **storage_options)
    if images.num_rows == 0:
        raise UserError(f"{root}: no images to generate {source} pseudo-labels for (split {split!r}"
                        + (f"; {held_out} image(s) of the evaluation splits left out)" if held_out else ")"))
    manifest = storage.read_json(storage.join(root, "manifest.json"), **storage_options)
    nested = nest(images, records)
    bounds = np.linspace(0, nested.num_rows, max(1, -(-nested.num_rows // batch_size)) + 1).astype(int)
    blocks = [nested.slice(a, b - a) for a, b in zip(bounds, bounds[1:])]
    ds = ray.data.from_blocks(blocks).map_batches(
        generate_batch, batch_format="pyarrow", batch_size=None, num_cpus=num_cpus,
        **task_resources(resources),
        fn_kwargs={"source": source, "seed": seed, "dataset": manifest.get("dataset", "unknown"),
                   "options": options or {}})
    parts = [ray.get(ref) for ref in ds.to_arrow_refs()]
    rows = pa.concat_tables([p.cast(SAMPLES_SCHEMA) for p in parts if p.num_rows]) if parts else \
        SAMPLES_SCHEMA.empty_table()
    # a stable order (tasks finish in any order): training shuffles from it by (seed, epoch)
    rows = rows.take(pc.sort_indices(rows, [("image_id", "ascending"), ("sample_id", "ascending")]))
    validate_table(rows, SAMPLES, where=out_uri)
    storage.write_table(rows, out_uri, **storage_options)
    return {"rows": rows.num_rows, "images": images.num_rows, "held_out_images": held_out}
