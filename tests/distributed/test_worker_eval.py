"""The Ray Train worker's evaluation summary and history, without Ray running: the ranks'
counts merge into the summary train-local writes, shuffled-text control included."""

import dataclasses
from types import SimpleNamespace

import torch

from clipvg.distributed.worker import _merge_eval, run_history
from clipvg.engine.checkpoint import TrainState
from clipvg.engine.local import TrainHistory
from clipvg.engine.metrics import AccuracyMeter
from clipvg.engine.steps import EvalResult


def _part(ious, types, shuffled_ious, skipped, ids):
    meter, control = AccuracyMeter(), AccuracyMeter()
    meter.add(torch.tensor(ious), types)
    control.add(torch.tensor(shuffled_ious), types[:len(shuffled_ious)])
    return {"meter": meter.state(), "ids": ids, "failed": [], "loss_sum": 0.5 * len(ious),
            "shuffled": control.state(), "shuffled_skipped": skipped}


def test_ranks_merge_into_the_summary_of_evaluate():
    plan = SimpleNamespace(num_samples=5, split="val")
    parts = [_part([0.9, 0.8, 0.1], ["a", "b", "a"], [0.9, 0.2, 0.1], 0, ["s0", "s1", "s2"]),
             _part([0.7, 0.6], ["b", "b"], [0.6], 1, ["s3", "s4"])]  # rank 1: one image alone
    got = _merge_eval(parts, plan, seconds=1.0)
    assert got["acc"] == 4 / 5 and got["total"] == 5 and got["unreadable"] == 0
    assert got["shuffled_text"] == {"acc": 2 / 4, "total": 4, "skipped": 1,
                                    "per_type": {"a": 1 / 2, "b": 1 / 2}}
    one_process = EvalResult(meter=AccuracyMeter(), loss=0.0, shuffled=AccuracyMeter()).summary()
    assert set(got) == set(one_process) | {"unreadable"}


def test_the_history_has_train_locals_shape():
    control = {"acc": 0.25, "total": 4, "skipped": 0, "per_type": {"a": 0.25}}
    test = {"test": {"acc": 0.75, "total": 4, "per_type": {"a": 0.75}, "shuffled_text": control}}
    history = run_history("runs/x", TrainState(epoch=2, best_acc=0.5, best_epoch=1), test, world=2)
    local = {f.name for f in dataclasses.fields(TrainHistory)}
    assert set(history) == local | {"world_size"}  # train_local_to_storage adds world_size too
    assert history["test_shuffled_text"] == {"test": {"acc": 0.25, "per_type": {"a": 0.25}}}
