"""Training pools: the samples a trainer reads, selected from samples tables by scores tables
(never copied).

A pool is a list of :class:`clipvg.config.PoolEntry` (samples table + optional scores table +
threshold); an entry selects every sample with reliability > threshold (strict, like the
official ``*_train_pseudo_refine_{h}`` files). The curriculum that builds pools is
:mod:`clipvg.curriculum.selection`; the trainers read them here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipvg.data import storage


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
