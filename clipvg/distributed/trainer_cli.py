"""``clipvg train``: the command line of :mod:`clipvg.distributed.trainer`.

The config is loaded and the hub weights of ``model.pretrained`` checked
(:func:`clipvg.model.hub.ensure_pretrained`) before the trainer is imported (it loads pyarrow,
pandas and the curriculum, seconds on a loaded machine) and before Ray starts: bad input is
answered first, in about a second.
"""

from __future__ import annotations

import argparse
import logging

from clipvg.distributed.local_ray import add_ray_arguments, init_ray, joins_cluster
from clipvg.model.hub import load_checked_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (default: built-in defaults)")

    add_ray_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="remove what is already under storage.root/storage.run_name and start "
                             "over (default: continue its checkpoint, refuse other results)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. scaling.num_workers=2")


def run(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("clipvg").setLevel(logging.INFO)  # not botocore's "Found credentials..."
    # hub weights: cached, fetched once for this machine's workers, or one line now (before Ray)
    cfg = load_checked_config(args.config, args.overrides, launcher="ray_train",
                              fetch=not joins_cluster(args.address))
    # deferred: the trainer loads pyarrow, pandas and the curriculum (seconds); checks come first
    from clipvg.distributed.trainer import train

    init_ray(args.address, args.num_cpus)
    history = train(cfg, overwrite=args.overwrite)
    print(f"best epoch {history['best_epoch']} of {len(history['epochs'])}: "
          f"val Acc@0.5 {history['best_acc']:.4f}")
    for split, summary in history["test"].items():
        per_type = " ".join(f"{k}={v:.3f}" for k, v in summary["per_type"].items())
        print(f"held-out {split} Acc@0.5 = {summary['acc']:.4f} over {summary['total']} samples {per_type}")
    print(f"outputs: {history['run_dir']}")
    return 0
