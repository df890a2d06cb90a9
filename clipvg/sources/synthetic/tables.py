"""Rows and tables of the synthetic world: samples, images, and the simulated detector,
scene-graph model and captioner outputs (the pseudo-label generators' inputs).

Every table but samples gets an extra ``split`` column. Boxes are x0, y0, x1, y1 pixels of
the original image.
"""

from __future__ import annotations

import pyarrow as pa

from clipvg.sources.synthetic import captioner as cap
from clipvg.sources.synthetic import detector as det
from clipvg.sources.synthetic import scenegraph as sg
from clipvg.data.schema import CAPTIONS, DETECTIONS, IMAGES, SAMPLES, TRIPLETS

TABLES = {"samples": SAMPLES, "images": IMAGES, "detections": DETECTIONS,
          "triplets": TRIPLETS, "captions": CAPTIONS}
RECORD_TABLES = ("detections", "triplets", "captions")  # written as ingest's extra tables


def image_rows(im, split: str) -> dict[str, list[dict]]:
    """The samples, detections, triplets and captions rows of one ``SyntheticImage``."""
    i = im.image_id
    samples = [
        dict(sample_id=f"{i}-e{k}", image_id=i, text=e.text, box=list(im.objects[e.target].box),
             source="gt", split=split, dataset="synthetic", expr_type=e.expr_type)
        for k, e in enumerate(im.expressions)
    ]
    dets = [
        dict(image_id=i, det_id=f"{i}-d{k}", box=list(d.box), label=d.label, color=d.color,
             score=d.score, split=split)
        for k, d in enumerate(im.detections)
    ]
    triplets = [
        dict(image_id=i, triplet_id=f"{i}-t{k}", subject=t.subject,
             subject_box=list(t.subject_box), predicate=t.predicate, object=t.object,
             object_box=list(t.object_box), subject_score=t.subject_score,
             predicate_score=t.predicate_score, object_score=t.object_score, split=split)
        for k, t in enumerate(im.triplets)
    ]
    captions = [dict(image_id=i, caption_id=f"{i}-c{k}", caption=c.text, score=c.score,
                     split=split)
                for k, c in enumerate(im.captions)]
    return dict(samples=samples, detections=dets, triplets=triplets, captions=captions)


def build_tables(rows: dict[str, list[dict]]) -> dict[str, pa.Table]:
    """Arrow tables of every name in :data:`TABLES` from their rows (``split`` appended to the
    schema of all but samples, whose schema has it already)."""
    tables = {}
    for name, spec in TABLES.items():
        fields = list(spec.schema)
        if name != "samples":
            fields.append(pa.field("split", pa.string(), nullable=False))
        tables[name] = pa.Table.from_pylist(rows[name], schema=pa.schema(fields))
    return tables


def tables_of_images(images, split: str, size: int) -> dict[str, pa.Table]:
    """:func:`build_tables` of in-memory ``SyntheticImage``s of one ``split``, their images rows
    pointing at ``files/<image_id>.png`` (not written): the pseudo-label generators' inputs
    without a world on storage."""
    rows: dict[str, list[dict]] = {name: [] for name in TABLES}
    for im in images:
        for name, more in image_rows(im, split).items():
            rows[name] += more
        rows["images"].append(dict(image_id=im.image_id, uri=f"files/{im.image_id}.png", bytes=None,
                                   width=size, height=size, split=split))
    return build_tables(rows)


def simulator_rates() -> dict[str, dict]:
    """The documented error rates of the three simulated models (recorded in the manifest)."""
    return dict(
        detector=dict(miss_rate=det.MISS_RATE, label_confusion_rate=det.LABEL_CONFUSION_RATE,
                      color_missing_rate=det.COLOR_MISSING_RATE,
                      color_error_rate=det.COLOR_ERROR_RATE, box_jitter=det.BOX_JITTER,
                      false_positives_per_image=det.FALSE_POSITIVES_PER_IMAGE),
        scene_graph=dict(hallucinations_per_image=sg.HALLUCINATIONS_PER_IMAGE,
                         swap_rate=sg.SWAP_RATE, label_confusion_rate=sg.LABEL_CONFUSION_RATE,
                         predicate_error_rate=sg.PREDICATE_ERROR_RATE, box_jitter=sg.BOX_JITTER,
                         triplets_per_entity=sg.TRIPLETS_PER_ENTITY),
        captioner=dict(captions_per_image=list(cap.CAPTIONS_PER_IMAGE),
                       hallucinated_first_rate=cap.HALLUCINATED_FIRST_RATE,
                       wrong_color_rate=cap.WRONG_COLOR_RATE,
                       wrong_noun_rate=cap.WRONG_NOUN_RATE, synonym_rate=cap.SYNONYM_RATE),
    )
