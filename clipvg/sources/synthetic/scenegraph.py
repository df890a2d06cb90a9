"""The simulated scene-graph model (a stand-in for RelTR) of the synthetic world.

From the ground-truth objects it emits triplets ``subject predicate object`` between ordered
pairs of *entities* with a geometric predicate that holds for their boxes, plus its own noise,
different from the detector's (rates below, per triplet unless said otherwise):

* **hallucinated entities** (Poisson ``HALLUCINATIONS_PER_IMAGE`` per image, at least one in a
  scene with a single object, so it still yields triplets): a random shape at a random empty
  place; a triplet with one as subject grounds its text to a box with nothing in it;
* **subject/object swap** (``SWAP_RATE``): the text is kept but the two boxes are exchanged,
  so the subject box is another entity's;
* **label confusion** (``LABEL_CONFUSION_RATE`` per entity mention): a confusable shape;
* **wrong predicate** (``PREDICATE_ERROR_RATE``): a predicate that does not hold;
* **box jitter** (``BOX_JITTER``, twice the detector's): Gaussian corner offsets;
* **scores**: each of subject / predicate / object is lower on average when that part is
  wrong (hallucinated, confused, swapped, wrong predicate), with overlapping distributions.

Boxes are x0, y0, x1, y1 pixels of the image, clipped to it with a positive area.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import Sequence

import numpy as np

from clipvg.sources.synthetic.detector import CONFUSABLE
from clipvg.sources.synthetic.text import SHAPES, ObjectLike

HALLUCINATIONS_PER_IMAGE = 0.6  # Poisson mean of invented entities (>= 1 if one object)
SWAP_RATE = 0.10  # subject and object boxes exchanged
LABEL_CONFUSION_RATE = 0.12  # per subject / object mention
PREDICATE_ERROR_RATE = 0.10  # a predicate that does not hold
BOX_JITTER = 0.12  # std of each corner offset / object width or height (detector: 0.06)
TRIPLETS_PER_ENTITY = 2  # triplets per image = min(ordered pairs, this x entities)
NEAR_GAP = 0.08  # "near": box gap < this x image side
SIDE_MARGIN = 0.04  # left/right/above/below: centres apart by > this x image side
BIGGER_RATIO = 1.5  # "bigger than" / "smaller than": area ratio above this
PREDICATES = ("left of", "right of", "above", "below", "near", "bigger than", "smaller than")


@dataclass(frozen=True)
class Entity:
    """A thing the model believes it sees; ``source`` = true object index, None = invented."""

    shape: str
    box: tuple[float, float, float, float]
    source: int | None


@dataclass(frozen=True)
class Triplet:
    """One scene-graph triplet. Diagnostics, never written: ``subject_source`` /
    ``object_source`` (the true object whose box became the subject / object box, after a
    swap; None for an invented entity) and ``errors``."""

    subject: str
    subject_box: tuple[float, float, float, float]
    predicate: str
    object: str
    object_box: tuple[float, float, float, float]
    subject_score: float
    predicate_score: float
    object_score: float
    subject_source: int | None
    object_source: int | None
    errors: tuple[str, ...]


def jitter_box(rng: np.random.Generator, box, size: int, std: float) -> tuple:
    """Gaussian corner offsets (std x width / height), clipped to the image, area kept > 0."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d = rng.normal(0.0, std, 4).tolist()
    nx0, ny0, nx1, ny1 = (_clip(v, 0.0, float(size)) for v in (x0 + d[0] * w, y0 + d[1] * h,
                                                               x1 + d[2] * w, y1 + d[3] * h))
    nx0, ny0 = min(nx0, size - 1.0), min(ny0, size - 1.0)
    return (nx0, ny0, min(max(nx1, nx0 + 1.0), float(size)),
            min(max(ny1, ny0 + 1.0), float(size)))


def _clip(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi)


def _overlaps(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def hallucinate(rng: np.random.Generator, objects: Sequence[ObjectLike], size: int) -> Entity:
    """An invented entity: a random shape in a box clear of every object (if one is found in
    30 tries; otherwise wherever the last try fell)."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    for _ in range(30):
        side = rng.uniform(0.10, 0.25) * size
        x0, y0 = rng.uniform(0, size - side, 2)
        box = (float(x0), float(y0), float(x0 + side), float(y0 + side))
        if not any(_overlaps(box, o.box) for o in objects):
            break
    return Entity(shape, box, None)


def true_predicates(s: Sequence[float], o: Sequence[float], size: int) -> list[str]:
    """The predicates of :data:`PREDICATES` that hold for subject box s and object box o."""
    sx, sy = (s[0] + s[2]) / 2, (s[1] + s[3]) / 2
    ox, oy = (o[0] + o[2]) / 2, (o[1] + o[3]) / 2
    m = SIDE_MARGIN * size
    gap = max(o[0] - s[2], s[0] - o[2], o[1] - s[3], s[1] - o[3], 0.0)
    area_s, area_o = (s[2] - s[0]) * (s[3] - s[1]), (o[2] - o[0]) * (o[3] - o[1])
    holds = {"left of": sx < ox - m, "right of": sx > ox + m, "above": sy < oy - m,
             "below": sy > oy + m, "near": gap < NEAR_GAP * size,
             "bigger than": area_s > BIGGER_RATIO * area_o,
             "smaller than": area_o > BIGGER_RATIO * area_s}
    return [p for p in PREDICATES if holds[p]]


def _score(rng: np.random.Generator, mean: float, penalty: float) -> float:
    return _clip(float(rng.normal(mean, 0.12)) - penalty, 0.01, 0.99)


def _mention(rng: np.random.Generator, e: Entity) -> tuple[str, float, list[str]]:
    """The label the model gives an entity, its score and the errors made."""
    if e.source is None:
        return e.shape, float(rng.uniform(0.1, 0.6)), ["hallucinated"]
    if rng.random() < LABEL_CONFUSION_RATE:
        return CONFUSABLE[e.shape][int(rng.integers(2))], _score(rng, 0.72, 0.2), ["label"]
    return e.shape, _score(rng, 0.72, 0.0), []


def _triplet(rng: np.random.Generator, s: Entity, o: Entity, size: int) -> Triplet:
    subject, s_score, errors = _mention(rng, s)
    obj, o_score, o_errors = _mention(rng, o)
    errors += [f"object_{e}" for e in o_errors]
    holds = true_predicates(s.box, o.box, size) or ["near"]
    if rng.random() < PREDICATE_ERROR_RATE:
        wrong = [p for p in PREDICATES if p not in holds]
        predicate, penalty = wrong[int(rng.integers(len(wrong)))], 0.2
        errors.append("predicate")
    else:
        predicate, penalty = holds[int(rng.integers(len(holds)))], 0.0
    s_box = jitter_box(rng, s.box, size, BOX_JITTER)
    o_box = jitter_box(rng, o.box, size, BOX_JITTER)
    sources = s.source, o.source
    if rng.random() < SWAP_RATE:
        s_box, o_box, sources = o_box, s_box, sources[::-1]
        penalty += 0.15
        errors.append("swap")
    return Triplet(subject, s_box, predicate, obj, o_box, s_score,
                   _score(rng, 0.6, penalty), o_score, *sources, tuple(errors))


def simulate_triplets(
    objects: Sequence[ObjectLike], size: int, rng: np.random.Generator
) -> list[Triplet]:
    """Noisy triplets among ``objects`` and invented entities, by descending score product."""
    entities = [Entity(o.shape, tuple(o.box), o.index) for o in objects]
    n_fake = int(rng.poisson(HALLUCINATIONS_PER_IMAGE))
    if len(objects) == 1:
        n_fake = max(1, n_fake)
    entities += [hallucinate(rng, objects, size) for _ in range(n_fake)]
    pairs = list(permutations(range(len(entities)), 2))
    n = min(len(pairs), TRIPLETS_PER_ENTITY * len(entities))
    picked = sorted(rng.choice(len(pairs), size=n, replace=False).tolist()) if n else []
    out = [_triplet(rng, entities[pairs[i][0]], entities[pairs[i][1]], size) for i in picked]
    out.sort(key=lambda t: -(t.subject_score * t.predicate_score * t.object_score))
    return out
