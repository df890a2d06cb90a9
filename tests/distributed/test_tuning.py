"""MSA's source-order search as a Ray Tune run (``tuning.search_orders``), with a stand-in for
MSA so that no model trains: one trial per order, each order's accuracy comes back under its
own order, and a failed trial fails the search by name.

The pipeline test runs the orders it is given (``source_order=given``) to stay short; this is
where the Tune order search itself is exercised."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from clipvg.config import load_config
from clipvg.curriculum.schedulers import Candidate, Outcome, all_orders

SOURCES = ["template", "relation", "caption"]


@dataclass
class FakeMsa:
    """What ``_order_trial`` reads of an MSA result: ``final.score`` and ``thresholds``."""

    acc: float
    thresholds: dict

    @property
    def final(self) -> Outcome:
        return Outcome(Candidate("final", []), self.acc)


def accuracy_of(order: list) -> float:
    """A different accuracy for every order of SOURCES (its digits: 0.312 = caption first)."""
    return int("".join(str(SOURCES.index(s) + 1) for s in order)) / 1000


def fake_msa(order: list, evaluate) -> FakeMsa:
    from clipvg.distributed.tuning import SequentialEvaluator

    assert isinstance(evaluate, SequentialEvaluator)  # trials evaluate their steps in turn
    return FakeMsa(accuracy_of(order), {s: 0.1 * i for i, s in enumerate(order)})


def failing_msa(order: list, evaluate) -> FakeMsa:
    if order[0] == "caption":
        raise ValueError("no caption measurer")
    return fake_msa(order, evaluate)


def search(tmp_path, run_msa, orders):
    from clipvg.distributed.tuning import search_orders

    base = load_config(None, [f"storage.root={tmp_path}", "curriculum.cpus_per_trial=0.5",
                              "curriculum.max_concurrent_trials=2"])
    return search_orders(base, orders, run_msa, trials_root=str(tmp_path / "trials"),
                         tune_root=str(tmp_path / "tune"), epochs=1)


def test_every_order_is_one_trial_with_its_own_accuracy(ray_local, tmp_path):
    orders = all_orders(SOURCES)
    accs = search(tmp_path, fake_msa, orders)
    assert accs == {o: pytest.approx(accuracy_of(list(o))) for o in orders}
    assert len(set(accs.values())) == len(orders)


def test_a_failed_order_fails_the_search_by_name(ray_local, tmp_path):
    with pytest.raises(RuntimeError, match=r"order \['caption', .*\] failed"):
        search(tmp_path, failing_msa, [("template", "caption"), ("caption", "template")])


def test_an_outcome_carries_the_shuffled_text_control_of_its_history():
    from clipvg.distributed.tuning import outcome

    control = {"acc": 0.2, "per_type": {}}
    history = {"best_acc": 0.7, "run_dir": "runs/t", "test": {"test": {"acc": 0.6, "shuffled_text": control}},
               "test_shuffled_text": {"test": control}}
    got = outcome(Candidate("c", []), history)
    assert (got.val_acc, got.test, got.test_shuffled_text) == (0.7, {"test": 0.6}, {"test": 0.2})
    del history["test_shuffled_text"]  # a run older than the control
    assert outcome(Candidate("c", []), history).test_shuffled_text == {}
