"""``clipvg evaluate``: a checkpoint's official Acc@0.5 on named splits, as Ray Data batch
inference over an actor pool of model replicas (:mod:`clipvg.distributed.inference`, the
machinery ``clipvg score`` uses).

One pass for all splits (the actor pool starts once)::

    prepare()   driver, no Ray: --out free (or --overwrite), the checkpoint is a model folder,
                the dataset is complete and holds every split; the rows of the splits, in split
                order then table order, plus one control row per row (below)
    run()       one StreamPlan of all those rows -> canvases (each image decoded once) ->
                Scorer actors -> every row exactly once -> predictions table, metrics.json,
                metrics.md, worst.png under --out (metrics.json last: it marks a complete result)

Conventions. ``box`` and ``pred_box`` are ``x0, y0, x1, y1`` in pixels of the original image
(``pred_box``: the prediction clamped to the canvas, mapped back through the letterbox, clamped
to the image). ``iou`` is the official evaluation IoU, computed on the letterboxed S x S canvas
against the box the official loader uses (``box_trunc`` with ``data.box_int_truncation``, the
default); ``correct`` is ``iou >= 0.5``. A row that cannot be evaluated (unreadable image, invalid
box or text) keeps its row with ``iou`` / ``pred_box`` / ``correct`` null and ``error`` set: it
counts in ``rows`` and ``failed`` (listed by id in metrics.json), not in ``acc``.

The shuffled-text control (:mod:`clipvg.engine.control`) runs in the same pass: before
streaming, every row is given a text of another image of its split with
:func:`~clipvg.engine.control.foreign_text_assignment`, drawn chunk by chunk in table order
(``train.eval_batch_size`` rows a chunk, the previous chunk carried, ``random.Random(0)``) exactly
as ``engine.steps.evaluate(..., shuffled_text=True)`` draws them over a loader of the split in
table order, so the two controls agree row for row. Each such pair (image, box, foreign text) is
one more row of the plan (``sample_id + CONTROL_TAG``); its IoU goes to ``shuffled_text_iou``.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipvg.config import Config
from clipvg.data import storage
from clipvg.data.schema import BOX_TYPE
from clipvg.distributed.evaluate_report import write_outputs
from clipvg.errors import UserError

CONTROL_TAG = "#shuffled-text"  # sample_id suffix of a control row
CONTROL_SEED = 0  # engine.steps.evaluate's default seed
OUTPUTS = ("metrics.json", "metrics.md", "worst.png", "predictions")  # what --out receives
EVAL_SPLIT = "<evaluate>"  # the plan's name for the rows (they span splits)

PREDICTIONS_SCHEMA = pa.schema([
    pa.field("split", pa.string(), nullable=False),
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("expr_type", pa.string()),  # "unknown" where the dataset has none
    pa.field("text", pa.string()),
    pa.field("box", BOX_TYPE),  # the samples table's box (x0, y0, x1, y1 pixels)
    pa.field("pred_box", BOX_TYPE),  # null when the row failed
    pa.field("iou", pa.float32()),  # official evaluation IoU; null when the row failed
    pa.field("correct", pa.bool_()),  # iou >= 0.5; null when the row failed
    pa.field("error", pa.string()),  # why the row failed; null otherwise
    pa.field("shuffled_text_from", pa.string()),  # sample whose text the control showed
    pa.field("shuffled_text_iou", pa.float32()),  # null: no foreign text, or that row failed
])


@dataclass
class EvalJob:
    """What :func:`prepare` checked and read; :func:`run` executes it."""

    checkpoint: str  # the model folder
    model_config: dict
    data_uri: str
    splits: list[str]
    out_uri: str
    cfg: Config  # model.image_size / context_length set to the checkpoint's
    samples: pa.Table  # the splits' rows, then the control rows
    rows: int  # how many of ``samples`` are the splits' own rows
    foreign: list[int | None]  # per own row: the row whose text the control shows
    overwrite: bool = False

    @property
    def options(self) -> dict:
        return storage.options_from_config(self.cfg.storage)


def check_out(out_uri: str, overwrite: bool, **storage_options: Any) -> list[str]:
    """Our outputs already in ``out_uri``; UserError if any is there without ``overwrite``."""
    found = [n for n in OUTPUTS if storage.exists(storage.join(out_uri, n), **storage_options)]
    if found and not overwrite:
        raise UserError(f"--out {out_uri} already holds evaluation results ({', '.join(found)}): "
                        f"pass --overwrite to replace them, or choose another --out")
    return found


def resolve_checkpoint(checkpoint: str, **storage_options: Any) -> tuple[str, dict]:
    """(model folder, its model_config.json): ``checkpoint`` itself, or a run's ``best/``."""
    # deferred: loads torch; paid only when this runs, not on import
    from clipvg.distributed.inference import read_model_config

    if checkpoint.endswith((".pth", ".pt")):
        raise UserError(f"--checkpoint {checkpoint}: an official checkpoint file; convert it first "
                        f"(clipvg convert-official {checkpoint} MODEL_DIR) and pass MODEL_DIR")
    # deferred: loads torch; paid only when this runs, not on import
    from clipvg.model.io import WEIGHTS_FILE

    for folder in (checkpoint, storage.join(checkpoint, "best")):
        try:
            config = read_model_config(folder, **storage_options)
        except FileNotFoundError:
            continue
        except ValueError as e:  # not JSON
            raise UserError(f"--checkpoint {folder}: model_config.json is not JSON: {e}") from None
        if not storage.exists(storage.join(folder, WEIGHTS_FILE), **storage_options):
            raise UserError(f"--checkpoint {folder}: {WEIGHTS_FILE} is missing next to model_config.json")
        return folder, config
    raise UserError(f"--checkpoint {checkpoint}: not a clipvg model folder (no model_config.json "
                    f"there or in best/); convert an official checkpoint with clipvg convert-official")


def read_splits(data_uri: str, splits: list[str], **storage_options: Any) -> pa.Table:
    """The rows of ``splits`` (split order, then table order) of the dataset at ``data_uri``."""
    if not splits or len(set(splits)) != len(splits):
        raise UserError(f"--splits {','.join(splits)}: give each split once, e.g. val,testA,testB")
    if not storage.exists(storage.join(data_uri, "manifest.json"), **storage_options):
        hint = ("it is not a clipvg dataset (official split files? clipvg import-official "
                "--split-root ... --out DATASET)")
        if storage.exists(storage.join(data_uri, "samples"), **storage_options):
            hint = "the dataset is incomplete (its writer did not finish) or unvalidated (clipvg validate)"
        raise UserError(f"--data {data_uri}: no manifest.json: {hint}")
    where = storage.join(data_uri, "samples")
    wanted = pc.field("split").isin(pa.array(splits, pa.string()))
    table = storage.read_table(where, filter=wanted, **storage_options)
    parts = [table.filter(pc.field("split") == s) for s in splits]
    missing = [s for s, p in zip(splits, parts) if p.num_rows == 0]
    if missing:
        found = storage.read_table(where, columns=["split"], **storage_options).column("split")
        raise UserError(f"--data {data_uri}: split {missing[0]!r} has no samples in {where} "
                        f"(splits there: {', '.join(sorted(pc.unique(found).to_pylist()))})")
    return pa.concat_tables(parts)


def foreign_texts(image_ids: list[str], chunk: int, seed: int = CONTROL_SEED) -> list[int | None]:
    """Per row, the row whose text the shuffled-text control shows it (None: no text of another
    image). Rows are taken ``chunk`` at a time in order, each chunk drawing from itself plus the
    previous chunk, as :class:`~clipvg.engine.control.TextShuffler` does batch by batch."""
    # deferred: loads torch; paid only when this runs, not on import
    from clipvg.engine.control import foreign_text_assignment

    rng, out, previous = random.Random(seed), [], range(0)
    for start in range(0, len(image_ids), chunk):
        rows = range(start, min(start + chunk, len(image_ids)))
        picks = foreign_text_assignment([image_ids[i] for i in rows],
                                        [image_ids[i] for i in previous], rng)
        pool = [*rows, *previous]
        out += [None if j is None else pool[j] for j in picks]
        previous = rows
    return out


def _with_column(table: pa.Table, name: str, values) -> pa.Table:
    """``table`` with column ``name`` replaced by ``values`` (same field: type, nullability)."""
    at = table.schema.get_field_index(name)
    field = table.schema.field(at)
    return table.set_column(at, field, pa.array(values, field.type) if isinstance(values, list) else values)


def with_control_rows(rows: pa.Table, chunk: int) -> tuple[pa.Table, list[int | None]]:
    """``rows`` followed by one control row per row that has a foreign text (split by split),
    and the foreign row of each row. A control row is its row with the foreign row's text."""
    splits, images = rows.column("split").to_pylist(), rows.column("image_id").to_pylist()
    foreign: list[int | None] = []
    for split in dict.fromkeys(splits):  # rows are grouped by split (read_splits)
        at = [i for i, s in enumerate(splits) if s == split]
        foreign += [None if j is None else at[j] for j in foreign_texts([images[i] for i in at], chunk)]
    ids = rows.column("sample_id").to_pylist()
    clash = sorted({f"{i}{CONTROL_TAG}" for i in ids} & set(ids))
    if clash:
        raise UserError(f"sample_id {clash[0]!r} ends in {CONTROL_TAG!r}, the control rows' tag")
    own = [i for i, j in enumerate(foreign) if j is not None]
    control = rows.take(pa.array(own, pa.int64()))
    texts = rows.column("text").take(pa.array([foreign[i] for i in own], pa.int64()))
    control = _with_column(control, "text", texts)
    control = _with_column(control, "sample_id", [f"{ids[i]}{CONTROL_TAG}" for i in own])
    return pa.concat_tables([rows, control]), foreign


def prepare(checkpoint: str, data_uri: str, splits: list[str], out_uri: str, cfg: Config, *,
            overwrite: bool = False) -> EvalJob:
    """Every check that needs no Ray (UserError naming the file / split / key), and the rows."""
    options = storage.options_from_config(cfg.storage)
    check_out(out_uri, overwrite, **options)
    model_dir, model = resolve_checkpoint(checkpoint, **options)
    if not isinstance(model.get("image_size"), int) or not isinstance(model.get("context_length"), int):
        raise UserError(f"--checkpoint {model_dir}: model_config.json lacks image_size / context_length")
    # deferred: loads torch and open_clip (seconds); the checks above answer without them
    from clipvg.distributed.inference import check_weights_fit

    check_weights_fit(model_dir, **options)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, image_size=model["image_size"], context_length=model["context_length"]))
    rows = read_splits(data_uri, splits, **options)
    samples, foreign = with_control_rows(rows, cfg.train.eval_batch_size)
    return EvalJob(model_dir, model, data_uri, list(splits), out_uri, cfg, samples, rows.num_rows,
                   foreign, overwrite)


def predictions(job: EvalJob, scores: pa.Table) -> pa.Table:
    """The PREDICTIONS_SCHEMA table of the splits' rows from the score rows of ``job.samples``
    (in that order: the own rows, then the control rows)."""
    # deferred: loads torch; paid only when this runs, not on import
    from clipvg.engine.metrics import ACC_IOU_THRESHOLD

    n, own = job.rows, job.samples.slice(0, job.rows)
    iou = scores.column("reliability").slice(0, n)
    at = {j: n + k for k, j in enumerate(i for i, f in enumerate(job.foreign) if f is not None)}
    control = scores.column("reliability").take(pa.array([at.get(i) for i in range(n)], pa.int64()))
    ids = own.column("sample_id").to_pylist()
    types = (own.column("expr_type").to_pylist() if "expr_type" in own.column_names else [None] * n)
    return pa.table({
        "split": own.column("split"), "sample_id": own.column("sample_id"),
        "image_id": own.column("image_id"), "expr_type": pa.array([t or "unknown" for t in types]),
        "text": own.column("text"), "box": own.column("box"),
        "pred_box": scores.column("pred_box").slice(0, n), "iou": iou,
        "correct": pc.greater_equal(iou, pa.scalar(ACC_IOU_THRESHOLD, pa.float32())),
        "error": scores.column("error").slice(0, n),
        "shuffled_text_from": pa.array([None if f is None else ids[f] for f in job.foreign], pa.string()),
        "shuffled_text_iou": control,
    }).cast(PREDICTIONS_SCHEMA)


def summary(pred: pa.Table, failed_ids: bool = True) -> dict:
    """Acc@0.5 of a predictions table (keys as ``EvalResult.summary`` plus the row counts):
    ``acc`` over the rows evaluated (None when none), ``acc_failed_as_wrong`` over all rows."""
    # deferred: loads torch; paid only when this runs, not on import
    import torch

    # deferred: loads torch; paid only when this runs, not on import
    from clipvg.engine.control import control_summary
    from clipvg.engine.metrics import AccuracyMeter

    ok = pred.filter(pc.is_valid(pred.column("iou")))
    meter, control = AccuracyMeter(), AccuracyMeter()
    meter.add(torch.tensor(ok.column("iou").to_pylist()), ok.column("expr_type").to_pylist())
    shown = pred.filter(pc.is_valid(pred.column("shuffled_text_iou")))
    control.add(torch.tensor(shown.column("shuffled_text_iou").to_pylist()),
                shown.column("expr_type").to_pylist())
    failed = pred.filter(pc.is_null(pred.column("iou")))
    out = {"rows": pred.num_rows, "total": meter.total, "correct": meter.correct,
           "acc": meter.accuracy if meter.total else None, "per_type": meter.group_accuracy(),
           "acc_failed_as_wrong": meter.correct / pred.num_rows if pred.num_rows else None,
           "mean_iou": float(np.mean(ok.column("iou").to_numpy())) if ok.num_rows else None,
           "failed": failed.num_rows,
           "shuffled_text": control_summary(control, pred.num_rows - shown.num_rows)}
    if failed_ids:
        out["failed_samples"] = failed.select(["sample_id", "image_id", "error"]).to_pylist()
    return out


def metrics(job: EvalJob, pred: pa.Table, seconds: float) -> dict:
    """metrics.json: per split, overall, and what was evaluated how."""
    splits = {s: summary(pred.filter(pc.field("split") == s)) for s in job.splits}
    c = job.cfg
    return {"checkpoint": job.checkpoint, "data": job.data_uri, "splits": splits,
            "overall": summary(pred, failed_ids=False), "seconds": round(seconds, 2),
            "model": {k: job.model_config.get(k) for k in ("image_size", "context_length")},
            "settings": {"normalize": c.data.augment.normalize, "prompt_template": c.data.prompt_template,
                         "box_int_truncation": c.data.box_int_truncation, "precision": c.train.precision,
                         "actors": c.curriculum.scoring.actors},
            "control": {"method": "foreign_text_assignment per split, in chunks of train.eval_batch_size "
                                  "rows in table order (the previous chunk carried)",
                        "chunk": c.train.eval_batch_size, "seed": CONTROL_SEED}}


def run(job: EvalJob, *, gallery: int = 12, progress: bool | None = None) -> dict:
    """Evaluate ``job`` on the Ray cluster this process is connected to, write the outputs under
    ``job.out_uri`` and return metrics.json's content."""
    # deferred: loads Ray and torch; paid only when this runs, not on import
    from clipvg.data.fanout import FanOutSpec
    from clipvg.distributed.inference import infer
    from clipvg.distributed.streaming import plan_split

    start, options = time.perf_counter(), job.options
    spec = FanOutSpec.from_config(job.cfg, train=False)
    plan = plan_split(job.data_uri, EVAL_SPLIT, spec, samples=job.samples, **options)
    scores, _ = infer(plan, spec, job.cfg, job.checkpoint, job.cfg.curriculum.scoring,
                      progress=progress, desc="evaluating", **options)
    pred = predictions(job, scores)
    result = metrics(job, pred, time.perf_counter() - start)
    write_outputs(job, pred, result, gallery=gallery)
    return result
