"""``clipvg demo``: the embedded default, end to end, in this process.

synthetic world -> CLIP-VG training (local engine) -> held-out evaluation of the best checkpoint
-> ``curve.png`` and ``predictions.png`` in the run folder: one model on the ground truth, in
this process. ``make demo`` runs the whole curriculum pipeline instead (``clipvg pipeline``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from clipvg.config import Config, load_config
from clipvg.data.batching import SampleTransform, ensure_dataset
from clipvg.engine.local import train_local
from clipvg.engine.metrics import eval_iou
from clipvg.errors import UserError
from clipvg.viz import plot_prediction_grid, plot_training_curve


@torch.no_grad()
def prediction_examples(cfg: Config, checkpoint: str | Path, n: int = 12, **storage_options) -> list[dict]:
    """Predicted and true boxes (original pixels) for the first ``n`` held-out samples
    (``checkpoint``: a local model folder; the dataset is ``data.uri`` or the synthetic world)."""
    from clipvg.data.dataset import GroundingDataset
    from clipvg.data.text import tokenize
    from clipvg.data.transforms import canvas_to_image_box
    from clipvg.model import load_model

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


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="demo", help="YAML run config, or a packaged config's name (default: demo)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run folder that already holds results (default: refuse)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.seed=7 storage.root=/tmp/run")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.config, args.overrides, launcher="train-local")
    if "://" in cfg.storage.root and not cfg.storage.root.startswith("file://"):
        # The figures are drawn into the run folder with matplotlib: a local folder only.
        raise UserError(f"clipvg demo writes to a local folder; storage.root={cfg.storage.root} is "
                        "a URI (use clipvg train-local or clipvg pipeline for object storage)")
    start = time.perf_counter()
    history = train_local(cfg, overwrite=args.overwrite)
    run_dir = Path(history.run_dir)
    curve = plot_training_curve(history.epochs, run_dir / "curve.png", title=f"demo (world seed {cfg.data.seed})")
    grid = plot_prediction_grid(prediction_examples(cfg, run_dir / "best"), run_dir / "predictions.png")
    print()
    train_s = sum(e["elapsed_s"] for e in history.epochs)
    print(f"demo finished in {time.perf_counter() - start:.0f} s, of which {train_s:.0f} s training "
          f"+ validation (best epoch {history.best_epoch} of {cfg.train.epochs}, val Acc@0.5 "
          f"{history.best_acc:.3f})")
    for split, summary in history.test.items():
        per_type = ", ".join(f"{k} {v:.3f}" for k, v in summary["per_type"].items())
        print(f"held-out {split} Acc@0.5 = {summary['acc']:.3f} over {summary['total']} expressions ({per_type})")
    print(f"curve: {curve}\npredictions: {grid}\nrun folder: {run_dir}")
    return 0
