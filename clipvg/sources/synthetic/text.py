"""Referring expressions for the synthetic world: each one names exactly one object.

Objects are anything with ``shape``, ``color``, ``size`` (canonical words) and ``box``
(x0, y0, x1, y1). An expression has one of three types, with these meanings (the tests check
them with their own parser):

* **attribute** - "the small red circle", "the green one": the mentioned size / colour / shape
  words match exactly one object.
* **spatial** - "the leftmost star", "the red one at the very top", "the circle in the middle":
  among the group G of objects matching the mentioned words (all objects if none), |G| >= 2 and
  the target is the extreme of G by box centre (left/right by x, top/bottom by y), ahead of the
  runner-up by at least ``SPATIAL_MARGIN`` x image size; "middle" needs |G| = 3 and the
  target is the horizontal median, with that margin to both neighbours.
* **relational** - "the triangle above the blue star": the reference words after the relation
  match exactly one object R; among the other objects matching the target words (at least two,
  so the relation is needed), exactly the target is on that side of R by at least
  ``RELATION_MARGIN`` x image size (centre to centre) and every other one lies on the
  opposite side or level with R (centre difference <= 0), so the answer is unambiguous.

Targets are drawn from objects that share their shape or colour with another object whenever
the image has any (the *distractor* rule), so a bag-of-words guess is not enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Protocol, Sequence

import numpy as np

EXPR_TYPES = ("attribute", "spatial", "relational")
SPATIAL_MARGIN = 0.08  # fraction of the image side between the target and the runner-up
RELATION_MARGIN = 0.06  # fraction of the image side between target and reference centres
EXPRESSIONS_PER_IMAGE = (3, 5)  # inclusive range of expressions generated per image
MINIMAL_DESCRIPTION_P = 0.75  # prefer descriptions without redundant words

# Words for the canonical attribute values; the first one is the canonical name.
SHAPE_WORDS = {
    "circle": ("circle", "ball", "disc", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus"),
}
COLOR_WORDS = {
    "red": ("red",),
    "orange": ("orange",),
    "yellow": ("yellow",),
    "green": ("green",),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
    "pink": ("pink",),
}
SIZE_WORDS = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big"),
}
SHAPES = tuple(SHAPE_WORDS)  # canonical shape names
HUE_RING = tuple(COLOR_WORDS)  # canonical colours in hue order: neighbours look alike
FILLER_NOUNS = ("one", "object", "shape")  # when no shape word is used

SPATIAL_PHRASES = {  # {p} = description without article; "pair" forms only when |G| = 2
    "left": ("the leftmost {p}", "the {p} on the far left", "the {p} furthest to the left"),
    "right": ("the rightmost {p}", "the {p} on the far right", "the {p} furthest to the right"),
    "top": ("the topmost {p}", "the highest {p}", "the {p} at the very top"),
    "bottom": ("the bottommost {p}", "the lowest {p}", "the {p} at the very bottom"),
    "middle": ("the {p} in the middle", "the middle {p}", "the {p} between the other two"),
}
PAIR_PHRASES = {
    "left": ("the left {p}", "the {p} on the left"),
    "right": ("the right {p}", "the {p} on the right"),
    "top": ("the upper {p}", "the top {p}", "the {p} on top"),
    "bottom": ("the lower {p}", "the bottom {p}"),
}
RELATION_WORDS = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
RELATIONAL_FORMS = ("the {t} {rel} the {r}", "the {t} that is {rel} the {r}", "{t} {rel} the {r}")
ATTRS = ("size", "color", "shape")


class ObjectLike(Protocol):
    """What expressions and the detector need of a scene object (``synthetic.SynthObject``)."""

    index: int
    shape: str
    color: str
    size: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Expression:
    """A referring expression and the index of the object it names."""

    text: str
    target: int
    expr_type: str  # attribute | spatial | relational
    reference: int | None = None  # the landmark object of a relational expression


Desc = tuple  # (size | None, color | None, shape | None)


def _center(o: ObjectLike) -> tuple[float, float]:
    x0, y0, x1, y1 = o.box
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0


def _matches(o: ObjectLike, desc: Desc) -> bool:
    return all(v is None or getattr(o, a) == v for a, v in zip(ATTRS, desc))


def _match_all(objs: Sequence[ObjectLike], desc: Desc) -> list[int]:
    return [i for i, o in enumerate(objs) if _matches(o, desc)]


def _descs(o: ObjectLike) -> list[Desc]:
    """The 7 non-empty subsets of an object's attributes, smallest first."""
    out = []
    for k in (1, 2, 3):
        for keep in combinations(range(3), k):
            out.append(tuple(getattr(o, a) if j in keep else None for j, a in enumerate(ATTRS)))
    return out


def _is_sub(a: Desc, b: Desc) -> bool:
    """a mentions a proper subset of what b mentions."""
    return a != b and all(x is None or x == y for x, y in zip(a, b))


def has_distractor(objs: Sequence[ObjectLike], i: int) -> bool:
    """Another object shares object i's shape or colour."""
    o = objs[i]
    return any(j != i and (p.shape == o.shape or p.color == o.color) for j, p in enumerate(objs))


def allowed_targets(objs: Sequence[ObjectLike]) -> list[int]:
    """Objects with a distractor if the image has any, otherwise every object."""
    with_d = [i for i in range(len(objs)) if has_distractor(objs, i)]
    return with_d or list(range(len(objs)))


def unique_descs(objs: Sequence[ObjectLike], i: int) -> tuple[list[Desc], list[Desc]]:
    """(all, minimal) attribute descriptions that match object i alone."""
    uniq = [d for d in _descs(objs[i]) if _match_all(objs, d) == [i]]
    minimal = [d for d in uniq if not any(_is_sub(e, d) for e in uniq)]
    return uniq, minimal


# --------------------------------------------------------------------------------------------
# Candidate plans per type: (target, payload) where payload is what the renderer needs
# --------------------------------------------------------------------------------------------


def _attribute_plans(objs, targets, rng) -> list[tuple]:
    plans = []
    for t in targets:
        uniq, minimal = unique_descs(objs, t)
        if uniq:
            pool = minimal if rng.random() < MINIMAL_DESCRIPTION_P else uniq
            plans += [(t, d) for d in pool]
    return plans


def _group_descs(objs) -> list[Desc]:
    """Every description some object has, plus the empty one (all objects)."""
    seen = {(None, None, None): None}
    for o in objs:
        for d in _descs(o):
            seen.setdefault(d, None)
    return list(seen)


def _spatial_plans(objs, targets, size: int) -> list[tuple]:
    margin = SPATIAL_MARGIN * size
    plans = []
    for desc in _group_descs(objs):
        group = _match_all(objs, desc)
        if len(group) < 2:
            continue
        for axis, lo, hi in ((0, "left", "right"), (1, "top", "bottom")):
            order = sorted(group, key=lambda i: _center(objs[i])[axis])
            c = [_center(objs[i])[axis] for i in order]
            if c[1] - c[0] >= margin and order[0] in targets:
                plans.append((order[0], (desc, lo, len(group))))
            if c[-1] - c[-2] >= margin and order[-1] in targets:
                plans.append((order[-1], (desc, hi, len(group))))
            if axis == 0 and len(group) == 3 and order[1] in targets:
                if min(c[1] - c[0], c[2] - c[1]) >= margin:
                    plans.append((order[1], (desc, "middle", 3)))
    return plans


def _side(a: ObjectLike, r: ObjectLike, rel: str) -> float:
    """How far a's centre lies beyond r's centre in direction ``rel`` (pixels)."""
    (ax, ay), (rx, ry) = _center(a), _center(r)
    return {"left": rx - ax, "right": ax - rx, "above": ry - ay, "below": ay - ry}[rel]


def _relational_plans(objs, targets, size: int) -> list[tuple]:
    margin = RELATION_MARGIN * size
    refs = {}  # object -> its minimal unique descriptions (landmarks must be unique)
    for r in range(len(objs)):
        refs[r] = unique_descs(objs, r)[1]
    plans = []
    for t in targets:
        o = objs[t]
        for tdesc in ((None, None, None), (None, None, o.shape), (None, o.color, None),
                      (None, o.color, o.shape)):
            group = _match_all(objs, tdesc)
            for r, rdescs in refs.items():
                cands = [i for i in group if i != r]
                if r == t or not rdescs or len(cands) < 2:
                    continue
                for rel in RELATION_WORDS:
                    if _side(o, objs[r], rel) < margin:
                        continue
                    if all(_side(objs[i], objs[r], rel) <= 0 for i in cands if i != t):
                        plans += [(t, (tdesc, rel, r, rd)) for rd in rdescs]
    return plans


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def phrase(desc: Desc, rng: np.random.Generator) -> str:
    """Words for a description, without article: "small red ball", "green one"."""
    size, color, shape = desc
    words = []
    if size:
        words.append(_pick(rng, SIZE_WORDS[size]))
    if color:
        words.append(_pick(rng, COLOR_WORDS[color]))
    words.append(_pick(rng, SHAPE_WORDS[shape]) if shape else _pick(rng, FILLER_NOUNS))
    return " ".join(words)


def _render_attribute(desc: Desc, rng) -> str:
    size, color, shape = desc
    if shape and color and not size and rng.random() < 0.25:
        return f"the {_pick(rng, SHAPE_WORDS[shape])} that is {_pick(rng, COLOR_WORDS[color])}"
    return _pick(rng, ("the ", "the ", "")) + phrase(desc, rng)


def _render_spatial(payload, rng) -> str:
    desc, where, group_size = payload
    forms = SPATIAL_PHRASES[where]
    if group_size == 2 and where in PAIR_PHRASES:
        forms = forms + PAIR_PHRASES[where]
    return _pick(rng, forms).format(p=phrase(desc, rng))


def _render_relational(payload, rng) -> str:
    tdesc, rel, _, rdesc = payload
    rel_words = _pick(rng, RELATION_WORDS[rel])
    form = _pick(rng, RELATIONAL_FORMS)
    return form.format(t=phrase(tdesc, rng), rel=rel_words, r=phrase(rdesc, rng))


_PLANNERS = {
    "attribute": lambda objs, targets, size, rng: _attribute_plans(objs, targets, rng),
    "spatial": lambda objs, targets, size, rng: _spatial_plans(objs, targets, size),
    "relational": lambda objs, targets, size, rng: _relational_plans(objs, targets, size),
}
_RENDERERS = {
    "attribute": _render_attribute,
    "spatial": _render_spatial,
    "relational": _render_relational,
}


def generate_expressions(
    objs: Sequence[ObjectLike], image_size: int, rng: np.random.Generator, n: int | None = None
) -> list[Expression]:
    """``n`` distinct expressions (default: drawn from ``EXPRESSIONS_PER_IMAGE``), cycling
    through the three types from a random start so each image gets a mix and the world's
    type counts stay balanced; a type with no valid plan left yields to the next one."""
    if n is None:
        n = int(rng.integers(EXPRESSIONS_PER_IMAGE[0], EXPRESSIONS_PER_IMAGE[1] + 1))
    targets = allowed_targets(objs)
    plans: dict[str, list] = {}
    out: list[Expression] = []
    texts: set[str] = set()
    start = int(rng.integers(3))
    for k in range(n):
        for j in range(3):
            kind = EXPR_TYPES[(start + k + j) % 3]
            if kind not in plans:  # built lazily: relational plans are the costly ones
                plans[kind] = _PLANNERS[kind](objs, targets, image_size, rng)
            expr = _draw(kind, plans[kind], objs, rng, texts)
            if expr is not None:
                out.append(expr)
                texts.add(expr.text)
                break
    return out


def _draw(kind, plans, objs, rng, texts) -> Expression | None:
    """Pop random plans of one type until one renders to a new text; None if exhausted."""
    while plans:
        # Draw the target first so objects with many plans are not over-represented.
        targets = sorted({p[0] for p in plans})
        t = targets[int(rng.integers(len(targets)))]
        mine = [i for i, p in enumerate(plans) if p[0] == t]
        target, payload = plans.pop(mine[int(rng.integers(len(mine)))])
        text = _RENDERERS[kind](payload, rng)
        if text not in texts:
            ref = payload[2] if kind == "relational" else None
            return Expression(text, target, kind, ref)
    return None
