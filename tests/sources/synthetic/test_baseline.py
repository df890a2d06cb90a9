"""The random-object baseline: the expected Acc@0.5 of a text-blind pick among the objects."""

from __future__ import annotations

import pytest

from clipvg.config import SynthConfig
from clipvg.sources.synthetic.scenes import generate_image, image_rng
from clipvg.sources.synthetic.baseline import random_object_baseline


def test_baseline_is_one_over_the_object_count_when_objects_do_not_overlap():
    synth = SynthConfig(image_size=112, min_objects=3, max_objects=6)
    got = random_object_baseline(synth, seed=5, split="test", images=30)
    # the world places objects apart, so only the target itself reaches IoU 0.5 with it
    inverse = [1 / len(im.objects) for im in (generate_image(image_rng(5, "test", i), synth)
                                                 for i in range(30)) for _ in im.expressions]
    assert got["total"] == len(inverse)
    assert got["acc"] == pytest.approx(sum(inverse) / len(inverse), abs=1e-9)
    assert set(got["per_type"]) == {"attribute", "spatial", "relational"}
    assert 1 / 6 <= min(got["per_type"].values()) and max(got["per_type"].values()) <= 1 / 3
