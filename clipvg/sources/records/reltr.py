"""RelTR's raw outputs -> the ``triplets`` table (``clipvg records --format reltr``).

RelTR (``yrcong/RelTR`` ``models/reltr.py``) returns, per image, for each of its 200 triplet
queries: ``sub_logits`` / ``obj_logits`` (151 VG150 entity classes + no-object, last),
``rel_logits`` (51 predicates + no-relation, last) and ``sub_boxes`` / ``obj_boxes`` (cx, cy, w,
h normalised to the image). CLIP-VG (``linhuixiao/CLIP-VG`` ``pseudo_label_generation_module/
pseudo_relation_label_generation/RelTR/inference_gen_pseudo_relation_label.py``) takes the
softmax of each, drops the last column, keeps the argmax class and its probability, scales the
boxes by the original image's width and height, and saves only the finished expressions
(``[file, _, subject box xyxy, "subject predicate object", _]``), not the outputs.

The file this converter reads is those outputs as a user would dump them - one JSON object per
image and line (``.jsonl``; a ``.json`` list of the same objects is read too)::

    {"image": "COCO_train2014_000000000839.jpg",          # the image's file name
     "sub_logits": [[...152 numbers], ...],                # Q x 152
     "obj_logits": [[...152 numbers], ...],                # Q x 152
     "rel_logits": [[...52 numbers], ...],                 # Q x 52
     "sub_boxes": [[cx, cy, w, h], ...],                   # Q x 4, normalised
     "obj_boxes": [[cx, cy, w, h], ...]}                   # Q x 4, normalised

i.e. ``{"image": name, **{k: outputs[k][0].tolist() for k in KEYS}}`` after ``outputs =
model(img)`` (logits, not probabilities). ``image_file`` / ``file_name`` are accepted for
``image``.

Rows, one per query (CLIP-VG's 0.2 score filter and top 10 are the relation generator's
``min_score`` / ``top_k``, so every query is kept here): ``subject`` / ``object`` / ``predicate``
= the argmax name over the columns without the last (:data:`~clipvg.sources.records.vocab.
RELTR_CLASSES`, :data:`~clipvg.sources.records.vocab.RELTR_PREDICATES`), ``*_score`` = its
softmax probability (computed over all columns, as CLIP-VG does); boxes ``x0 = (cx - w/2) W``,
``y0 = (cy - h/2) H``, ``x1 = (cx + w/2) W``, ``y1 = (cy + h/2) H`` with W, H the image's size in
the dataset's images table (not clipped); ``triplet_id`` = ``{image_id}#t{q}``, q = the query's
index (counting on across lines of the same image). A query whose argmax is index 0 (``N/A`` or
``__background__``, never trained) is skipped and counted.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from clipvg.data.schema import TRIPLETS_SCHEMA
from clipvg.sources.records.common import Collected, Images, RecordsError, image_name, require
from clipvg.sources.records.vocab import RELTR_CLASSES, RELTR_PREDICATES

KEYS = ("sub_logits", "obj_logits", "rel_logits", "sub_boxes", "obj_boxes")


def _array(record: dict, key: str, width: int, uri: str, where: str,
           queries: int | None) -> np.ndarray:
    value = require(record, key, uri, where)
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise RecordsError(f"{uri}: {where}: {key!r} must be a list of lists of numbers") from None
    if a.ndim != 2 or a.shape[1] != width or (queries is not None and a.shape[0] != queries):
        q = "Q" if queries is None else str(queries)
        raise RecordsError(f"{uri}: {where}: {key!r} must be {q} x {width}, got shape "
                           f"{a.shape}")
    if not np.isfinite(a).all():
        raise RecordsError(f"{uri}: {where}: {key!r} holds a non-finite number")
    return a


def _best(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax and probability of the softmax over every column, the last one excluded."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True))[:, :-1]
    return probs.argmax(axis=1), probs.max(axis=1)


def _pixels(boxes: np.ndarray, width: int, height: int, uri: str, where: str,
            key: str) -> np.ndarray:
    if (boxes[:, 2:] < 0).any():
        raise RecordsError(f"{uri}: {where}: {key!r} has a negative width or height (expected "
                           "normalised cx, cy, w, h)")
    cx, cy, w, h = boxes.T
    return np.stack([(cx - w / 2) * width, (cy - h / 2) * height,
                     (cx + w / 2) * width, (cy + h / 2) * height], axis=1)


def convert(records: Iterable[tuple[str, Any]], images: Images, *, uri: str,
            out: Collected | None = None) -> Collected:
    """Rows of the triplets table from ``(where, record)`` pairs of a RelTR outputs file."""
    out = Collected(TRIPLETS_SCHEMA) if out is None else out
    n_cls, n_rel = len(RELTR_CLASSES) + 1, len(RELTR_PREDICATES) + 1
    background = 0
    for where, record in records:
        out.records += 1
        if not isinstance(record, dict):
            raise RecordsError(f"{uri}: {where}: expected an object, got {type(record).__name__}")
        name = image_name(record, uri, where)
        sub = _array(record, "sub_logits", n_cls, uri, where, None)
        q = sub.shape[0]
        obj = _array(record, "obj_logits", n_cls, uri, where, q)
        rel = _array(record, "rel_logits", n_rel, uri, where, q)
        boxes = {k: _array(record, k, 4, uri, where, q) for k in ("sub_boxes", "obj_boxes")}
        image_id = images.resolve(name)
        if image_id is None:
            out.drop(name)
            continue
        width, height = images.sizes[image_id]
        (s_cls, s_p), (o_cls, o_p), (r_cls, r_p) = _best(sub), _best(obj), _best(rel)
        s_box, o_box = (_pixels(boxes[k], width, height, uri, where, k)
                        for k in ("sub_boxes", "obj_boxes"))
        for i in range(q):
            k = out.next_index(image_id)
            if s_cls[i] == 0 or o_cls[i] == 0 or r_cls[i] == 0:
                background += 1
                continue
            out.add(dict(
                image_id=image_id, triplet_id=f"{image_id}#t{k}",
                subject=RELTR_CLASSES[s_cls[i]], subject_box=s_box[i].tolist(),
                predicate=RELTR_PREDICATES[r_cls[i]], object=RELTR_CLASSES[o_cls[i]],
                object_box=o_box[i].tolist(), subject_score=float(s_p[i]),
                predicate_score=float(r_p[i]), object_score=float(o_p[i])))
    if background:
        out.notes.append(f"{uri}: skipped {background} quer{'y' if background == 1 else 'ies'} "
                         "whose best class is N/A or __background__")
    return out
