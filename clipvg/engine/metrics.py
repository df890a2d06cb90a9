"""Evaluation: the official IoU and Acc@0.5 (method doc §4), and a per-group accumulator.

The evaluation IoU clamps the *prediction* to the canvas ``[0, 1]`` but not the target, and adds
``1e-16`` to the union, exactly as the official ``eval_utils``. Acc@0.5 counts ``IoU >= 0.5``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor

from clipvg.ops.boxes import box_inter_union, cxcywh_to_xyxy

ACC_IOU_THRESHOLD = 0.5


def eval_iou(pred: Tensor, target: Tensor) -> Tensor:
    """Official evaluation IoU of ``(N, 4)`` cxcywh predictions and targets -> ``(N,)``."""
    inter, union = box_inter_union(cxcywh_to_xyxy(pred).clamp(0, 1), cxcywh_to_xyxy(target))
    return inter / (union + 1e-16)


def correct_at(iou: Tensor, threshold: float = ACC_IOU_THRESHOLD) -> Tensor:
    """``(N,)`` int64, 1 where ``iou >= threshold``."""
    return (iou >= threshold).to(torch.int64)


@dataclass
class AccuracyMeter:
    """Counts correct / total overall and per group (e.g. expression type or split).

    ``add`` takes per-sample IoUs and, optionally, a group label per sample. Counts are plain
    integers so that distributed workers can sum them (``state()`` / ``merge``).
    """

    threshold: float = ACC_IOU_THRESHOLD
    correct: int = 0
    total: int = 0
    groups: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def add(self, iou: Tensor, group_labels: list[str] | None = None) -> None:
        hits = correct_at(iou.detach().cpu(), self.threshold).tolist()
        self.correct += sum(hits)
        self.total += len(hits)
        if group_labels is not None:
            if len(group_labels) != len(hits):
                raise ValueError(f"{len(group_labels)} group labels for {len(hits)} samples")
            for label, hit in zip(group_labels, hits):
                counts = self.groups[label]
                counts[0] += hit
                counts[1] += 1

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def group_accuracy(self) -> dict[str, float]:
        return {k: c / n for k, (c, n) in sorted(self.groups.items()) if n}

    def state(self) -> dict:
        return {"correct": self.correct, "total": self.total,
                "groups": {k: list(v) for k, v in self.groups.items()}}

    def merge(self, other: dict) -> None:
        """Add the counts of another meter's ``state()``."""
        self.correct += other["correct"]
        self.total += other["total"]
        for k, (c, n) in other["groups"].items():
            self.groups[k][0] += c
            self.groups[k][1] += n
