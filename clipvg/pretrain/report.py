"""The model card and curve written next to pre-trained towers."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVE_KEYS = (("phrase_top1", "phrase -> patch top-1"), ("color_acc", "patch colour acc"),
              ("shape_acc", "patch shape acc"))


def plot_pretrain_curve(curve: list[dict], path: Path) -> Path:
    """Probe accuracies (left) and losses (right) against pre-training images seen."""
    images = [r["images"] / 1e3 for r in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in CURVE_KEYS:
        left.plot(images, [r["probe"][key] for r in curve], marker=".", label=label)
    left.set(xlabel="pre-training images (thousands)", ylabel="probe accuracy", ylim=(0, 1))
    left.legend(loc="lower right")
    for key in ("align", "cells", "box", "contrastive"):
        right.plot(images, [r["probe"][key] for r in curve], label=key)
    right.set(xlabel="pre-training images (thousands)", ylabel="probe loss", yscale="log")
    right.legend(loc="upper right")
    fig.suptitle("tower pre-training on synthetic scenes (held-out probe scenes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_model_card(out: Path, summary: dict, command: str) -> Path:
    """``MODEL_CARD.md`` (+ ``curve.png``) from ``pretrain.json``'s summary and ``metrics.jsonl``."""
    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    plot_pretrain_curve(curve, out / "curve.png")
    cfg = summary["config"]
    rows = "\n".join(
        f"| {r['step']} | {r['images']} | {r['elapsed_s']:.0f} | {r['probe']['phrase_top1']:.3f} | "
        f"{r['probe']['color_acc']:.3f} | {r['probe']['shape_acc']:.3f} | {r['probe']['box']:.4f} | "
        f"{r['probe']['loss']:.3f} |" for r in curve)
    text = f"""# Tiny synthetic CLIP towers

open_clip CLIP towers pre-trained by `clipvg pretrain-towers` on freshly rendered synthetic
scenes. They play the part of CLIP's web pre-training for the embedded demo: CLIP-VG starts from
them with the official freezing policy, as a cluster run starts from published CLIP weights.

- **File**: `open_clip_model.safetensors`, a complete open_clip `CLIP` state_dict (float32).
  Load it with `model.weights: <this folder>/open_clip_model.safetensors` and the `model.arch`
  below (`configs/demo.yaml`).
- **Command** (from the repository root):

  ```
  {command}
  ```
- **Seed**: scene stream {cfg['seed']} (split name `pretrain`; probe scenes: stream
  {cfg['seed'] + 1}). torch seed {cfg['seed']}. CPU threads: {summary['threads']}.
- **Training**: {cfg['steps']} steps x {cfg['batch_size']} fresh scenes, AdamW lr {cfg['lr']},
  weight decay {cfg['weight_decay']}, warm-up {cfg['warmup_steps']} steps then cosine; object
  counts by stage `[start, min, max]` = {cfg['stages']}; {summary['elapsed_s']:.0f} s wall time.
- **What it never saw**: the demo world's images (its seeds and split names differ), its
  referring expressions or its pseudo-labels. Text is captions listing the objects ("a small red
  circle at the top left, ...") and object phrases that may match several objects.
- **Objective** (`clipvg/pretrain/objective.py`): phrase-patch alignment (sigmoid loss between
  phrase embeddings and dense patch embeddings), per-patch colour / shape / size / box heads
  (discarded), and CLIP's image-caption contrastive loss.

## Architecture

```json
{json.dumps(summary['arch'], indent=2)}
```
image size {summary['image_size']}, context length {summary['context_length']}, normalisation
`{cfg['normalize']}`.

## Curve (held-out probe scenes, {cfg['probe_images']} images with {cfg['stages'][-1][1]}-{cfg['stages'][-1][2]} objects)

![curve](curve.png)

| step | images | s | phrase top-1 | colour acc | shape acc | box L1 | loss |
|---:|---:|---:|---:|---:|---:|---:|---:|
{rows}

Phrase top-1: share of object phrases whose best-scoring patch belongs to an object the phrase
describes. Colour / shape acc: per-patch heads on object patches. Box L1: mean |error| of the
per-patch box head, as a fraction of the image side.
"""
    path = out / "MODEL_CARD.md"
    path.write_text(text)
    return path
