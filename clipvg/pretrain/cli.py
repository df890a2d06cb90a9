"""``clipvg pretrain-towers``: pre-train tiny CLIP towers on fresh synthetic scenes.

The towers are those of ``model.arch`` in the given run config (the demo's by default); the
result is an open_clip CLIP weights file that the run config then names in ``model.weights``,
exactly as a cluster run names a downloaded CLIP checkpoint. Besides the weights the output
folder gets ``MODEL_CARD.md`` (command, seed, curve), ``curve.png``, ``metrics.jsonl`` and
``pretrain.json``. An ``--out`` that holds any of them is refused (before training) unless
``--overwrite``.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

import torch

from clipvg.config import load_config
from clipvg.data import storage
from clipvg.pretrain.loop import WEIGHTS_FILE, PretrainConfig, pretrain_towers
from clipvg.pretrain.report import write_model_card

DEFAULTS = PretrainConfig()
OUTPUTS = (WEIGHTS_FILE, "metrics.jsonl", "pretrain.json", "MODEL_CARD.md", "curve.png")


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="demo",
                        help="run config whose model.arch / image_size / normalisation to use")
    parser.add_argument("--out", required=True, help="output folder for the weights and the card")
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps)
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr)
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed,
                        help="scene stream seed (keep it away from the worlds' seeds)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); the committed towers "
                             "record theirs in MODEL_CARD.md")
    parser.add_argument("--eval-every", type=int, default=DEFAULTS.eval_every)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the towers, card and curve already in --out (default: refuse)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the run config")


def reproduce_command(args) -> str:
    """The full command line of this run, every setting spelled out (for the model card)."""
    parts = ["clipvg", "pretrain-towers", "--config", args.config, "--out", args.out,
             "--steps", args.steps, "--batch-size", args.batch_size, "--lr", args.lr,
             "--seed", args.seed, "--eval-every", args.eval_every]
    if args.threads:
        parts += ["--threads", args.threads]
    if args.overwrite:
        parts += ["--overwrite"]
    return " ".join(shlex.quote(str(p)) for p in parts + list(args.overrides))


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    storage.refuse_existing(args.out, OUTPUTS, overwrite=args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_cfg = load_config(args.config, args.overrides)
    # Always from random init: the config's own model.weights (these towers) are ignored.
    try:
        cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             eval_every=args.eval_every, normalize=run_cfg.data.augment.normalize)
    except ValueError as err:
        print(f"clipvg pretrain-towers: {err}", file=sys.stderr)
        return 2
    summary = pretrain_towers(cfg, run_cfg.model, args.out)
    command = reproduce_command(args)
    card = write_model_card(Path(args.out), summary, command)
    probe = summary["final_probe"]
    print(f"towers: {Path(args.out) / 'open_clip_model.safetensors'} ({summary['elapsed_s']:.0f} s); "
          f"probe phrase top-1 {probe['phrase_top1']:.3f}, colour {probe['color_acc']:.3f}, "
          f"shape {probe['shape_acc']:.3f}, box L1 {probe['box']:.4f}\ncard: {card}")
    return 0
