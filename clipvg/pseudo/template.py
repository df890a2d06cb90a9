"""Pseudo-template labels (Pseudo-Q style, method doc §8) from one image's detections.

Detections are grouped as Pseudo-Q does (``LeapLabTHU/Pseudo-Q``
``pseudo_sample_generation/pseudo_query_generation.py``, the same file as ``linhuixiao/CLIP-VG``
``pseudo_label_generation_module/pseudo_template_label_generation/pseudo_query_generation.py``)
by its class lists (:mod:`clipvg.sources.records.vocab`): **people** (man, woman, boy, girl,
person, ...), **clothes** (hat / shirt / pants / shoes kinds: cap, helmet, jacket, shirt, jeans,
shorts, boots, ...) and **things** (everything else). Rules, in order:

1. **Filter** (:func:`clipvg.pseudo.common.filter_detections`), within each group: drop boxes
   with area < 1/64 of the image (not clothes: Pseudo-Q keeps small clothes) and duplicates
   (IoU > 0.4: the more confident one stays, whatever the class).
2. **Clothes on people**: a kept piece of clothing is attached to every kept person that holds
   more than 75 % of its area; a hat only if its y centre is in the person's upper quarter
   (``(person y1 - hat cy) / person height > 0.75``), pants only in the lower half (``< 0.5``);
   a class in two kind lists counts as the first of hat, shirt, pants, shoes. Clothes are never
   described on their own.
3. **Spatial words** among the kept people and things of the same class (``label``), for a
   class with at least two objects: ``left`` / ``right`` for the smallest / largest x centre,
   ``middle`` for the median x centre when the class has an odd number (>= 3) of objects,
   ``top`` / ``bottom`` for the smallest / largest y centre (y grows downwards), ``bigger`` /
   ``smaller`` for the largest / smallest box area (Pseudo-Q's front / behind, which flat shapes
   lack). A word is given only to a strict extreme (a tie gives it to nobody).
4. **Top-N**: the ``top_n`` objects described are the people first (most confident first),
   then the most confident things, as Pseudo-Q's ``topn_conf_samples``.
5. **Templates** (fixed word order, Pseudo-Q's "attr noun", "noun spatial", "noun on the
   left", "noun in the middle", "spatial attr noun"): noun = the detection's ``label``,
   attr = its ``color`` (the attribute; templates needing it are skipped when it is null),
   see :data:`TEMPLATES`. An object with neither attribute nor spatial word is just "noun".
   A person with clothes also gets Pseudo-Q's clothing templates (:func:`clothing_expressions`:
   "boy gray pants", "gray pants boy", "boy left gray pants", "right shirt boy", ...). A text
   produced for two objects is kept once, for the first described.
6. **Sampling**: at most ``max_per_image`` expressions, a random subset drawn from the
   per-image stream (:func:`clipvg.pseudo.common.image_rng`). The box is the detection's box
   (the person's for clothing texts).

A scene without people and clothes (the synthetic world) gives exactly what it gave before the
people / clothes rules existed: one group, the same filter, the same top-N.
"""

from __future__ import annotations

from typing import Iterable

from clipvg.pseudo.common import (
    DUPLICATE_IOU, MIN_AREA_FRAC, area, filter_detections, image_rng, random_subset, sample_row,
)
from clipvg.sources.records.vocab import clothing_kind, pseudoq_group

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
# Pseudo-Q's clothing templates (generate_description, templates 4-11): {n} = the person ("attr
# noun" or "noun"), {c} = a piece of clothing ("attr noun" or "noun"), {w} = a spatial word.
# Size words (Pseudo-Q's front / behind) only lead, as in TEMPLATES; top / bottom take no phrase
# (Pseudo-Q adds "on the" for left / right and "in the" for middle only).
CLOTHING_PAIR = ("{n} {c}", "{c} {n}")
_ORDERS = ("{n} {c} {w}", "{n} {w} {c}", "{c} {n} {w}", "{c} {w} {n}", "{w} {n} {c}", "{w} {c} {n}")
_ON = ("{n} {c} on the {w}", "{n} on the {w} {c}", "{c} {n} on the {w}")
_IN = ("{n} {c} in the {w}", "{n} in the {w} {c}", "{c} {n} in the {w}")
CLOTHING_TEMPLATES = {
    "left": _ORDERS + _ON, "right": _ORDERS + _ON, "middle": _ORDERS + _IN,
    "top": _ORDERS, "bottom": _ORDERS,
    "bigger": ("{w} {n} {c}", "{w} {c} {n}"), "smaller": ("{w} {n} {c}", "{w} {c} {n}"),
}
CLOTHING_INSIDE = 0.75  # Pseudo-Q match_clothes_to_people: share of the clothing's area inside
HAT_TOP = 0.75  # is_hat_belong_to_people: (person y1 - hat y centre) / person height > 0.75
PANTS_BOTTOM = 0.5  # is_pants_belong_to_people: (person y1 - pants y centre) / height < 0.5
CLOTHING_ORDER = ("hat", "shirt", "pants", "shoes")  # Pseudo-Q's clothes dict order


def _strict_extremes(values: list[float]) -> tuple[int | None, int | None]:
    """Indices of the strict minimum and maximum of ``values`` (None when tied)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    lo = order[0] if values[order[0]] < values[order[1]] else None
    hi = order[-1] if values[order[-1]] > values[order[-2]] else None
    return lo, hi


def spatial_words(kept: list[dict]) -> list[list[str]]:
    """For each kept detection, its spatial words among same-label detections (rule 3), in
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
    """Every template text for one object (rule 5), in a fixed order."""
    out = [t.format(attr=attr, noun=noun) for t in ATTR_TEMPLATES] if attr else []
    for w in words:
        out += [t.format(noun=noun, w=w, attr=attr) for t in TEMPLATES[w]
                if attr or "{attr}" not in t]
    return out or [noun]


def _inside(inner, outer) -> float:
    """Share of ``inner``'s area inside ``outer`` (0 for a box without area)."""
    iw = min(inner[2], outer[2]) - max(inner[0], outer[0])
    ih = min(inner[3], outer[3]) - max(inner[1], outer[1])
    a = area(inner)
    return iw * ih / a if iw > 0 and ih > 0 and a > 0 else 0.0


def attach_clothes(people: list[dict], clothes: list[dict]) -> list[list[dict]]:
    """For each person, the clothes it wears (rule 2), kind by kind (hat, shirt, pants, shoes),
    each kind in the order of ``clothes``."""
    worn: list[dict[str, list[dict]]] = [{k: [] for k in CLOTHING_ORDER} for _ in people]
    for c in clothes:
        kind = clothing_kind(c["label"])
        cy = (c["box"][1] + c["box"][3]) / 2
        for i, p in enumerate(people):
            height = p["box"][3] - p["box"][1]
            if height <= 0 or _inside(c["box"], p["box"]) <= CLOTHING_INSIDE:
                continue
            up = (p["box"][3] - cy) / height  # 1 at the person's top, 0 at its bottom
            if (kind == "hat" and not up > HAT_TOP) or (kind == "pants" and not up < PANTS_BOTTOM):
                continue
            worn[i][kind].append(c)
    return [[c for k in CLOTHING_ORDER for c in w[k]] for w in worn]


def _phrase(d: dict) -> str:
    noun = d["label"].replace("_", " ")
    return f"{d['color']} {noun}" if d.get("color") else noun


def clothing_expressions(person: str, clothing: list[str], words: Iterable[str]) -> list[str]:
    """Pseudo-Q's clothing texts of one person (``person`` and each of ``clothing`` already
    "attr noun" or "noun"), in a fixed order: each pair, then per spatial word and clothing."""
    out = [t.format(n=person, c=c) for c in clothing for t in CLOTHING_PAIR]
    for w in words:
        out += [t.format(n=person, c=c, w=w) for c in clothing for t in CLOTHING_TEMPLATES[w]]
    return out


def template_samples(
    image_id: str, width: float, height: float, detections: Iterable[dict], *,
    seed: int, split: str = "train", dataset: str, top_n: int = 3, max_per_image: int = 6,
    min_area_frac: float = MIN_AREA_FRAC, dup_iou: float = DUPLICATE_IOU,
) -> list[dict]:
    """Template pseudo-labels of one image (samples rows, ``source`` = "template").

    ``detections``: dicts with ``det_id``, ``box`` (x0, y0, x1, y1 pixels), ``label``,
    ``color`` (or None) and ``score``; their order does not matter.
    """
    groups: dict[str, list[dict]] = {"people": [], "clothes": [], "things": []}
    for d in detections:
        groups[pseudoq_group(d["label"])].append(d)
    people, things = (filter_detections(groups[g], width, height, min_area_frac=min_area_frac,
                                        dup_iou=dup_iou) for g in ("people", "things"))
    clothes = filter_detections(groups["clothes"], width, height, min_area_frac=0.0,
                                dup_iou=dup_iou)
    worn = attach_clothes(people, clothes) + [[] for _ in things]
    kept = people + things  # people first (rule 4), each most confident first
    words = spatial_words(kept)
    pairs: list[tuple[str, list]] = []
    seen: set[str] = set()
    for d, w, wears in list(zip(kept, words, worn))[:top_n]:
        noun = d["label"].replace("_", " ")
        texts = expressions(noun, d.get("color"), w)
        if wears:
            texts += clothing_expressions(_phrase(d), [_phrase(c) for c in wears], w)
        for text in texts:
            if text not in seen:
                seen.add(text)
                pairs.append((text, d["box"]))
    chosen = random_subset(image_rng(seed, image_id), pairs, max_per_image)
    return [sample_row(SOURCE, image_id, k, text, box, split=split, dataset=dataset)
            for k, (text, box) in enumerate(chosen)]
