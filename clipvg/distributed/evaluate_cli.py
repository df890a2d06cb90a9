"""``clipvg evaluate``: Acc@0.5 of a checkpoint on named splits of a dataset (Ray Data actor pool).

    clipvg convert-official best_checkpoint.pth models/unc --official-config config.json
    clipvg import-official --dataset unc --split-root data/full_sup_data --image-root data/image_data \\
        --splits val,testA,testB --out datasets/unc
    clipvg evaluate --checkpoint models/unc --data datasets/unc --splits val,testA,testB \\
        --out evals/unc [--actors 2] [--gpus-per-actor 1] [--overwrite]

``--checkpoint`` is a model folder (``model.safetensors`` + ``model_config.json``; a run folder
means its ``best/``), ``--data`` a clipvg dataset (``import-official`` makes one from official
split files), both local or on object storage (``--endpoint-url`` / ``storage.*`` overrides).
The checkpoint fixes the canvas size and context length; the preprocessing switches
(``data.augment.normalize``, ``data.box_int_truncation``) default to the official ones. Writes
under ``--out``: ``predictions/`` (Parquet), ``metrics.json``, ``metrics.md`` and ``worst.png``
(see :mod:`clipvg.distributed.evaluate`); refuses an ``--out`` holding results unless
``--overwrite``. The pool: ``curriculum.scoring.*`` (actors, cpus/gpus per actor, batch size).
"""

from __future__ import annotations

import argparse
import dataclasses

from clipvg.config import load_config
from clipvg.distributed import evaluate
from clipvg.distributed.local_ray import add_ray_arguments, init_ray
from clipvg.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="model folder (model.safetensors + model_config.json) or a run folder "
                             "with best/; local or a storage URI")
    parser.add_argument("--data", default=None, help="clipvg dataset URI (default: the config's data.uri)")
    parser.add_argument("--splits", required=True, help="comma-separated splits, e.g. val,testA,testB")
    parser.add_argument("--out", required=True, help="output folder URI (predictions, metrics, gallery)")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    parser.add_argument("--config", help="YAML run config (default: built-in defaults)")
    parser.add_argument("--endpoint-url", default=None,
                        help="S3-compatible endpoint for every URI (= storage.endpoint_url)")
    parser.add_argument("--actors", type=int, default=None,
                        help="model replicas (= curriculum.scoring.actors)")
    parser.add_argument("--gpus-per-actor", type=float, default=None,
                        help="GPUs per replica, e.g. 1 or 0.5 (= curriculum.scoring.gpus_per_actor)")
    parser.add_argument("--gallery", type=int, default=12,
                        help="how many of the worst predictions worst.png draws (0: none)")

    add_ray_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.precision=fp32")


def load(args) -> tuple:
    """(config, data URI, splits) of the arguments; UserError for what is missing."""
    overrides = list(args.overrides)
    if args.endpoint_url:
        overrides.append(f"storage.endpoint_url={args.endpoint_url}")
    cfg = load_config(args.config, overrides)
    pool = cfg.curriculum.scoring
    if args.actors is not None:
        pool = dataclasses.replace(pool, actors=args.actors)
    if args.gpus_per_actor is not None:
        pool = dataclasses.replace(pool, gpus_per_actor=args.gpus_per_actor)
    if pool.actors < 1:
        raise UserError(f"--actors / curriculum.scoring.actors must be >= 1, got {pool.actors}")
    cfg = dataclasses.replace(cfg, curriculum=dataclasses.replace(cfg.curriculum, scoring=pool))
    data = args.data or cfg.data.uri
    if data is None:
        raise UserError("give --data URI (a clipvg dataset; clipvg import-official makes one)")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    return cfg, data, splits


def run(args) -> int:
    cfg, data, splits = load(args)
    job = evaluate.prepare(args.checkpoint, data, splits, args.out, cfg, overwrite=args.overwrite)
    pool = job.cfg.curriculum.scoring
    print(f"evaluating {job.checkpoint} on {job.rows} samples of {data} ({', '.join(splits)}) "
          f"with {pool.actors} replica(s)", flush=True)
    init_ray(args.address, args.num_cpus)
    result = evaluate.run(job, gallery=args.gallery)
    for split, s in {**result["splits"], "all": result["overall"]}.items():
        acc = "n/a" if s["acc"] is None else f"{s['acc']:.4f}"
        shuffled = s["shuffled_text"]["acc"]
        print(f"{split}: Acc@0.5 {acc} over {s['total']} of {s['rows']} samples (shuffled text "
              f"{'n/a' if shuffled is None else f'{shuffled:.4f}'})")
    for split, s in result["splits"].items():
        if s["failed"]:
            first = s["failed_samples"][0]
            print(f"{split}: {s['failed']} sample(s) could not be evaluated, e.g. {first['sample_id']} "
                  f"({first['error']}); all listed in metrics.json")
    print(f"outputs: {args.out} (metrics.json, metrics.md, predictions/, worst.png)")
    return 0

