"""The template-label audit: the template's meaning read against true objects, and the AUC."""

from types import SimpleNamespace as O

import numpy as np
import pyarrow as pa
import pytest

from clipvg.config import SynthConfig
from clipvg.curriculum.audit import label_truth, oracle_scores, precision_curve, template_referent
from clipvg.curriculum.selection import SCORES_SCHEMA, subset_ids
from clipvg.sources.synthetic.scenes import generate_image, image_rng

RED_L = O(shape="circle", color="red", box=(0, 40, 10, 50))
RED_R = O(shape="circle", color="red", box=(80, 40, 100, 60))
BLUE_M = O(shape="circle", color="blue", box=(40, 0, 50, 10))
SQUARE = O(shape="square", color="red", box=(40, 80, 60, 100))
SCENE = [RED_L, RED_R, BLUE_M, SQUARE]


@pytest.mark.parametrize("text, want", [
    ("blue circle", BLUE_M), ("red circle", None),            # two red circles: ambiguous
    ("circle", None), ("square", SQUARE), ("red square", SQUARE),
    ("circle left", RED_L), ("circle on the right", RED_R), ("circle at the top", BLUE_M),
    ("bottom red circle", RED_R),                              # among red circles: lower centre
    ("circle in the middle", BLUE_M),                          # x centres 5, 45, 90
    ("red circle middle", None),                               # an even group has no middle
    ("bigger circle", RED_R), ("smaller red circle", RED_L), ("green circle", None),
])
def test_template_referent_reads_the_template_meaning(text, want):
    assert template_referent(SCENE, text) is want


def test_precision_curve_counts_and_auc_by_hand():
    right = np.array([True, True, False, False])
    rel = np.array([0.9, 0.4, 0.5, 0.0])
    report = precision_curve(right, rel)
    # pairs (right, wrong): 0.9>0.5, 0.9>0.0, 0.4<0.5, 0.4>0.0 -> 3 of 4
    assert report["auc"] == pytest.approx(0.75)
    at = {row["h"]: row for row in report["curve"]}
    assert at[0.0]["kept"] == 3 and at[0.0]["precision"] == pytest.approx(2 / 3)
    assert at[0.4]["kept"] == 2 and at[0.4]["precision"] == pytest.approx(0.5)
    assert at[0.8]["kept"] == 1 and at[0.8]["precision"] == 1.0
    ties = precision_curve(np.array([True, False]), np.array([0.3, 0.3]))
    assert ties["auc"] == pytest.approx(0.5)


def test_label_truth_regenerates_the_scene_and_oracle_selects_right_labels():
    cfg = SynthConfig(image_size=112, min_objects=3, max_objects=6)
    objects = generate_image(image_rng(3, "train", 5), cfg).objects
    unique = next(o for o in objects
                  if sum(p.shape == o.shape and p.color == o.color for p in objects) == 1)
    other = next(o for o in objects if o is not unique)
    image_id = "syn-s3-train-000005"
    samples = pa.table({
        "sample_id": ["a", "b"], "image_id": [image_id] * 2, "source": ["template"] * 2,
        "text": [f"{unique.color} {unique.shape}"] * 2,
        "box": pa.array([list(unique.box), list(other.box)], pa.list_(pa.float32(), 4))})
    right = label_truth(samples, cfg, seed=3)
    assert right.tolist() == [True, False]
    oracle = oracle_scores(samples, right)
    assert oracle.schema.equals(SCORES_SCHEMA)
    assert subset_ids(oracle, 0.5) == {"a"}
