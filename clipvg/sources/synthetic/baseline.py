"""The random-object baseline of a synthetic split: what a model that ignores the text scores.

A model that localises objects perfectly but picks one at random scores, per expression, the
fraction of the image's objects whose box has IoU >= 0.5 with the target box (the target itself,
plus any object that happens to overlap it that much). The shuffled-text control of every
evaluation (:mod:`clipvg.engine.control`) should fall to about this number for a model that reads
the text; grounding results are read against it (docs/pretraining.md).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from clipvg.config import DataConfig, SynthConfig
from clipvg.sources.synthetic.scenes import generate_image, image_rng
from clipvg.ops.boxes import box_iou


def random_object_baseline(cfg: SynthConfig, seed: int, split: str, images: int) -> dict:
    """Expected Acc@0.5 of a uniformly random object over the expressions of ``split``.

    Regenerates the split's images from their seeds (the world on storage is not needed).

    Returns:
        ``{"acc": overall, "per_type": {expr_type: acc}, "total": expressions}``.
    """
    by_type: dict[str, list[float]] = defaultdict(list)
    for i in range(images):
        im = generate_image(image_rng(seed, split, i), cfg, image_id=f"syn-s{seed}-{split}-{i:06d}")
        boxes = torch.tensor([o.box for o in im.objects], dtype=torch.float64)
        hits = (box_iou(boxes, boxes) >= 0.5).double().mean(dim=0)  # (n,) per target object
        for e in im.expressions:
            by_type[e.expr_type].append(float(hits[e.target]))
    every = [v for values in by_type.values() for v in values]
    return {"acc": sum(every) / max(len(every), 1), "total": len(every),
            "per_type": {t: sum(v) / len(v) for t, v in sorted(by_type.items())}}


def world_baselines(data: DataConfig) -> dict:
    """``history.json``'s ``random_object_baseline``: split -> :func:`random_object_baseline`
    for the held-out splits of the synthetic world (``data.uri`` null); {} for other data."""
    if data.uri is not None:
        return {}
    counts = {"val": data.synth.val_images, "test": data.synth.test_images}
    return {split: random_object_baseline(data.synth, data.seed, split, counts[split])
            for split in data.test_splits if split in counts}
