"""``clipvg demo``: the embedded default, end to end, in this process.

synthetic world -> CLIP-VG training (local engine) -> held-out evaluation of the best checkpoint
-> ``curve.png`` and ``predictions.png`` in the run folder: one model on the ground truth, in
this process. ``make demo`` runs the whole curriculum pipeline instead (``clipvg pipeline``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from clipvg.config import load_config
from clipvg.engine.examples import prediction_examples
from clipvg.engine.local import train_local
from clipvg.errors import UserError
from clipvg.viz import plot_prediction_grid, plot_training_curve


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
