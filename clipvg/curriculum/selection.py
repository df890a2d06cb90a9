"""Reliability subsets and training pools, derived from scores tables (never copied).

A **scores table** (written by ``clipvg score``) has one row per pseudo-label of a source as
scored by one measurer: ``sample_id``, ``image_id``, ``source``, ``measurer``,
``reliability`` = IoU(clamp(M(I, T)), b) in [0, 1] (null when the image could not be read;
such a sample is never selected) and ``pred_box`` (the measurer's box, x0, y0, x1, y1 in
pixels of the original image). A **subset** at threshold h is every sample with
reliability > h (strict, like the official ``*_train_pseudo_refine_{h}`` files); a **pool**
is a list of :class:`clipvg.config.PoolEntry` (samples table + optional scores + threshold).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipvg.data import storage
from clipvg.data.schema import BOX_TYPE

SCORES_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("measurer", pa.string(), nullable=False),
    pa.field("reliability", pa.float32(), nullable=True),  # null: image unreadable
    pa.field("pred_box", BOX_TYPE, nullable=True),
    pa.field("error", pa.string(), nullable=True),  # why reliability is null
])


class PoolError(ValueError):
    """A pool entry does not fit its scores (missing or duplicate sample ids)."""


class EmptyPool(PoolError):
    """The pool selects no sample (every reliability is at or below its threshold)."""


def keep_mask(scores: pa.Table, threshold: float | None) -> pa.Array:
    """Boolean mask of the samples with reliability > ``threshold`` (None: all, even null)."""
    if threshold is None:
        return pa.array(np.ones(scores.num_rows, bool))
    r = scores.column("reliability")
    return pc.fill_null(pc.greater(r, pa.scalar(threshold, pa.float32())), False)


def subset_ids(scores: pa.Table, threshold: float | None) -> set[str]:
    """sample_id of every sample with reliability > ``threshold``."""
    return set(scores.filter(keep_mask(scores, threshold)).column("sample_id").to_pylist())


def subset_sizes(scores: pa.Table, thresholds: Iterable[float]) -> dict[float, int]:
    """How many samples each threshold keeps."""
    # compared in float32, the scores' own type, exactly as keep_mask does
    r = np.nan_to_num(scores.column("reliability").to_numpy(zero_copy_only=False).astype(np.float32), nan=-1.0)
    return {float(h): int((r > np.float32(h)).sum()) for h in thresholds}


def aligned_scores(samples: pa.Table, scores: pa.Table, where: str) -> pa.Table:
    """``scores`` in the order of ``samples``; every sample must have exactly one score row."""
    ids = samples.column("sample_id")
    sid = scores.column("sample_id")
    if pc.count_distinct(sid).as_py() != scores.num_rows:
        raise PoolError(f"{where}: the scores table has duplicate sample_id rows")
    pos = pc.index_in(ids, value_set=sid)
    missing = pc.is_null(pos)
    if pc.any(missing).as_py():
        first = ids.filter(missing)[0].as_py()
        n = pc.sum(missing.cast(pa.int32())).as_py()
        raise PoolError(f"{where}: {n} sample(s) have no score row (first: {first!r}); "
                        f"was the scores table written for these samples?")
    if scores.num_rows != samples.num_rows:
        raise PoolError(f"{where}: {scores.num_rows} score rows for {samples.num_rows} samples")
    return scores.take(pos)


def read_entry(entry: Any, **storage_options: Any) -> pa.Table:
    """The samples of one pool entry, filtered by its threshold."""
    samples = storage.read_table(entry.samples, **storage_options)
    if entry.scores is None:
        return samples
    scores = storage.read_table(entry.scores, columns=["sample_id", "reliability"], **storage_options)
    scores = aligned_scores(samples, scores, f"{entry.scores} for {entry.samples}")
    return samples.filter(keep_mask(scores, entry.threshold))


def read_pool(entries: list, **storage_options: Any) -> pa.Table:
    """The union of the entries' selected samples (sample ids must be distinct across them)."""
    if not entries:
        raise PoolError("empty training pool")
    parts = [read_entry(e, **storage_options) for e in entries]
    names = parts[0].schema.names
    pool = pa.concat_tables([p.select([c for c in names if c in p.schema.names]) for p in parts],
                            promote_options="permissive")
    if pc.count_distinct(pool.column("sample_id")).as_py() != pool.num_rows:
        raise PoolError("pool entries share sample ids: " + ", ".join(e.samples for e in entries))
    if pool.num_rows == 0:
        raise EmptyPool("the training pool selects no samples: "
                        + ", ".join(f"{e.samples} > {e.threshold}" for e in entries))
    return pool


def pool_key(entries: list) -> str:
    """A short stable id of a pool (what it selects, not how it is spelled)."""
    canon = sorted(json.dumps([e.samples, e.scores, e.threshold]) for e in entries)
    return hashlib.sha256("\n".join(canon).encode()).hexdigest()[:12]


def histogram(scores: pa.Table, bins: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Counts of reliability over ``bins`` equal bins on (0, 1] (method doc §5) and the bin
    edges. Bin k holds r in (k/bins, (k+1)/bins]; r == 0 (a box the measurer missed entirely)
    falls in no bin, as in the paper's histograms, and is counted by :func:`zero_count`."""
    r = scores.column("reliability").to_numpy(zero_copy_only=False).astype(np.float32)
    r = r[np.isfinite(r) & (r > 0)]
    # edges and comparisons in float32, the scores' type, as keep_mask: a sample sits above an
    # edge in the histogram exactly when the subset at that threshold keeps it
    edges = (np.arange(bins + 1) / bins).astype(np.float32)
    k = np.clip(np.searchsorted(edges, r, side="left") - 1, 0, bins - 1)
    return np.bincount(k, minlength=bins), edges.astype(np.float64)


def zero_count(scores: pa.Table) -> int:
    """Samples with reliability exactly 0 (outside the histogram's (0, 1])."""
    r = scores.column("reliability").to_numpy(zero_copy_only=False)
    return int(np.sum(r == 0))
