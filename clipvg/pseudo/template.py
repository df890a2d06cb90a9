"""Pseudo-template labels (Pseudo-Q style, method doc §8) from one image's detections.

Rules, in order:

1. **Filter** (:func:`clipvg.pseudo.common.filter_detections`): drop boxes with area < 1/64 of
   the image and class-agnostic duplicates (IoU > 0.4: the more confident one stays).
2. **Spatial words** among the kept objects of the same class (``label``), for a class with
   at least two objects: ``left`` / ``right`` for the smallest / largest x centre, ``middle``
   for the median x centre when the class has an odd number (>= 3) of objects, ``top`` /
   ``bottom`` for the smallest / largest y centre (y grows downwards), ``bigger`` / ``smaller``
   for the largest / smallest box area (Pseudo-Q's front / behind, which flat shapes lack).
   A word is given only to a strict extreme (a tie gives it to nobody).
3. **Top-N**: only the ``top_n`` most confident kept objects are described (Pseudo-Q puts
   people first; the synthetic world has no people and no clothing, so the people/clothes
   grouping and the "noun clothing" templates have nothing to do here and are left out).
4. **Templates** (fixed word order, Pseudo-Q's "attr noun", "noun spatial", "noun on the
   left", "noun in the middle", "spatial attr noun"): noun = the detection's ``label``,
   attr = its ``color`` (the attribute; templates needing it are skipped when it is null),
   see :data:`TEMPLATES`. An object with neither attribute nor spatial word is just "noun".
   A text produced for two objects is kept once, for the more confident one.
5. **Sampling**: at most ``max_per_image`` expressions, a random subset drawn from the
   per-image stream (:func:`clipvg.pseudo.common.image_rng`). The box is the detection's box.
"""

from __future__ import annotations

from typing import Iterable

from clipvg.pseudo.common import (
    DUPLICATE_IOU, MIN_AREA_FRAC, area, filter_detections, image_rng, random_subset, sample_row,
)

SOURCE = "template"
DEFAULTS = dict(top_n=3, max_per_image=6, min_area_frac=MIN_AREA_FRAC, dup_iou=DUPLICATE_IOU)
ATTR_TEMPLATES = ("{attr} {noun}",)
TEMPLATES = {  # per spatial word; "{attr}" templates need an attribute
    "left": ("{noun} {w}", "{noun} on the {w}", "{w} {attr} {noun}"),
    "right": ("{noun} {w}", "{noun} on the {w}", "{w} {attr} {noun}"),
    "middle": ("{noun} {w}", "{noun} in the middle", "{w} {attr} {noun}"),
    "top": ("{noun} {w}", "{noun} at the {w}", "{w} {attr} {noun}"),
    "bottom": ("{noun} {w}", "{noun} at the {w}", "{w} {attr} {noun}"),
    "bigger": ("{w} {noun}", "{w} {attr} {noun}"),
    "smaller": ("{w} {noun}", "{w} {attr} {noun}"),
}


def _strict_extremes(values: list[float]) -> tuple[int | None, int | None]:
    """Indices of the strict minimum and maximum of ``values`` (None when tied)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    lo = order[0] if values[order[0]] < values[order[1]] else None
    hi = order[-1] if values[order[-1]] > values[order[-2]] else None
    return lo, hi


def spatial_words(kept: list[dict]) -> list[list[str]]:
    """For each kept detection, its spatial words among same-label detections (rule 2), in
    the order horizontal, vertical, size."""
    words: list[list[str]] = [[] for _ in kept]
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(kept):
        groups.setdefault(d["label"], []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        boxes = [kept[i]["box"] for i in members]
        cx = [(b[0] + b[2]) / 2 for b in boxes]
        cy = [(b[1] + b[3]) / 2 for b in boxes]
        sizes = [area(b) for b in boxes]
        left, right = _strict_extremes(cx)
        order = sorted(range(len(cx)), key=lambda j: cx[j])
        mid = order[len(order) // 2] if len(order) % 2 == 1 else None
        if mid is not None and len(set(cx)) != len(cx):
            mid = None  # a tie makes "middle" ambiguous
        top, bottom = _strict_extremes(cy)
        small, big = _strict_extremes(sizes)
        for j, i in enumerate(members):
            for word, hit in (("left", left), ("right", right), ("middle", mid),
                              ("top", top), ("bottom", bottom), ("bigger", big),
                              ("smaller", small)):
                if hit == j:
                    words[i].append(word)
    return words


def expressions(noun: str, attr: str | None, words: Iterable[str]) -> list[str]:
    """Every template text for one object (rule 4), in a fixed order."""
    out = [t.format(attr=attr, noun=noun) for t in ATTR_TEMPLATES] if attr else []
    for w in words:
        out += [t.format(noun=noun, w=w, attr=attr) for t in TEMPLATES[w]
                if attr or "{attr}" not in t]
    return out or [noun]


def template_samples(
    image_id: str, width: float, height: float, detections: Iterable[dict], *,
    seed: int, split: str = "train", dataset: str, top_n: int = 3, max_per_image: int = 6,
    min_area_frac: float = MIN_AREA_FRAC, dup_iou: float = DUPLICATE_IOU,
) -> list[dict]:
    """Template pseudo-labels of one image (samples rows, ``source`` = "template").

    ``detections``: dicts with ``det_id``, ``box`` (x0, y0, x1, y1 pixels), ``label``,
    ``color`` (or None) and ``score``; their order does not matter.
    """
    kept = filter_detections(detections, width, height, min_area_frac=min_area_frac,
                             dup_iou=dup_iou)
    words = spatial_words(kept)
    pairs: list[tuple[str, list]] = []
    seen: set[str] = set()
    for d, w in list(zip(kept, words))[:top_n]:
        noun = d["label"].replace("_", " ")
        for text in expressions(noun, d.get("color"), w):
            if text not in seen:
                seen.add(text)
                pairs.append((text, d["box"]))
    chosen = random_subset(image_rng(seed, image_id), pairs, max_per_image)
    return [sample_row(SOURCE, image_id, k, text, box, split=split, dataset=dataset)
            for k, (text, box) in enumerate(chosen)]
