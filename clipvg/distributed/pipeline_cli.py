"""``clipvg pipeline``: the command line of :mod:`clipvg.distributed.pipeline`.

The config is loaded and the hub weights of ``model.pretrained`` checked
(:func:`clipvg.model.hub.ensure_pretrained`) before the pipeline is imported (it loads pyarrow,
pandas, the curriculum and Ray Tune's side, seconds on a loaded machine) and before Ray starts:
bad input is answered first, in about a second. :func:`clipvg.distributed.pipeline.run_pipeline` then
does the rest; this module owns the arguments.
"""

from __future__ import annotations

import argparse
import logging

from clipvg.distributed.local_ray import add_ray_arguments, joins_cluster
from clipvg.model.hub import load_checked_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML run config (make demo: configs/demo.yaml)")

    add_ray_arguments(parser)
    parser.add_argument("--until", default=None, metavar="STAGE",
                        help="stop after this stage (e.g. scores:template); a later run without it continues")
    parser.add_argument("--overwrite", action="store_true",
                        help="rerun stages that finished earlier with other settings (default: refuse)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.seed=7 storage.root=/tmp/run")


def run(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("clipvg").setLevel(logging.INFO)  # not botocore's "Found credentials..."
    # hub weights: cached, fetched once for this machine's workers, or one line now (before Ray)
    cfg = load_checked_config(args.config, args.overrides, launcher="pipeline",
                              fetch=not joins_cluster(args.address))
    # deferred: the pipeline loads pyarrow, pandas and the curriculum (seconds); checks come first
    from clipvg.distributed import pipeline

    return pipeline.run_pipeline(cfg, args)
