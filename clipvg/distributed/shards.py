"""Which images each Ray Train worker streams in an epoch (pure Python, no Ray).

Ray Train's own ``DataConfig`` splits one Dataset for the whole run. clipvg seeds its shuffle
and augmentation by ``(seed, epoch)`` so that a run restarted from a checkpoint sees exactly
the data an uninterrupted run would; so every worker builds its own Dataset each epoch over its
share of the images. Shares are contiguous runs of an epoch's image order, cut where the
running *sample* count crosses ``k / world`` of the total: ranks differ by at most one image's
expressions, and every image goes to exactly one rank.
"""

from __future__ import annotations

import numpy as np


def epoch_order(num_images: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Positions ``0..num_images-1`` in the order epoch ``epoch`` streams them (training
    shuffles with ``(seed, epoch)``; evaluation keeps the plan's order)."""
    if not shuffle:
        return np.arange(num_images)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_images)


def balanced_shards(counts: np.ndarray, world: int) -> list[np.ndarray]:
    """Split positions ``0..len(counts)-1`` (in this order) into ``world`` contiguous runs with
    near-equal sums of ``counts`` (samples per image). Returns one index array per rank;
    a rank may get none when there are fewer images than ranks."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 0:
        return [np.arange(0) for _ in range(world)]
    cumulative = np.cumsum(counts)
    targets = cumulative[-1] * np.arange(1, world) / world
    # cut after the image whose running count first reaches each target
    cuts = np.searchsorted(cumulative, targets, side="left") + 1
    cuts = np.minimum(cuts, counts.size)
    bounds = np.concatenate([[0], cuts, [counts.size]])
    bounds = np.maximum.accumulate(bounds)
    return [np.arange(bounds[r], bounds[r + 1]) for r in range(world)]


def rank_images(counts: np.ndarray, world: int, rank: int, *, seed: int, epoch: int,
                shuffle: bool) -> tuple[np.ndarray, list[int]]:
    """Image positions of ``rank`` for ``epoch`` and the sample count of every rank (what
    the ranks agree on to take the same number of steps)."""
    order = epoch_order(len(counts), seed, epoch, shuffle)
    shards = balanced_shards(np.asarray(counts)[order], world)
    return order[shards[rank]], [int(np.asarray(counts)[order[s]].sum()) for s in shards]
