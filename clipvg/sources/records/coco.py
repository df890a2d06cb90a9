"""COCO detection results -> the ``detections`` table (``clipvg records --format coco-detections``).

Input (the results format of cocodataset.org/#format-results, what ``pycocotools``'
``COCO.loadRes`` reads and torchvision's / detectron2's / mmdetection's COCO evaluators write,
e.g. detectron2 ``detectron2/evaluation/coco_evaluation.py`` ``instances_to_coco_json``): a JSON
list of ``{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}`` (extra
keys such as ``segmentation`` ignored; a dict holding such a list under ``annotations`` is read
too). ``bbox`` is x, y of the top-left corner, width, height, in pixels of the original image.

Annotations (``--annotations``: a COCO instances file, or any JSON with the same two lists):
``images`` ``[{"id", "file_name", ...}]`` gives the file name of ``image_id``, ``categories``
``[{"id", "name"}]`` the class name of ``category_id``.

Rows: ``image_id`` = the file name as in the dataset's images table, ``det_id`` =
``{image_id}#d{k}`` (k = 0, 1, ... per image in file order), ``box`` = ``[x, y, x + w, y + h]``,
``label`` = the category name, ``color`` = null (COCO detectors have no attributes), ``score``.
"""

from __future__ import annotations

from typing import Any

from clipvg.data.schema import DETECTIONS_SCHEMA
from clipvg.sources.records.common import (
    Collected, Images, RecordsError, numbers, probability, require,
)


def _index(ann: Any, key: str, field: str, uri: str) -> dict[int, Any]:
    items = require(ann, key, uri, "top level")
    if not isinstance(items, list):
        raise RecordsError(f"{uri}: {key!r} must be a list")
    out = {}
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        ident, value = require(item, "id", uri, where), require(item, field, uri, where)
        if isinstance(ident, bool) or not isinstance(ident, int):
            raise RecordsError(f"{uri}: {where}: 'id' must be an integer, got {ident!r:.40}")
        if not isinstance(value, str) or not value:
            raise RecordsError(f"{uri}: {where}: {field!r} must be a non-empty string")
        out[ident] = item
    return out


def convert(results: Any, annotations: Any, images: Images, *, results_uri: str,
            annotations_uri: str, out: Collected | None = None) -> Collected:
    """Rows of the detections table from parsed COCO results and annotations (added to ``out``
    when given: several results files, one table)."""
    if isinstance(results, dict) and isinstance(results.get("annotations"), list):
        results = results["annotations"]
    if not isinstance(results, list):
        raise RecordsError(f"{results_uri}: expected a list of detections "
                           f"({{image_id, category_id, bbox, score}}), got a "
                           f"{type(results).__name__}")
    coco_images = _index(annotations, "images", "file_name", annotations_uri)
    categories = _index(annotations, "categories", "name", annotations_uri)
    out = Collected(DETECTIONS_SCHEMA) if out is None else out
    out.records += len(results)
    resized: list[str] = []
    for i, det in enumerate(results):
        where = f"row {i}"
        coco_id = require(det, "image_id", results_uri, where)
        category = require(det, "category_id", results_uri, where)
        x, y, w, h = numbers(require(det, "bbox", results_uri, where), 4, results_uri,
                             f"{where} 'bbox'")[:4]
        score = probability(require(det, "score", results_uri, where), results_uri,
                            f"{where} 'score'")
        if w < 0 or h < 0:
            raise RecordsError(f"{results_uri}: {where} 'bbox': negative width or height in "
                               f"[{x}, {y}, {w}, {h}] (expected x, y, w, h)")
        if coco_id not in coco_images:
            raise RecordsError(f"{results_uri}: {where}: image_id {coco_id!r:.40} is not in the "
                               f"images of {annotations_uri}")
        if category not in categories:
            raise RecordsError(f"{results_uri}: {where}: category_id {category!r:.40} is not in "
                               f"the categories of {annotations_uri}")
        info = coco_images[coco_id]
        image_id = images.resolve(info["file_name"])
        if image_id is None:
            out.drop(info["file_name"])
            continue
        size = (info.get("width"), info.get("height"))
        if None not in size and tuple(size) != images.sizes[image_id] and image_id not in resized:
            resized.append(image_id)
        out.add(dict(image_id=image_id, det_id=f"{image_id}#d{out.next_index(image_id)}",
                             box=[x, y, x + w, y + h], label=categories[category]["name"],
                             color=None, score=score))
    if resized:
        out.notes.append(f"{len(resized)} image(s) have another size in {annotations_uri} than in "
                         f"the dataset (first: {resized[0]}); boxes were kept as they are")
    return out
