"""``clipvg score``: reliability of a pseudo-label source under one measurer (Ray Data).

    clipvg score --config configs/demo.yaml --model runs/template/best \\
        --samples runs/pseudo/template --out runs/scores/template-by-template

``--samples`` is a samples table (Parquet folder) whose images are in the config's dataset
(``data.uri``, default the synthetic world); ``--model`` a model folder (a run's ``best/``),
local or on object storage. Writes the scores table (one row per sample, see
:mod:`clipvg.curriculum.selection`) to ``--out`` with ``histogram.json`` and ``histogram.png``
in the same folder, and prints the counts and the subset sizes at ``curriculum.thresholds``.
Replicas: ``curriculum.scoring.actors`` (CPUs / GPUs / threads per actor next to it).
Every URI goes through the run's ``storage.*`` (``storage.endpoint_url`` etc.). An existing
``--out`` is refused (before Ray starts) unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import posixpath

from clipvg.config import load_config
from clipvg.curriculum.selection import subset_sizes
from clipvg.data import storage
from clipvg.distributed.local_ray import add_ray_arguments, init_ray


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (default: built-in defaults)")
    parser.add_argument("--model", required=True, help="measurer model folder (model.safetensors + "
                                                       "model_config.json), local or a storage URI")
    parser.add_argument("--samples", required=True, help="samples table to score (Parquet folder URI)")
    parser.add_argument("--out", required=True, help="where the scores table goes (Parquet folder URI)")
    parser.add_argument("--measurer", default=None,
                        help="measurer name in the table (default: the model folder's name, or its "
                             "parent's for a 'best' folder)")
    parser.add_argument("--source", default=None,
                        help="source name in the table (default: the samples' source column when it "
                             "holds one value, else the samples folder's name)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out (default: refuse)")

    add_ray_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. curriculum.scoring.actors=2")


def default_measurer(model_dir: str) -> str:
    """``runs/template/best`` -> "template"; ``models/m1`` -> "m1"."""
    parts = [p for p in model_dir.rstrip("/").split("/") if p]
    name = parts[-1] if parts else model_dir
    return parts[-2] if name == "best" and len(parts) > 1 else name


def default_source(samples, samples_uri: str) -> str:
    values = set(samples.column("source").to_pylist()) if "source" in samples.column_names else set()
    return values.pop() if len(values) == 1 else posixpath.basename(samples_uri.rstrip("/"))


def run(args) -> int:
    cfg = load_config(args.config, args.overrides)
    options = storage.options_from_config(cfg.storage)
    # every URI of the command, and an existing --out, before any work (a wrong endpoint fails at
    # once, naming it; a refusal comes before torch, the dataset and Ray)
    storage.check_access(args.model, args.samples, args.out, cfg.storage.root, cfg.data.uri, **options)
    storage.refuse_existing(args.out, overwrite=args.overwrite, **options)
    # deferred: loads matplotlib and torch; the checks above answer first
    from clipvg.curriculum.plots import score_histograms
    from clipvg.distributed.scoring import score_samples, summary
    from clipvg.engine.batching import ensure_dataset

    data_uri = ensure_dataset(cfg)
    samples = storage.read_table(args.samples, **options)
    measurer = args.measurer or default_measurer(args.model)
    source = args.source or default_source(samples, args.samples)
    init_ray(args.address, args.num_cpus)
    print(f"scoring {samples.num_rows} samples of {source!r} with measurer {measurer!r} "
          f"({cfg.curriculum.scoring.actors} replica(s))", flush=True)
    scores = score_samples(args.model, data_uri, samples, cfg=cfg, measurer=measurer, source=source,
                           out_uri=args.out)
    counts = summary(scores)
    hist = score_histograms(scores, args.out, cfg.curriculum.histogram_bins,
                            title=f"measurer {measurer} on source {source}", **options)
    mean = f"{counts['mean']:.4f}" if counts["mean"] is not None else "n/a"
    print(f"{counts['n']} samples: {counts['scored']} scored, {counts['null']} unreadable, "
          f"{counts['zero']} with r = 0; mean reliability {mean}")
    print(f"scores: {args.out}\nhistogram: {hist['png']}")
    sizes = subset_sizes(scores, cfg.curriculum.thresholds)
    print("subset sizes (r > h): " + ", ".join(f"{h:g}: {n}" for h, n in sizes.items()))
    return 0
