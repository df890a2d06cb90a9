"""Batch inference on Ray Data over an actor pool of model replicas: what ``clipvg score``
(:mod:`clipvg.distributed.scoring`) and ``clipvg evaluate`` (:mod:`clipvg.distributed.evaluate`)
share.

Pipeline (:func:`infer`)::

    StreamPlan                       driver: the rows to run, texts tokenized once
      -> build_dataset               tasks: each image fetched + decoded once, one uint8 eval
                                     canvas per image with a slot per expression
      -> map_batches(Scorer)         an actor pool of ``pool.actors`` replicas (model loaded once
                                     per actor; CPU threads, or a GPU with bf16 autocast of the
                                     towers): canvas rows -> score rows
      -> driver                      every row of the plan exactly once (or raise), in plan order

Score rows are :data:`~clipvg.engine.reliability.SCORE_ROWS`: ``sample_id``, ``reliability``
(the official evaluation IoU between the model's box and the row's box, both on the
letterboxed S x S canvas; float32 in [0, 1]), ``pred_box`` (``x0, y0, x1, y1`` in pixels of the
original image) and ``error``. A row whose image cannot be read (or whose box / text is invalid)
gets ``reliability`` and ``pred_box`` null and ``error`` set: it is never dropped.

``pool`` is a :class:`clipvg.config.ScoringConfig` (``actors``, ``cpus_per_actor``,
``gpus_per_actor``, ``batch_size``, ``threads_per_actor``); both commands read it from
``curriculum.scoring``.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from clipvg.config import Config, ScoringConfig
from clipvg.data import storage
from clipvg.data.fanout import FanOutSpec
from clipvg.engine.reliability import SCORE_ROWS, ReliabilityScorer
from clipvg.model.io import CONFIG_FILE, load_model_at


class ExactlyOnceError(RuntimeError):
    """The rows that came back do not match the input rows one to one."""


class Scorer(ReliabilityScorer):
    """The Ray Data actor class: one model replica per actor (see ReliabilityScorer)."""


def read_model_config(model_dir: str, **storage_options: Any) -> dict:
    """``model_config.json`` of a model folder (local or on storage); FileNotFoundError naming
    the folder when it is not one."""
    try:
        return storage.read_json(storage.join(model_dir, CONFIG_FILE), **storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(f"{model_dir} is not a clipvg model folder: no {CONFIG_FILE}") from None


def check_weights_fit(model_dir: str, **storage_options: Any) -> None:
    """Load the model folder once on the driver, so weights that do not fit
    ``model_config.json`` - or a truncated or foreign weights file - end in one
    :class:`~clipvg.model.io.ConversionError` naming the file before Ray starts, instead of a
    traceback from every actor of the pool."""
    load_model_at(model_dir, **storage_options)


def check_model(model_dir: str, spec: FanOutSpec, **storage_options: Any) -> dict:
    """The model's ``model_config.json``; raises ValueError when its canvas size or context
    length differ from what the config preprocesses for (the model defines both)."""
    try:
        model = read_model_config(model_dir, **storage_options)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
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


def model_dataset(plan, spec: FanOutSpec, cfg: Config, model_dir: str, pool: ScoringConfig,
                  **storage_options: Any):
    """The Ray Dataset of score rows of ``plan`` (lazy; consume it with :func:`collect`)."""
    # deferred: loads Ray; paid only when this runs, not on import
    import ray.data

    # deferred: loads Ray; paid only when this runs, not on import
    from clipvg.distributed.streaming import build_dataset, task_resources

    # a block = at most one replica batch of canvases, and >= 4 blocks per actor on small inputs
    per_block = max(1, min(pool.batch_size, math.ceil(plan.num_images / (4 * pool.actors))))
    canvases = build_dataset(plan, spec, int_truncation=cfg.data.box_int_truncation,
                             num_cpus=cfg.scaling.data_cpus, resources=cfg.scaling.data_resources,
                             groups_per_block=per_block)
    ids = plan.samples.column("image_id").to_pylist()
    kwargs = dict(model=model_dir, sample_ids=plan.index().sample_ids,
                  image_sizes=image_sizes(plan.root, list(dict.fromkeys(ids)), **storage_options),
                  size=spec.size, normalize=cfg.data.augment.normalize, batch_size=pool.batch_size,
                  device="cuda" if pool.gpus_per_actor > 0 else "cpu", precision=cfg.train.precision,
                  threads=pool.threads_per_actor, storage_options=storage_options,
                  autocast=pool.full_bf16, compile=pool.compile)  # opt-in, see ReliabilityScorer
    return canvases.map_batches(
        Scorer, fn_constructor_kwargs=kwargs, compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_cpus=pool.cpus_per_actor, num_gpus=pool.gpus_per_actor or None, batch_size=pool.batch_size,
        batch_format="numpy", zero_copy_batch=True, **task_resources(cfg.scaling.model_resources))


def collect(ds, total: int, progress: bool | None = None, desc: str = "scoring") -> tuple[pa.Table, dict]:
    """All score rows of ``ds`` on the driver, and timings: ``seconds`` in all, ``first_row_s``
    until the first rows arrived and ``first_rows`` (how many came with them).
    ``progress``: a tqdm bar over ``total`` rows (None: when stderr is a terminal)."""
    show = sys.stderr.isatty() if progress is None else progress
    parts, start, first = [], time.perf_counter(), None
    with tqdm(total=total, unit="sample", desc=desc, disable=not show) as bar:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if first is None and block.num_rows:
                first = {"first_row_s": time.perf_counter() - start, "first_rows": block.num_rows}
            parts.append(block)
            bar.update(block.num_rows)
    rows = pa.concat_tables([p.cast(SCORE_ROWS) for p in parts]) if parts else SCORE_ROWS.empty_table()
    return rows, {**(first or {"first_row_s": None, "first_rows": 0}), "seconds": time.perf_counter() - start}


def check_exactly_once(expected: list[str], got: list[str]) -> None:
    """Raise :class:`ExactlyOnceError` naming the first sample_id that is missing or repeated
    in ``got``, or the first unexpected one."""
    want = set(expected)
    seen: set[str] = set()
    for sid in got:
        if sid in seen:
            raise ExactlyOnceError(f"sample {sid!r} was scored more than once ({len(got)} rows for "
                                   f"{len(expected)} samples)")
        if sid not in want:
            raise ExactlyOnceError(f"sample {sid!r} was scored but is not among the input samples")
        seen.add(sid)
    for sid in expected:
        if sid not in seen:
            raise ExactlyOnceError(f"sample {sid!r} got no score row ({len(got)} rows for "
                                   f"{len(expected)} samples)")


def align(samples: pa.Table, rows: pa.Table) -> pa.Table:
    """``rows`` (score rows) in the order of ``samples``' ``sample_id``, checked one to one."""
    ids = samples.column("sample_id")
    check_exactly_once(ids.to_pylist(), rows.column("sample_id").to_pylist())
    return rows.take(pc.index_in(ids, value_set=rows.column("sample_id")))


def infer(plan, spec: FanOutSpec, cfg: Config, model_dir: str, pool: ScoringConfig, *,
          progress: bool | None = None, desc: str = "scoring",
          **storage_options: Any) -> tuple[pa.Table, dict]:
    """Run the model in ``model_dir`` over every row of ``plan`` on the Ray cluster this process
    is connected to. Returns the score rows in ``plan.samples`` order (one per row, checked)
    and the timings of :func:`collect` (plus ``samples``)."""
    ds = model_dataset(plan, spec, cfg, model_dir, pool, **storage_options)
    rows, took = collect(ds, plan.num_samples, progress, desc)
    return align(plan.samples, rows), {**took, "samples": plan.num_samples}
