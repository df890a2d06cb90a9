"""Helpers shared by the pseudo-label generators: per-image randomness, IoU, detection filtering.

Boxes everywhere are ``(x0, y0, x1, y1)`` floats in pixels of the original image (x to the
right, y downwards), as in the detections / triplets / samples tables.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Sequence

import numpy as np

MIN_AREA_FRAC = 1 / 64  # Pseudo-Q: boxes smaller than 1/64 of the image are dropped
DUPLICATE_IOU = 0.4  # Pseudo-Q: of two boxes overlapping with IoU > 0.4 the less confident goes


def stable_hash(text: str) -> int:
    """A hash of ``text`` that is the same in every process and Python version (CRC-32)."""
    return zlib.crc32(text.encode("utf-8"))


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    """The generators' only source of randomness: one stream per (seed, image), so an image's
    pseudo-labels do not depend on the other images of its batch or on the batch order."""
    return np.random.default_rng([int(seed), stable_hash(image_id)])


def area(box: Sequence[float]) -> float:
    """Area of an x0, y0, x1, y1 box (0 when degenerate)."""
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (area(a) + area(b) - inter)


def by_confidence(detections: Iterable[dict]) -> list[dict]:
    """Detections by descending ``score``, ties by ``det_id`` (independent of input order)."""
    return sorted(detections, key=lambda d: (-d["score"], d["det_id"]))


def filter_detections(
    detections: Iterable[dict], width: float, height: float, *,
    min_area_frac: float = MIN_AREA_FRAC, dup_iou: float = DUPLICATE_IOU,
) -> list[dict]:
    """Pseudo-Q's object filter, most confident first.

    Drops tiny boxes (area < ``min_area_frac`` x width x height) and duplicates: greedily,
    from the most confident down, a box whose IoU with an already kept box is > ``dup_iou`` is
    dropped, whatever its label (class-agnostic, like an NMS across classes).
    """
    min_area = min_area_frac * width * height
    kept: list[dict] = []
    for d in by_confidence(detections):
        if area(d["box"]) < min_area:
            continue
        if all(iou(d["box"], k["box"]) <= dup_iou for k in kept):
            kept.append(d)
    return kept


def sample_row(source: str, image_id: str, k: int, text: str, box: Sequence[float], *,
               split: str, dataset: str) -> dict:
    """One samples-table row; ``sample_id`` = ``{source}-{image_id}-{k}``."""
    return dict(sample_id=f"{source}-{image_id}-{k}", image_id=image_id, text=text,
                box=[float(v) for v in box], source=source, split=split, dataset=dataset,
                expr_type=None)


def random_subset(rng: np.random.Generator, items: list, k: int) -> list:
    """At most ``k`` of ``items``, drawn without replacement, kept in their original order.
    Draws from ``rng`` only when there are more than ``k``."""
    if len(items) <= k:
        return list(items)
    picked = sorted(rng.choice(len(items), size=k, replace=False).tolist())
    return [items[i] for i in picked]
