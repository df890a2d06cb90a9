"""Which images each worker streams: every image once, sample counts balanced, fixed by (seed, epoch)."""

import numpy as np
import pytest

from clipvg.distributed.shards import balanced_shards, epoch_order, rank_images


def test_balanced_shards_cover_every_position_once_in_order():
    counts = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    shards = balanced_shards(counts, 3)
    assert np.concatenate(shards).tolist() == list(range(8))
    sums = [int(counts[s].sum()) for s in shards]
    assert sum(sums) == 31
    # cuts at the first image whose running count reaches k/3 of 31: 3+1+4+1+5=14 >= 10.3, 9 >= 20.7-14
    assert sums == [14, 9, 8]


def test_balanced_shards_differ_by_at_most_one_image():
    rng = np.random.default_rng(0)
    for world in (1, 2, 3, 8):
        counts = rng.integers(1, 8, size=200)
        sums = [int(counts[s].sum()) for s in balanced_shards(counts, world)]
        assert sum(sums) == counts.sum()
        assert max(sums) - min(sums) <= 2 * counts.max()


def test_more_ranks_than_images_leaves_some_empty():
    shards = balanced_shards(np.array([2, 2]), 4)
    assert sorted(np.concatenate(shards).tolist()) == [0, 1]
    assert sum(len(s) == 0 for s in shards) == 2


def test_invalid_world_size():
    with pytest.raises(ValueError, match="world size"):
        balanced_shards(np.array([1]), 0)


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = epoch_order(50, seed=13, epoch=2)
    assert a.tolist() == epoch_order(50, seed=13, epoch=2).tolist()
    assert a.tolist() != epoch_order(50, seed=13, epoch=3).tolist()
    assert sorted(a.tolist()) == list(range(50))
    assert epoch_order(5, 13, 2, shuffle=False).tolist() == [0, 1, 2, 3, 4]


def test_rank_images_partition_the_epoch():
    counts = np.arange(1, 21)
    parts = [rank_images(counts, 2, r, seed=0, epoch=1, shuffle=True) for r in range(2)]
    assert sorted(np.concatenate([p[0] for p in parts]).tolist()) == list(range(20))
    assert parts[0][1] == parts[1][1]
    assert parts[0][1] == [int(counts[p[0]].sum()) for p in parts]
