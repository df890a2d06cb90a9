"""A trained model's predictions on held-out samples, for figures (``clipvg demo``'s
``predictions.png``, the pipeline report's prediction grid)."""

from __future__ import annotations

from pathlib import Path

import torch

from clipvg.config import Config
from clipvg.engine.batching import SampleTransform, ensure_dataset
from clipvg.data.dataset import GroundingDataset
from clipvg.data.text import tokenize
from clipvg.data.transforms import canvas_to_image_box
from clipvg.engine.metrics import eval_iou
from clipvg.model.io import load_model


@torch.no_grad()
def prediction_examples(cfg: Config, checkpoint: str | Path, n: int = 12, **storage_options) -> list[dict]:
    """Predicted and true boxes (original pixels) for the first ``n`` held-out samples
    (``checkpoint``: a local model folder; the dataset is ``data.uri`` or the synthetic world)."""
    model = load_model(checkpoint).eval()
    split = cfg.data.test_splits[0]
    transform = SampleTransform(cfg.data, cfg.model.image_size, train=False)
    dataset = GroundingDataset(ensure_dataset(cfg), split, transform,
                               official_boxes=cfg.data.box_int_truncation, **storage_options)
    items = []
    for index in range(min(n, len(dataset))):
        record = dataset.records[index]
        sample, _ = dataset[index]
        tok = tokenize([sample.text], context_length=cfg.model.context_length)
        pred = model(sample.image[None], sample.pixel_mask[None], tok.tokens, tok.token_mask)
        iou = eval_iou(pred, sample.box[None]).item()
        items.append({
            "image": dataset.image(record.image_id), "text": record.text, "iou": iou,
            "pred": canvas_to_image_box(pred[0].clamp(0, 1), sample.scale, sample.offset, cfg.model.image_size),
            "true": record.box_xyxy.tolist(),
        })
    return items
