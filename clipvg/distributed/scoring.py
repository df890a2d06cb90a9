"""Reliability scoring as Ray Data batch inference (method doc §5): one measurer, many samples.

Pipeline (:func:`score_samples`)::

    plan_split(samples=...)          driver: the rows to score, texts tokenized once
      -> build_dataset               tasks: each image fetched + decoded once, one uint8 eval
                                     canvas per image with a slot per expression
      -> map_batches(Scorer)         an actor pool of ``curriculum.scoring.actors`` measurer
                                     replicas (model loaded once per actor; CPU threads, or a
                                     GPU with bf16 autocast): canvas rows -> score rows
      -> driver                      every sample exactly once (or raise), SCORES_SCHEMA table,
                                     written to ``out_uri``

The actor-pool part is :mod:`clipvg.distributed.inference`, shared with ``clipvg evaluate``.

Reliability and the pixel boxes are computed by :class:`clipvg.engine.reliability.ReliabilityScorer`
(see its module for the conventions). Samples whose image cannot be read, or whose box or text is
invalid, get a row with ``reliability`` null and ``error`` set: they are never dropped.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clipvg.config import Config
from clipvg.curriculum.selection import SCORES_SCHEMA
from clipvg.data import storage
from clipvg.data.fanout import FanOutSpec
from clipvg.distributed.inference import (ExactlyOnceError, Scorer, align, check_exactly_once,  # noqa: F401
                                          check_model, collect, image_sizes, infer)

SCORING_SPLIT = "<scoring>"  # the plan's name for the scored rows (they may span splits)
ScoringError = ExactlyOnceError  # the scored rows do not match the input samples one to one


def scores_table(samples: pa.Table, rows: pa.Table, *, measurer: str, source: str) -> pa.Table:
    """Score rows -> a SCORES_SCHEMA table in the order of ``samples`` (checked one to one)."""
    ids = samples.column("sample_id")
    rows = align(samples, rows)
    n = samples.num_rows
    return pa.table({
        "sample_id": ids, "image_id": samples.column("image_id"),
        "source": pa.array([source] * n, pa.string()), "measurer": pa.array([measurer] * n, pa.string()),
        "reliability": rows.column("reliability"), "pred_box": rows.column("pred_box"),
        "error": rows.column("error"),
    }).cast(SCORES_SCHEMA)


def score_samples(model_dir: str, data_uri: str, samples: pa.Table, *, cfg: Config, measurer: str,
                  source: str, out_uri: str | None = None, progress: bool | None = None,
                  timings: dict | None = None) -> pa.Table:
    """Score every row of ``samples`` (samples schema; images in the dataset at ``data_uri``)
    with the measurer in ``model_dir`` (a model folder, local or on storage) on the Ray cluster
    this process is connected to. Returns the SCORES_SCHEMA table (one row per sample, in
    ``samples`` order) and writes it to ``out_uri`` if given. ``timings``: filled with
    ``first_row_s`` / ``seconds`` of the run (benchmarks)."""
    from clipvg.distributed.streaming import plan_split  # deferred: streaming imports Ray (seconds)

    options = storage.options_from_config(cfg.storage)
    spec = FanOutSpec.from_config(cfg, train=False)
    check_model(model_dir, spec, **options)
    plan = plan_split(data_uri, SCORING_SPLIT, spec, samples=samples, **options)
    rows, took = infer(plan, spec, cfg, model_dir, cfg.curriculum.scoring, progress=progress, **options)
    if timings is not None:
        timings.update(took)
    table = scores_table(plan.samples, rows, measurer=measurer, source=source)
    if out_uri is not None:
        storage.write_table(table, out_uri, **options)
    return table


def summary(scores: pa.Table) -> dict:
    """Counts of a scores table: n, scored, null (unreadable), zero, mean reliability."""
    r = scores.column("reliability").to_numpy(zero_copy_only=False).astype(np.float64)
    ok = np.isfinite(r)
    return {"n": scores.num_rows, "scored": int(ok.sum()), "null": int((~ok).sum()),
            "zero": int((r[ok] == 0).sum()), "mean": float(r[ok].mean()) if ok.any() else None}
