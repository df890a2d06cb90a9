"""The simulated detector of the synthetic world.

A real pseudo-label pipeline starts from an off-the-shelf detector's boxes, class labels,
attribute guesses and scores (method doc §8); the synthetic world simulates that output from
its ground-truth objects with documented error rates, so the pseudo-label generators and the
reliability measurement meet realistic noise: jittered boxes, confused classes, wrong or
missing colours, missed objects and false positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from clipvg.sources.synthetic.text import HUE_RING, SHAPES, ObjectLike

# Error rates, per ground-truth object unless said otherwise.
MISS_RATE = 0.08  # object not detected
LABEL_CONFUSION_RATE = 0.10  # detected with a confusable shape label
COLOR_MISSING_RATE = 0.05  # attribute detector not confident: color = null
COLOR_ERROR_RATE = 0.10  # colour replaced by a neighbouring hue
BOX_JITTER = 0.06  # std of each corner's offset, as a fraction of the object's width/height
FALSE_POSITIVES_PER_IMAGE = 0.5  # Poisson mean of spurious detections per image
CONFUSABLE = {
    "circle": ("diamond", "square"),
    "square": ("diamond", "circle"),
    "triangle": ("star", "diamond"),
    "star": ("cross", "triangle"),
    "cross": ("star", "square"),
    "diamond": ("square", "triangle"),
}


@dataclass(frozen=True)
class Detection:
    """A detection; ``source`` = index of the true object (None = false positive),
    kept for diagnostics only and never written, so pseudo-labels cannot peek at it."""

    box: tuple[float, float, float, float]
    label: str
    color: str | None
    score: float
    source: int | None


def _jitter_box(rng, box, size: int) -> tuple:
    """Gaussian corner offsets scaled by the box size, clipped to the image, area kept > 0."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d = rng.normal(0.0, BOX_JITTER, 4) * (w, h, w, h)
    nx0, ny0, nx1, ny1 = (np.array(box) + d).clip(0, size).tolist()
    nx1, ny1 = max(nx1, nx0 + 1.0), max(ny1, ny0 + 1.0)  # keep a positive area
    return (nx0, ny0, min(nx1, float(size)), min(ny1, float(size)))


def _detector_color(rng, color: str) -> str | None:
    """The colour the attribute detector reports: null, a neighbouring hue, or the truth."""
    u = rng.random()
    if u < COLOR_MISSING_RATE:
        return None
    if u < COLOR_MISSING_RATE + COLOR_ERROR_RATE:
        i = HUE_RING.index(color)
        return HUE_RING[(i + (1 if rng.random() < 0.5 else -1)) % len(HUE_RING)]
    return color


def simulate_detections(
    objects: Sequence[ObjectLike], size: int, rng: np.random.Generator
) -> list[Detection]:
    """Noisy detections of ``objects`` plus false positives, sorted by descending score."""
    dets = []
    for o in objects:
        if rng.random() < MISS_RATE:
            continue
        confused = rng.random() < LABEL_CONFUSION_RATE
        label = CONFUSABLE[o.shape][int(rng.integers(2))] if confused else o.shape
        score = float(np.clip(rng.normal(0.82, 0.08) - (0.15 if confused else 0.0), 0.3, 0.99))
        dets.append(Detection(_jitter_box(rng, o.box, size), label,
                              _detector_color(rng, o.color), score, o.index))
    for _ in range(int(rng.poisson(FALSE_POSITIVES_PER_IMAGE))):
        side = rng.uniform(0.08, 0.3) * size
        x0, y0 = rng.uniform(0, size - side, 2)
        dets.append(Detection((float(x0), float(y0), float(x0 + side), float(y0 + side)),
                              SHAPES[int(rng.integers(len(SHAPES)))],
                              _detector_color(rng, HUE_RING[int(rng.integers(len(HUE_RING)))]),
                              float(rng.uniform(0.05, 0.5)), None))
    dets.sort(key=lambda d: -d.score)
    return dets
