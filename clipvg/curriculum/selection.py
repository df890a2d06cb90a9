"""Reliability subsets and training pools, derived from scores tables (never copied).

A **scores table** (written by ``clipvg score``) has one row per pseudo-label of a source as
scored by one measurer: ``sample_id``, ``image_id``, ``source``, ``measurer``,
``reliability`` = IoU(clamp(M(I, T)), b) in [0, 1] (null when the image could not be read;
such a sample is never selected) and ``pred_box`` (the measurer's box, x0, y0, x1, y1 in
pixels of the original image). A **subset** at threshold h is every sample with
reliability > h (strict, like the official ``*_train_pseudo_refine_{h}`` files); a **pool**
is a list of :class:`clipvg.config.PoolEntry` (samples table + optional scores + threshold),
read by :mod:`clipvg.data.pools`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

import numpy as np
import pyarrow as pa

from clipvg.data.pools import (  # noqa: F401  (re-exported: the pool API predates data/pools.py)
    EmptyPool, PoolError, aligned_scores, keep_mask, read_entry, read_pool,
)
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


def subset_ids(scores: pa.Table, threshold: float | None) -> set[str]:
    """sample_id of every sample with reliability > ``threshold``."""
    return set(scores.filter(keep_mask(scores, threshold)).column("sample_id").to_pylist())


def subset_sizes(scores: pa.Table, thresholds: Iterable[float]) -> dict[float, int]:
    """How many samples each threshold keeps."""
    # compared in float32, the scores' own type, exactly as keep_mask does
    r = np.nan_to_num(scores.column("reliability").to_numpy(zero_copy_only=False).astype(np.float32), nan=-1.0)
    return {float(h): int((r > np.float32(h)).sum()) for h in thresholds}


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
