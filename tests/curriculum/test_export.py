"""Official refine files from a scores table (clipvg.curriculum.export): strict thresholds,
r == 1.0, entry layout per key, and files the project's restricted loader accepts."""

import numpy as np
import pyarrow as pa
import pytest

from clipvg.curriculum.export import REFINE_THRESHOLDS, export_refined, refined_subsets, threshold_tag
from clipvg.curriculum.selection import SCORES_SCHEMA, PoolError
from clipvg.sources.official.formats import PLACEHOLDER
from clipvg.sources.official.unpickler import load_split_file
from clipvg.data.schema import BOX_TYPE

# reliability per sample: exactly on thresholds, 1.0, 0, and one unreadable (null)
R = [0.3, 0.30001, 1.0, 0.0, None, 0.95, 0.1, 0.65]


def tables(order=None):
    n = len(R)
    samples = pa.table({
        "sample_id": [f"s{i}" for i in range(n)], "image_id": [f"img{i % 3}.jpg" for i in range(n)],
        "text": [f"The Thing {i}" for i in range(n)],
        "box": pa.array([[1.5 * i, 2.0, 10.25 + i, 20.0] for i in range(n)], BOX_TYPE),
        "source": ["template"] * n, "split": ["train"] * n, "dataset": ["tiny"] * n})
    ids = list(range(n)) if order is None else order
    scores = pa.table({
        "sample_id": [f"s{i}" for i in ids], "image_id": [f"img{i % 3}.jpg" for i in ids],
        "source": ["template"] * len(ids), "measurer": ["m"] * len(ids),
        "reliability": pa.array([R[i] for i in ids], pa.float32()),
        "pred_box": pa.array([[0, 0, 1, 1]] * len(ids), BOX_TYPE), "error": [None] * len(ids)},
        schema=SCORES_SCHEMA)
    return samples, scores


def test_threshold_tags():
    assert [threshold_tag(t) for t in (0.0, 0.3, 0.9, 1.0, 0.35)] == ["0_0", "0_3", "0_9", "1_0", "0_35"]


def test_subsets_are_strict_and_one_is_exact():
    samples, scores = tables(order=[7, 6, 5, 4, 3, 2, 1, 0])  # scores in another order
    subsets = refined_subsets(samples, scores)
    ids = {tag: t.column("sample_id").to_pylist() for tag, t in subsets.items()}
    assert list(ids) == [threshold_tag(t) for t in REFINE_THRESHOLDS] + ["1_0"]
    assert ids["0_0"] == ["s0", "s1", "s2", "s5", "s6", "s7"]  # r = 0 and null are out
    assert ids["0_3"] == ["s1", "s2", "s5", "s7"]  # r == 0.3 exactly is NOT > 0.3
    assert ids["0_1"] == ["s0", "s1", "s2", "s5", "s7"]  # r == 0.1 is out too
    assert ids["0_9"] == ["s2", "s5"] and ids["1_0"] == ["s2"]


def test_missing_or_duplicate_scores_are_refused():
    samples, _ = tables()
    with pytest.raises(PoolError, match="no score row"):
        refined_subsets(samples, tables(order=[0, 1, 2])[1])
    with pytest.raises(PoolError, match="duplicate"):
        refined_subsets(samples, tables(order=list(range(len(R))) + [0])[1])


def test_files_load_with_the_restricted_loader(tmp_path):
    samples, scores = tables()
    written = export_refined(samples, scores, str(tmp_path), "unc")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"unc_train_pseudo_refine_{t}.pth" for t in
                            ["0_0", "0_1", "0_2", "0_3", "0_4", "0_5", "0_6", "0_7", "0_8", "0_9", "1_0"]])
    assert written[str(tmp_path / "unc_train_pseudo_refine_0_3.pth")] == 4
    entries = load_split_file(str(tmp_path / "unc_train_pseudo_refine_0_3.pth"))
    assert [e[0] for e in entries] == ["img1.jpg", "img2.jpg", "img2.jpg", "img1.jpg"]
    image, aux_1, box, text, aux_2 = entries[0]  # s1: COCO family -> [x, y, w, h]
    assert aux_1 == aux_2 == PLACEHOLDER and text == "the thing 1"  # official: lower-cased
    assert np.allclose(box, [1.5, 2.0, 11.25 - 1.5, 18.0])
    assert load_split_file(str(tmp_path / "unc_train_pseudo_refine_0_9.pth"))[1][3] == "the thing 5"


def test_flickr_layout_and_template(tmp_path):
    samples, scores = tables()
    export_refined(samples, scores, str(tmp_path), "flickr", thresholds=[0.5],
                   prompt_template="find the {}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "flickr_train_pseudo_refine_0_5.pth", "flickr_train_pseudo_refine_1_0.pth"]
    (entry,) = load_split_file(str(tmp_path / "flickr_train_pseudo_refine_1_0.pth"))
    image, box, text = entry  # flickr: (image, [x0, y0, x1, y1], phrase)
    assert image == "img2.jpg" and np.allclose(box, [3.0, 2.0, 12.25, 20.0])
    assert text == "find the the thing 2"


def test_bad_key_writes_nothing(tmp_path):
    samples, scores = tables()
    with pytest.raises(ValueError, match="unknown dataset key"):
        export_refined(samples, scores, str(tmp_path), "synthetic")
    assert not list(tmp_path.iterdir())
