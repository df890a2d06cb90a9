"""Pictures a person would rather look at than read: training curves and predicted boxes.

Boxes here are ``(x0, y0, x1, y1)`` in pixels of the image they are drawn on.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

PRED_COLOR = (230, 40, 40)
TRUE_COLOR = (40, 200, 60)


def draw_boxes(image: Image.Image, pred: Sequence[float] | None, true: Sequence[float] | None = None,
               width: int | None = None) -> Image.Image:
    """A copy of ``image`` with the predicted box in red and the true box (if given) in green."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = width or max(2, round(max(out.size) / 150))
    if true is not None:
        draw.rectangle([float(v) for v in true], outline=TRUE_COLOR, width=width)
    if pred is not None:
        draw.rectangle([float(v) for v in pred], outline=PRED_COLOR, width=width)
    return out


def plot_training_curve(epochs: list[dict], path: str | Path, title: str = "CLIP-VG training") -> Path:
    """Validation Acc@0.5 (overall and per expression type) and training loss, against the
    cumulative wall-clock time of training + validation (epochs when no time is recorded)."""
    path = Path(path)
    timed = all("elapsed_s" in e for e in epochs)
    xs = list(np.cumsum([e["elapsed_s"] for e in epochs])) if timed else [e["epoch"] for e in epochs]
    xlabel = "seconds (training + validation)" if timed else "epoch"
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_acc.plot(xs, [e["val"]["acc"] for e in epochs], "o-", lw=2, label="all", color="black")
    types = sorted({t for e in epochs for t in e["val"].get("per_type", {})})
    for t in types:
        ax_acc.plot(xs, [e["val"]["per_type"].get(t, float("nan")) for e in epochs], ".--", label=t)
    ax_acc.set(xlabel=xlabel, ylabel="val Acc@0.5", ylim=(0, 1), title="held-out accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    ax_loss.plot(xs, [e["train_loss"] for e in epochs], "o-", color="tab:red")
    ax_loss.set(xlabel=xlabel, ylabel="L1 + GIoU", title="training loss")
    ax_loss.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_prediction_grid(items: list[dict], path: str | Path, columns: int = 4) -> Path:
    """A grid of images with expression, predicted (red) and true (green) boxes.

    Each item: ``image`` (PIL), ``text``, ``pred`` and ``true`` (xyxy pixels), ``iou`` (float).
    """
    path = Path(path)
    rows = max(1, -(-len(items) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        ax.imshow(draw_boxes(item["image"], item["pred"], item.get("true")))
        ok = item.get("iou", 0.0) >= 0.5
        caption = "\n".join(textwrap.wrap(item["text"], 34)[:2])
        ax.set_title(f"{caption}\nIoU {item.get('iou', float('nan')):.2f}", fontsize=8,
                     color="darkgreen" if ok else "darkred")
    fig.suptitle("red: predicted, green: true", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
