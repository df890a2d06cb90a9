"""Audit of the template pseudo-labels against the synthetic world's ground truth.

The synthetic world knows every object, so it can say which template pseudo-labels are right -
something no real pseudo-label source can - and so measure two things the curriculum's numbers
alone cannot separate:

* how good the reliability measurer is: label precision after each threshold, and the AUC of
  the reliability as a right/wrong classifier;
* the *ceiling* of any curriculum on the source: :func:`oracle_scores` writes a scores table whose
  reliability is 1.0 for a right label and 0.0 for a wrong one, so a training on
  ``{samples, scores: <oracle>, threshold: 0.5}`` is SSA with a perfect measurer.

A template label (:mod:`clipvg.pseudo.template`) is **right** when its text, read against the
true objects with the template's own meaning, names one object and the label's box has
IoU >= 0.5 with it. Meaning: the noun is the shape (canonical word, as the detector labels it),
an attribute is the colour; the group is every true object with that shape (and colour, when
given); a spatial word picks the group's extreme (``left``/``right`` by box centre x, ``top``/
``bottom`` by centre y, ``bigger``/``smaller`` by box area, ``middle`` the median of an odd
group); without one, the group must hold exactly one object.

Run: ``python -m clipvg.curriculum.audit --run runs/demo [--oracle-out DIR]``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow as pa

import torch

from clipvg.config import SynthConfig
from clipvg.curriculum.selection import SCORES_SCHEMA
from clipvg.data import storage
from clipvg.ops.boxes import box_iou
from clipvg.sources.synthetic.scenes import generate_image, image_rng

SPATIAL = ("left", "right", "middle", "top", "bottom", "bigger", "smaller")
FILLERS = ("on", "the", "at", "in")
THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def parse_template(text: str) -> tuple[str | None, str | None, str]:
    """``(spatial word or None, colour or None, shape)`` of a template text."""
    words = [w for w in text.split() if w not in FILLERS]
    spatial = next((w for w in words if w in SPATIAL), None)
    rest = [w for w in words if w not in SPATIAL]
    return spatial, (rest[0] if len(rest) == 2 else None), rest[-1]


def _centre(o, axis: int) -> float:
    return (o.box[axis] + o.box[axis + 2]) / 2


def _area(o) -> float:
    return (o.box[2] - o.box[0]) * (o.box[3] - o.box[1])


def template_referent(objects, text: str):
    """The true object a template ``text`` names among ``objects`` (see the module doc), or
    None when it names none or several."""
    spatial, colour, shape = parse_template(text)
    group = [o for o in objects if o.shape == shape and (colour is None or o.color == colour)]
    if not group:
        return None
    if spatial is None:
        return group[0] if len(group) == 1 else None
    if spatial == "middle":
        return sorted(group, key=lambda o: _centre(o, 0))[len(group) // 2] if len(group) % 2 else None
    key, pick = {"left": (lambda o: _centre(o, 0), min), "right": (lambda o: _centre(o, 0), max),
                 "top": (lambda o: _centre(o, 1), min), "bottom": (lambda o: _centre(o, 1), max),
                 "bigger": (_area, max), "smaller": (_area, min)}[spatial]
    return pick(group, key=key)


def label_truth(samples: pa.Table, cfg: SynthConfig, seed: int) -> np.ndarray:
    """(N,) bool: whether each template label of ``samples`` is right. The train scenes are
    regenerated from their seeds (image ids ``syn-s<seed>-<split>-<index>``)."""
    scenes: dict[str, list] = {}
    right = np.zeros(samples.num_rows, dtype=bool)
    for k, (image_id, text, box) in enumerate(zip(*(samples.column(c).to_pylist()
                                                    for c in ("image_id", "text", "box")))):
        if image_id not in scenes:
            split, index = image_id.split("-")[-2], int(image_id.split("-")[-1])
            scenes[image_id] = generate_image(image_rng(seed, split, index), cfg).objects
        target = template_referent(scenes[image_id], text)
        if target is not None:
            iou = box_iou(torch.tensor([target.box]), torch.tensor([box]))[0, 0]
            right[k] = bool(iou >= 0.5)
    return right


def precision_curve(right: np.ndarray, reliability: np.ndarray) -> dict:
    """Labels kept and their precision for ``reliability > h`` at each h of :data:`THRESHOLDS`,
    and the AUC of the reliability separating right from wrong labels (ties count half)."""
    rows = [dict(h=h, kept=int((reliability > h).sum()),
                 precision=float(right[reliability > h].mean()) if (reliability > h).any() else None)
            for h in THRESHOLDS]
    pos, neg = np.sort(reliability[right]), reliability[~right]
    below = np.searchsorted(pos, neg, side="left")  # right labels scored below each wrong one
    equal = np.searchsorted(pos, neg, side="right") - below
    auc = float(((len(pos) - below - equal) + 0.5 * equal).sum() / max(1, len(pos) * len(neg)))
    return dict(labels=int(len(right)), precision=float(right.mean()), curve=rows, auc=auc)


def _aligned_reliability(samples: pa.Table, scores: pa.Table) -> np.ndarray:
    by_id = dict(zip(scores.column("sample_id").to_pylist(), scores.column("reliability").to_pylist()))
    return np.array([by_id.get(s) if by_id.get(s) is not None else 0.0
                     for s in samples.column("sample_id").to_pylist()], dtype=np.float64)


def oracle_scores(samples: pa.Table, right: np.ndarray) -> pa.Table:
    """A scores table with reliability 1.0 for right and 0.0 for wrong labels: with threshold
    0.5, the pool a perfect measurer would select."""
    n = samples.num_rows
    return pa.table({"sample_id": samples.column("sample_id"), "image_id": samples.column("image_id"),
                     "source": samples.column("source"), "measurer": pa.array(["oracle"] * n),
                     "reliability": pa.array(right.astype(np.float32)),
                     "pred_box": pa.nulls(n, SCORES_SCHEMA.field("pred_box").type),
                     "error": pa.nulls(n, pa.string())}, schema=SCORES_SCHEMA)


def audit_run(run: str, source: str = "template", **storage_options) -> tuple[dict, pa.Table, np.ndarray]:
    """Audit ``<run>/pseudo/<source>`` and its own measurer's scores
    ``<run>/scores/<source>-on-<source>``; the world is read from ``<run>/stages/world.json``."""
    world = storage.read_json(storage.join(run, "stages", "world.json"), **storage_options)
    manifest = storage.read_json(storage.join(world["outputs"]["uri"], "manifest.json"), **storage_options)
    cfg = SynthConfig(**manifest["config"])
    samples = storage.read_table(storage.join(run, "pseudo", source), **storage_options)
    scores = storage.read_table(storage.join(run, "scores", f"{source}-on-{source}"), **storage_options)
    right = label_truth(samples, cfg, int(manifest["seed"]))
    return precision_curve(right, _aligned_reliability(samples, scores)), samples, right


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipvg.curriculum.audit",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a pipeline run folder on the synthetic world")
    parser.add_argument("--oracle-out", default=None, help="write the oracle scores table here")
    args = parser.parse_args(argv)
    report, samples, right = audit_run(args.run)
    print(f"{report['labels']} template labels, {report['precision']:.3f} right; "
          f"reliability AUC {report['auc']:.3f}")
    for row in report["curve"]:
        prec = "-" if row["precision"] is None else f"{row['precision']:.3f}"
        print(f"  r > {row['h']:.1f}: {row['kept']:6d} kept, precision {prec}")
    if args.oracle_out:
        try:  # never replace a table the user already has
            storage.write_table(oracle_scores(samples, right), args.oracle_out, mode="error")
        except FileExistsError as exc:
            print(f"error: {exc}; choose another --oracle-out", file=sys.stderr)
            return 2
        print(f"oracle scores: {args.oracle_out} (train with threshold 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
