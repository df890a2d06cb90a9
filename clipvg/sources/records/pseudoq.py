"""Pseudo-Q's released detection results -> the ``detections`` table
(``clipvg records --format pseudoq-detections``).

What the files are (``LeapLabTHU/Pseudo-Q``: ``pseudo_sample_generation/README.md`` points to the
download ``detection_results.tar.gz``; ``pseudo_query_generation.py`` reads them, as does
``linhuixiao/CLIP-VG`` ``pseudo_label_generation_module/pseudo_template_label_generation/
pseudo_query_generation.py`` and its caption matching ``.../pseudo_caption_and_box_matching/
caption_generation.py``), one pair per dataset shard ``{d}_train_pseudo_split{k}_...``:

* ``r101_object_detection_results/..._detection_results.pth`` (``--input``): ``torch.save`` of a
  dict ``image file name -> [[class, [x0, y0, x1, y1, conf]], ...]`` - a VG Faster R-CNN's
  boxes (x0, y0, x1, y1 pixels of the original image), class name and class confidence;
* ``r152_attr_detection_results/..._attr_detection_results.pth`` (``--attributes``): the same
  with a third element per entry, the 400 attribute confidences of the bottom-up-attention model
  (a float32 numpy array; ``pseudo_sample_generation/get_detection_results.py`` writes it), index
  ``i`` = attribute ``i`` of :data:`~clipvg.sources.records.vocab.BUA_ATTRIBUTES`.

Both may also be given as JSON with the same structure (lists for the arrays). ``.pth`` files are
read without torch and without running code (:mod:`clipvg.sources.records.pth`).

Rows, one per entry of ``--input`` (Pseudo-Q's reading, ``object_detect``): ``label`` = class,
``score`` = conf (the last number of the box list), ``box`` = its first four numbers with an x0
or y0 of exactly 0 set to 1 (Pseudo-Q's quirk, kept so boxes match its labels); an entry with
x0 > x1 or y0 > y1 is skipped and counted, as Pseudo-Q skips it with a warning. ``det_id`` =
``{image_id}#d{k}``, k = the entry's position in the image's list.

``color`` (Pseudo-Q's ``bua_attr_detect`` + ``match_attribute_to_object``): an attribute entry's
attribute is the argmax of its 400 confidences if that maximum is > 0.3 (else none), and its
class then loses every "<attribute> " in it ("tennis racket" with "tennis" -> "racket"); the attribute
entries of an image go through Pseudo-Q's overlap removal (within people / clothes / things, of
two boxes with IoU > 0.4 the less confident goes); a detection takes the attribute of the last
remaining attribute entry of the same class with IoU > 0.5, else null. Without ``--attributes``,
entries of ``--input`` that carry their own 400-vector are coloured by it (an attribute file
given alone), else ``color`` is null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clipvg.data.schema import DETECTIONS_SCHEMA
from clipvg.sources.records.common import (
    Collected, Images, RecordsError, enumerate_mapping, iou, numbers, probability,
)
from clipvg.sources.records.vocab import BUA_ATTRIBUTES, pseudoq_group

ATTR_CONF = 0.3  # Pseudo-Q --attr_conf_thresh: the best attribute's confidence must exceed it
ATTR_IOU = 0.5  # Pseudo-Q --attr_iou_thresh: an attribute box must overlap the detection more
OVERLAP_IOU = 0.4  # Pseudo-Q remove_overlap_bbox


@dataclass
class Entry:
    label: str
    box: list[float]
    score: float
    attr: str | None


def _entry(raw: Any, uri: str, where: str, vocab: tuple[str, ...], *,
           own_attr: bool) -> Entry | None:
    """One ``[class, [x0, y0, x1, y1, conf], (attr confidences)]``; None for an inverted box."""
    if not isinstance(raw, (list, tuple)) or len(raw) < 2 or not isinstance(raw[0], str):
        raise RecordsError(f"{uri}: {where}: expected [class, [x0, y0, x1, y1, conf], ...], got "
                           f"{raw!r:.80}")
    values = numbers(raw[1], 5, uri, f"{where} box")
    box, score = values[:4], probability(values[-1], uri, f"{where} conf")
    box = [1.0 if i < 2 and v == 0 else v for i, v in enumerate(box)]  # Pseudo-Q: 0 -> 1
    label, attr = raw[0], None
    if own_attr and len(raw) > 2:
        conf = np.asarray(raw[2], dtype=np.float64)
        if conf.shape != (len(vocab),) or not np.isfinite(conf).all():
            raise RecordsError(f"{uri}: {where}: expected {len(vocab)} finite attribute "
                               f"confidences, got shape {conf.shape}")
        if conf.max() > ATTR_CONF:
            attr = vocab[int(conf.argmax())]
            if attr in label:
                label = label.replace(f"{attr} ", "")
    if box[0] > box[2] or box[1] > box[3]:
        return None
    return Entry(label, box, score, attr)


def _remove_overlaps(entries: list[Entry]) -> list[Entry]:
    """Pseudo-Q's ``remove_overlap_bbox`` within each group: every pair with IoU > 0.4 loses its
    less confident box (the later one on a tie), whether or not the other was itself removed."""
    kept = []
    for group in ("people", "clothes", "things"):
        members = [e for e in entries if pseudoq_group(e.label) == group]
        gone: set[int] = set()
        for i in range(len(members) - 1):
            for j in range(i + 1, len(members)):
                if iou(members[i].box, members[j].box) > OVERLAP_IOU:
                    gone.add(i if members[i].score < members[j].score else j)
        kept += [e for i, e in enumerate(members) if i not in gone]
    return kept


def _attribute(entry: Entry, attributed: list[Entry]) -> str | None:
    found = None
    for a in attributed:
        if a.attr is not None and a.label == entry.label and iou(entry.box, a.box) > ATTR_IOU:
            found = a.attr
    return found


def _attribute_entries(attributes: Any, uri: str, vocab: tuple[str, ...]) -> dict[str, list[Entry]]:
    out = {}
    for name, raw in enumerate_mapping(attributes, uri, "attribute detection results"):
        if not isinstance(raw, (list, tuple)):
            raise RecordsError(f"{uri}: image {name!r}: expected a list of entries")
        parsed = [_entry(r, uri, f"image {name!r} entry {j}", vocab, own_attr=True)
                  for j, r in enumerate(raw)]
        out[name] = _remove_overlaps([e for e in parsed if e is not None])
    return out


def convert(objects: Any, attributes: Any | None, images: Images, *, uri: str,
            attributes_uri: str | None = None, vocab: tuple[str, ...] = BUA_ATTRIBUTES,
            out: Collected | None = None) -> Collected:
    """Rows of the detections table from a parsed Pseudo-Q object detection file and, optionally,
    its attribute detection file (added to ``out`` when given: several shards, one table)."""
    attributed = (None if attributes is None else
                  _attribute_entries(attributes, attributes_uri, vocab))
    out = Collected(DETECTIONS_SCHEMA) if out is None else out
    skipped = 0
    for name, raw in enumerate_mapping(objects, uri, "detection results"):
        if not isinstance(raw, (list, tuple)):
            raise RecordsError(f"{uri}: image {name!r}: expected a list of entries")
        out.records += len(raw)
        image_id = images.resolve(name)
        if image_id is None:
            out.drop(name, len(raw))
            continue
        for j, r in enumerate(raw):
            k = out.next_index(image_id)
            entry = _entry(r, uri, f"image {name!r} entry {j}", vocab, own_attr=attributed is None)
            if entry is None:
                skipped += 1
                continue
            if attributed is not None:
                entry.attr = _attribute(entry, attributed.get(name, []))
            out.add(dict(image_id=image_id, det_id=f"{image_id}#d{k}", box=entry.box,
                                 label=entry.label, color=entry.attr, score=entry.score))
    if skipped:
        out.notes.append(f"{uri}: skipped {skipped} entr{'y' if skipped == 1 else 'ies'} with "
                         "x0 > x1 or y0 > y1 (as Pseudo-Q does)")
    return out
