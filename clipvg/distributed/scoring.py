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

Reliability and the pixel boxes are computed by :class:`clipvg.engine.reliability.ReliabilityScorer`
(see its module for the conventions). Samples whose image cannot be read, or whose box or text is
invalid, get a row with ``reliability`` null and ``error`` set: they are never dropped.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipvg.config import Config
from clipvg.curriculum.selection import SCORES_SCHEMA
from clipvg.data import storage
from clipvg.data.fanout import FanOutSpec
from clipvg.engine.reliability import SCORE_ROWS, ReliabilityScorer

SCORING_SPLIT = "<scoring>"  # the plan's name for the scored rows (they may span splits)


class ScoringError(RuntimeError):
    """The scored rows do not match the input samples one to one."""


class Scorer(ReliabilityScorer):
    """The Ray Data actor class: one measurer replica per actor (see ReliabilityScorer)."""


def check_model(model_dir: str, spec: FanOutSpec, **storage_options: Any) -> dict:
    """The measurer's ``model_config.json``; raises ValueError when its canvas size or context
    length differ from what the config preprocesses for (the measurer defines both)."""
    from clipvg.model.convert import CONFIG_FILE

    uri = storage.join(model_dir, CONFIG_FILE)
    try:
        model = storage.read_json(uri, **storage_options)
    except FileNotFoundError:
        raise ValueError(f"{model_dir} is not a clipvg model folder: no {CONFIG_FILE}") from None
    got = (model.get("image_size"), model.get("context_length"))
    if got != (spec.size, spec.context_length):
        raise ValueError(f"the measurer at {model_dir} has (image_size, context_length) = {got}, "
                         f"the config gives {(spec.size, spec.context_length)}: set model.image_size "
                         f"and model.context_length to the measurer's")
    return model


def image_sizes(root: str, image_ids: list[str], **storage_options: Any) -> dict[str, tuple[int, int]]:
    """image_id -> (W, H) from the dataset's images table, for the given images only."""
    table = storage.read_table(storage.join(root, "images"), columns=["image_id", "width", "height"],
                               filter=pc.field("image_id").isin(pa.array(image_ids, pa.string())),
                               **storage_options)
    return {i: (w, h) for i, w, h in zip(*(table.column(c).to_pylist()
                                             for c in ("image_id", "width", "height")))}


def scoring_dataset(plan, spec: FanOutSpec, cfg: Config, model_dir: str, **storage_options: Any):
    """The Ray Dataset of score rows (:data:`~clipvg.engine.reliability.SCORE_ROWS`) of ``plan``."""
    import ray.data

    from clipvg.distributed.streaming import build_dataset, task_resources

    sc = cfg.curriculum.scoring
    # a block = at most one scorer batch of canvases, and >= 4 blocks per actor on small inputs
    per_block = max(1, min(sc.batch_size, math.ceil(plan.num_images / (4 * sc.actors))))
    canvases = build_dataset(plan, spec, int_truncation=cfg.data.box_int_truncation,
                             num_cpus=cfg.scaling.data_cpus, resources=cfg.scaling.data_resources,
                             groups_per_block=per_block)
    ids = plan.samples.column("image_id").to_pylist()
    kwargs = dict(model=model_dir, sample_ids=plan.index().sample_ids,
                  image_sizes=image_sizes(plan.root, list(dict.fromkeys(ids)), **storage_options),
                  size=spec.size, normalize=cfg.data.augment.normalize, batch_size=sc.batch_size,
                  device="cuda" if sc.gpus_per_actor > 0 else "cpu", precision=cfg.train.precision,
                  threads=sc.threads_per_actor, storage_options=storage_options,
                  autocast=bool(getattr(sc, "full_bf16", False)))  # opt-in, see ReliabilityScorer
    return canvases.map_batches(
        Scorer, fn_constructor_kwargs=kwargs, compute=ray.data.ActorPoolStrategy(size=sc.actors),
        num_cpus=sc.cpus_per_actor, num_gpus=sc.gpus_per_actor or None, batch_size=sc.batch_size,
        batch_format="numpy", zero_copy_batch=True, **task_resources(cfg.scaling.model_resources))


def collect(ds, total: int, progress: bool | None = None) -> tuple[pa.Table, dict]:
    """All score rows of ``ds`` on the driver, and timings: ``seconds`` in all, ``first_row_s``
    until the first rows arrived and ``first_rows`` (how many came with them).
    ``progress``: a tqdm bar over ``total`` samples (None: when stderr is a terminal)."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    parts, start, first = [], time.perf_counter(), None
    with tqdm(total=total, unit="sample", desc="scoring", disable=not show) as bar:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if first is None and block.num_rows:
                first = {"first_row_s": time.perf_counter() - start, "first_rows": block.num_rows}
            parts.append(block)
            bar.update(block.num_rows)
    rows = pa.concat_tables([p.cast(SCORE_ROWS) for p in parts]) if parts else SCORE_ROWS.empty_table()
    return rows, {**(first or {"first_row_s": None, "first_rows": 0}), "seconds": time.perf_counter() - start}


def check_exactly_once(expected: list[str], got: list[str]) -> None:
    """Raise :class:`ScoringError` naming the first sample_id that is missing or repeated in
    ``got``, or the first unexpected one."""
    want = set(expected)
    seen: set[str] = set()
    for sid in got:
        if sid in seen:
            raise ScoringError(f"sample {sid!r} was scored more than once ({len(got)} rows for "
                               f"{len(expected)} samples)")
        if sid not in want:
            raise ScoringError(f"sample {sid!r} was scored but is not among the input samples")
        seen.add(sid)
    for sid in expected:
        if sid not in seen:
            raise ScoringError(f"sample {sid!r} got no score row ({len(got)} rows for "
                               f"{len(expected)} samples)")


def scores_table(samples: pa.Table, rows: pa.Table, *, measurer: str, source: str) -> pa.Table:
    """Score rows -> a SCORES_SCHEMA table in the order of ``samples`` (checked one to one)."""
    ids = samples.column("sample_id")
    check_exactly_once(ids.to_pylist(), rows.column("sample_id").to_pylist())
    rows = rows.take(pc.index_in(ids, value_set=rows.column("sample_id")))
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
    from clipvg.distributed.streaming import plan_split

    options = storage.options_from_config(cfg.storage)
    spec = FanOutSpec.from_config(cfg, train=False)
    check_model(model_dir, spec, **options)
    plan = plan_split(data_uri, SCORING_SPLIT, spec, samples=samples, **options)
    ds = scoring_dataset(plan, spec, cfg, model_dir, **options)
    rows, took = collect(ds, plan.num_samples, progress)
    if timings is not None:
        timings.update(took, samples=plan.num_samples)
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
