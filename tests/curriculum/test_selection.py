"""Subsets and pools derived from scores tables."""

import numpy as np
import pyarrow as pa
import pytest

from clipvg.config import PoolEntry
from clipvg.curriculum import selection as sel
from clipvg.data import storage


def _samples(ids, source="template"):
    n = len(ids)
    return pa.table({"sample_id": ids, "image_id": [f"img{i}" for i in range(n)], "text": ["t"] * n,
                     "box": pa.array([[0.0, 0.0, 1.0, 1.0]] * n, pa.list_(pa.float32(), 4)),
                     "source": [source] * n, "split": ["train"] * n, "dataset": ["x"] * n})


def _scores(ids, r):
    return pa.table({"sample_id": ids, "reliability": pa.array(r, pa.float32())})


def test_subset_is_strictly_above_the_threshold_and_null_is_never_kept():
    s = _scores(["a", "b", "c", "d"], [0.3, 0.30001, None, 1.0])
    assert sel.subset_ids(s, 0.3) == {"b", "d"}
    assert sel.subset_ids(s, None) == {"a", "b", "c", "d"}
    assert sel.subset_sizes(s, [0.0, 0.3, 0.9]) == {0.0: 3, 0.3: 2, 0.9: 1}


def test_histogram_bins_are_right_closed_on_0_1():
    # values exact in float32: bin k holds (k/4, (k+1)/4]
    s = _scores(list("abcdef"), [0.0, 0.125, 0.25, 0.375, 1.0, None])
    counts, edges = sel.histogram(s, 4)
    assert counts.tolist() == [2, 1, 0, 1]
    assert sel.zero_count(s) == 1
    counts, edges = sel.histogram(s, 1000)
    assert counts.sum() == 4 and counts[124] == 1 and counts[249] == 1 and counts[999] == 1
    assert len(edges) == 1001 and edges[0] == 0.0 and edges[-1] == 1.0


def test_histogram_and_subsets_agree_at_bin_edges():
    r = [0.1, 0.3, 0.5, 0.7, 0.9, 0.2999, 0.30001]
    s = _scores([str(i) for i in range(len(r))], r)
    counts, _ = sel.histogram(s, 1000)
    for h in (0.1, 0.3, 0.5, 0.7, 0.9):
        assert counts[round(h * 1000):].sum() == len(sel.subset_ids(s, h)), h


def test_pool_filters_each_entry_by_its_own_scores(tmp_path):
    root = str(tmp_path)
    storage.write_table(_samples(["t0", "t1", "t2"]), f"{root}/pseudo/template")
    storage.write_table(_samples(["r0", "r1"], "relation"), f"{root}/pseudo/relation")
    # scores in another order than the samples: aligned by sample_id
    storage.write_table(_scores(["t2", "t0", "t1"], [0.9, 0.1, 0.5]), f"{root}/scores/tt")
    pool = sel.read_pool([PoolEntry(f"{root}/pseudo/template", f"{root}/scores/tt", 0.4),
                          PoolEntry(f"{root}/pseudo/relation")])
    assert sorted(pool.column("sample_id").to_pylist()) == ["r0", "r1", "t1", "t2"]


def test_pool_errors_name_the_problem(tmp_path):
    root = str(tmp_path)
    storage.write_table(_samples(["t0", "t1"]), f"{root}/s")
    storage.write_table(_scores(["t0"], [0.9]), f"{root}/missing")
    storage.write_table(_scores(["t0", "t0", "t1"], [0.9, 0.9, 0.1]), f"{root}/dup")
    with pytest.raises(sel.PoolError, match="1 sample.*no score row.*'t1'"):
        sel.read_pool([PoolEntry(f"{root}/s", f"{root}/missing", 0.5)])
    with pytest.raises(sel.PoolError, match="duplicate"):
        sel.read_pool([PoolEntry(f"{root}/s", f"{root}/dup", 0.5)])
    with pytest.raises(sel.PoolError, match="share sample ids"):
        sel.read_pool([PoolEntry(f"{root}/s"), PoolEntry(f"{root}/s")])
    storage.write_table(_scores(["t0", "t1"], [0.1, 0.2]), f"{root}/low")
    with pytest.raises(sel.PoolError, match="selects no samples"):
        sel.read_pool([PoolEntry(f"{root}/s", f"{root}/low", 0.5)])


def test_pool_key_depends_on_what_is_selected_not_the_order():
    a, b = PoolEntry("x", "sx", 0.3), PoolEntry("y")
    assert sel.pool_key([a, b]) == sel.pool_key([b, a])
    assert sel.pool_key([a]) != sel.pool_key([PoolEntry("x", "sx", 0.4)])
