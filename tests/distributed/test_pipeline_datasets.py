"""Which final models the pipeline trains (clipvg.distributed.pipeline, ``finals``): the fully
supervised model needs the dataset's ground-truth train split. CLIP-VG's unsupervised release
has none, so there the model is left out and the stage says why, instead of failing in a
training or training on something else. The trainings are a stub here (the evaluator), so
this runs in a second; the whole pipeline on an imported release is test_release_pipeline.py.
"""

from __future__ import annotations

import pytest

from clipvg.config import load_config
from clipvg.curriculum.schedulers import Outcome
from clipvg.distributed.pipeline import Pipeline
from clipvg.errors import UserError
from tiny_train import TINY_TRAIN


def pipeline_with(counts: dict, tmp_path) -> tuple[Pipeline, list]:
    p = Pipeline(load_config(None, [*TINY_TRAIN, f"storage.root={tmp_path}", "curriculum.sources=[template]"]))
    pool = [{"samples": "pseudo/template", "scores": None, "threshold": None}]
    p.outputs = {"world": {"uri": "ds", "counts": counts}, "pseudo:template": {"uri": "pseudo/template"},
                 "ssa": {"chosen": {"pool": pool}}, "msa": {"final": {"pool": pool}}}
    trained = []

    def evaluate(candidates):
        trained.extend(c.label for c in candidates)
        return [Outcome(c, 0.5, {"test": 0.5}, run_dir=f"trials/{c.label}") for c in candidates]

    p.evaluator = lambda epochs, sequential=False: evaluate
    return p, trained


def test_fully_supervised_is_left_out_without_a_train_split_and_says_why(tmp_path):
    p, trained = pipeline_with({"val": {}, "test": {}}, tmp_path)
    finals = p._finals()
    assert trained == ["raw_template", "ssa", "raw_union", "msa"]
    assert "full_supervised" not in finals
    assert "no ground-truth split 'train'" in finals["left_out"]["full_supervised"]


@pytest.mark.parametrize("counts", [{"train": {}, "val": {}, "test": {}}, {}])
def test_fully_supervised_trains_when_the_dataset_has_train(tmp_path, counts):
    """``{}``: a dataset written before manifests counted splits keeps the old behaviour."""
    p, trained = pipeline_with(counts, tmp_path)
    finals = p._finals()
    assert trained[-1] == "full_supervised" and "left_out" not in finals


def test_a_dataset_without_the_evaluation_splits_is_refused_naming_them(tmp_path):
    """``data.test_splits=[testA,testB]`` on a dataset that has only val: one line naming the
    missing split and the splits there (planted defect: no check, and the first evaluation
    fails minutes later inside a Ray task)."""
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "manifest.json").write_text('{"dataset": "unc", "counts": {"val": {}, "testA": {}}}')
    p = Pipeline(load_config(None, [*TINY_TRAIN, f"storage.root={tmp_path}", f"data.uri={ds}",
                                    "data.test_splits=[testA,testB]"]))
    with pytest.raises(UserError, match=r"no split 'testB'.*its splits: testA, val"):
        p._world()
