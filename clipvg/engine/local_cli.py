"""``clipvg train-local``: the command line of :mod:`clipvg.engine.local`.

The config is loaded and the hub weights of ``model.pretrained`` checked
(:func:`clipvg.model.hub.ensure_pretrained`) before the training loop is imported: that loop
loads torch and open_clip (15-25 s on a small machine), and bad input is answered first.
"""

from __future__ import annotations

import logging

from clipvg.model.hub import load_checked_config


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML run config (default: built-in defaults)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results already under storage.root/storage.run_name "
                             "(default: refuse; train.resume=true continues them)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")


def run(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("clipvg").setLevel(logging.INFO)  # not botocore's "Found credentials..."
    cfg = load_checked_config(args.config, args.overrides, launcher="train-local")
    # deferred: the loop loads torch and open_clip (15-25 s); the checks above answer first
    from clipvg.engine.control import fmt_acc
    from clipvg.engine.local import fmt_types, train_local

    history = train_local(cfg, overwrite=args.overwrite)
    for split, summary in history.test.items():
        print(f"held-out {split} Acc@0.5 = {summary['acc']:.4f} over {summary['total']} samples "
              f"(best epoch {history.best_epoch}) {fmt_types(summary['per_type'])}; "
              f"shuffled text {fmt_acc(summary['shuffled_text']['acc'])}")
    print(f"outputs: {history.run_dir}")
    return 0
