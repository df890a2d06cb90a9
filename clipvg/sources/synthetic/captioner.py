"""The simulated image captioner (a stand-in for ClipCap / M2) of the synthetic world.

It writes ``CAPTIONS_PER_IMAGE`` short captions per image ("a red circle next to a blue
square", "a picture of a green star", "two circles and an orange star"). The first-mentioned
object is chosen by salience (probability proportional to box area, as captioners name the
big things). Its own noise, per caption unless said otherwise:

* **hallucinated first object** (``HALLUCINATED_FIRST_RATE``): the caption starts with an
  object that is not in the image (random shape and colour);
* **wrong colour** (``WRONG_COLOR_RATE`` per mentioned object): a neighbouring hue;
* **wrong noun** (``WRONG_NOUN_RATE`` per mentioned object): a confusable shape;
* **synonym** (``SYNONYM_RATE`` per mentioned object): a non-canonical word ("ball",
  "block"), which no detector class name matches;
* **score**: lower on average per error, with overlapping distributions.

Captions carry no boxes; ``first_source`` (index of the first-mentioned true object, None if
invented) and ``errors`` are diagnostics, never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from clipvg.sources.synthetic.detector import CONFUSABLE
from clipvg.sources.synthetic.text import HUE_RING, SHAPE_WORDS, SHAPES, ObjectLike

CAPTIONS_PER_IMAGE = (1, 2)  # inclusive range
HALLUCINATED_FIRST_RATE = 0.10
WRONG_COLOR_RATE = 0.15
WRONG_NOUN_RATE = 0.12
SYNONYM_RATE = 0.08
PLURAL_P = 0.3  # "two circles ..." when two or more objects share the first one's shape
SINGLE_FORMS = ("a picture of {a}", "{a} on a plain background", "an image of {a}")
PAIR_FORMS = ("{a} next to {b}", "{a} and {b}", "{a} near {b}")


@dataclass(frozen=True)
class Caption:
    text: str
    score: float
    first_source: int | None  # true object mentioned first; None = hallucinated
    errors: tuple[str, ...]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def _noun(rng: np.random.Generator, shape: str, errors: list[str]) -> str:
    if rng.random() < WRONG_NOUN_RATE:
        errors.append("noun")
        return CONFUSABLE[shape][int(rng.integers(2))]
    if rng.random() < SYNONYM_RATE and len(SHAPE_WORDS[shape]) > 1:
        errors.append("synonym")
        return SHAPE_WORDS[shape][1 + int(rng.integers(len(SHAPE_WORDS[shape]) - 1))]
    return shape


def _color(rng: np.random.Generator, color: str, errors: list[str]) -> str:
    if rng.random() < WRONG_COLOR_RATE:
        errors.append("color")
        i = HUE_RING.index(color)
        return HUE_RING[(i + (1 if rng.random() < 0.5 else -1)) % len(HUE_RING)]
    return color


def _phrase(rng, shape: str, color: str, errors: list[str]) -> str:
    """ "a red circle", with the captioner's colour / noun errors."""
    c = _color(rng, color, errors)
    return _article(f"{c} {_noun(rng, shape, errors)}")


def _first(rng, objects: Sequence[ObjectLike]) -> tuple[str, str, int | None]:
    """(shape, colour, source) of the first-mentioned object: invented, or by salience."""
    if not objects or rng.random() < HALLUCINATED_FIRST_RATE:
        return (SHAPES[int(rng.integers(len(SHAPES)))],
                HUE_RING[int(rng.integers(len(HUE_RING)))], None)
    areas = np.array([(o.box[2] - o.box[0]) * (o.box[3] - o.box[1]) for o in objects])
    o = objects[int(rng.choice(len(objects), p=areas / areas.sum()))]
    return o.shape, o.color, o.index


def _caption(rng: np.random.Generator, objects: Sequence[ObjectLike]) -> Caption:
    shape, color, source = _first(rng, objects)
    errors = [] if source is not None else ["hallucinated"]
    others = [o for o in objects if o.index != source]
    same = sum(o.shape == shape for o in objects)
    if source is not None and same >= 2 and rng.random() < PLURAL_P:
        a = f"two {plural(_noun(rng, shape, errors))}"
    else:
        a = _phrase(rng, shape, color, errors)
    if others and rng.random() < 0.6:
        o = others[int(rng.integers(len(others)))]
        form = PAIR_FORMS[int(rng.integers(len(PAIR_FORMS)))]
        second: list[str] = []  # errors in the second mention do not move the first's box
        text = form.format(a=a, b=_phrase(rng, o.shape, o.color, second))
        errors += [f"second_{e}" for e in second]
    else:
        text = SINGLE_FORMS[int(rng.integers(len(SINGLE_FORMS)))].format(a=a)
    score = min(max(float(rng.normal(0.62, 0.1)) - 0.12 * len(errors), 0.01), 0.99)
    return Caption(text, score, source, tuple(errors))


def simulate_captions(
    objects: Sequence[ObjectLike], size: int, rng: np.random.Generator
) -> list[Caption]:
    """1-2 distinct noisy captions of an image, by descending score (``size`` is unused: a
    caption has no box; kept for the simulators' common signature)."""
    n = int(rng.integers(CAPTIONS_PER_IMAGE[0], CAPTIONS_PER_IMAGE[1] + 1))
    out: list[Caption] = []
    for _ in range(4 * n):  # a repeated text is redrawn
        c = _caption(rng, objects)
        if all(c.text != p.text for p in out):
            out.append(c)
        if len(out) == n:
            break
    out.sort(key=lambda c: -c.score)
    return out
