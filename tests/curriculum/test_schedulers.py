"""SSA / MSA search logic against a fake trainer whose accuracy is a known function of the pool."""

import pytest

from clipvg.curriculum import schedulers as sch

SAMPLES = {"template": "pseudo/template", "relation": "pseudo/relation", "caption": "pseudo/caption"}
SCORES = {(m, s): f"scores/{m}-on-{s}" for m in SAMPLES for s in SAMPLES}


class FakeTrainer:
    """acc(pool) = sum over entries of value(source, measurer, h); records every pool it trains."""

    def __init__(self, value):
        self.value = value
        self.calls: list[list] = []

    def __call__(self, candidates):
        out = []
        for c in candidates:
            self.calls.append(c.pool)
            acc = 0.0
            for e in c.pool:
                source = e.samples.split("/")[1]
                measurer = e.scores.split("/")[1].split("-on-")[0] if e.scores else None
                acc += self.value(source, measurer, e.threshold)
            out.append(sch.Outcome(c, acc))
        return out


def test_ssa_picks_the_best_threshold_and_ties_go_to_the_lower_one():
    curve = {0.0: 0.5, 0.3: 0.7, 0.5: 0.7, 0.7: 0.6}
    fake = FakeTrainer(lambda s, m, h: curve[h])
    result = sch.ssa("pseudo/template", "scores/template-on-template", [0.7, 0.0, 0.5, 0.3], fake)
    assert result.h == 0.3
    assert list(result.curve) == [0.0, 0.3, 0.5, 0.7]
    assert [e.threshold for e in result.chosen.candidate.pool] == [0.3]


def test_refine_searches_between_the_neighbours_of_the_best_grid_point():
    assert sch.refine_grid([0.0, 0.2, 0.4], 0.2, 4) == [0.05, 0.1, 0.15, 0.25, 0.3, 0.35]
    assert sch.refine_grid([0.0, 0.5], 0.0, 2) == [0.25]
    fake = FakeTrainer(lambda s, m, h: 1 - abs(h - 0.35))
    result = sch.ssa("pseudo/template", "scores/template-on-template", [0.0, 0.2, 0.4], fake, refine_steps=4)
    assert result.h == 0.35


def test_msa_step_selects_the_measurer_at_h0_then_the_threshold():
    # relation is scored best by the caption measurer; its best threshold is 0.6
    def value(source, measurer, h):
        if source == "template":
            return 0.5
        bonus = {"caption": 0.2, "relation": 0.1, "template": 0.0}[measurer]
        return bonus - abs(h - 0.6)

    fake = FakeTrainer(value)
    base = [sch.entry("pseudo/template", "scores/template-on-template", 0.3)]
    step = sch.msa_step(base, "relation", SAMPLES, SCORES, list(SAMPLES), 0.5, [0.0, 0.3, 0.6, 0.9], fake)
    assert step.measurer == "caption"
    assert step.search.h == 0.6
    assert step.measurer_accs["caption"].val_acc == pytest.approx(0.5 + 0.2 - 0.1)
    assert step.pool == [*base, sch.entry("pseudo/relation", "scores/caption-on-relation", 0.6)]
    # every measurer candidate keeps the pool selected so far
    assert all(p[0] == base[0] for p in fake.calls)


def test_msa_ties_between_measurers_go_to_the_sources_own():
    fake = FakeTrainer(lambda s, m, h: 0.4)
    step = sch.msa_step([], "caption", SAMPLES, SCORES, ["template", "relation", "caption"], 0.5, [0.5], fake)
    assert step.measurer == "caption"


def test_msa_grows_the_pool_source_by_source_in_the_given_order():
    fake = FakeTrainer(lambda s, m, h: (0.3 if m == s else 0.1) - abs(h - {"template": 0.3, "relation": 0.5,
                                                                             "caption": 0.7}[s]))
    result = sch.msa(["caption", "template", "relation"], SAMPLES, SCORES, list(SAMPLES), 0.5,
                     [0.1, 0.3, 0.5, 0.7], fake)
    assert result.order == ["caption", "template", "relation"]
    assert result.thresholds == {"caption": 0.7, "template": 0.3, "relation": 0.5}
    assert [e.samples for e in result.final.candidate.pool] == ["pseudo/caption", "pseudo/template",
                                                                 "pseudo/relation"]
    assert [s.measurer for s in result.steps] == ["caption", "template", "relation"]


def test_greedy_order_adds_the_most_useful_source_first():
    worth = {"template": 0.1, "relation": 0.3, "caption": 0.2}
    fake = FakeTrainer(lambda s, m, h: worth[s] if m == s else 0.0)
    result = sch.msa_greedy(SAMPLES, SCORES, list(SAMPLES), 0.5, [0.5], fake)
    assert result.order == ["relation", "caption", "template"]


def test_all_orders():
    assert len(sch.all_orders(["a", "b", "c"])) == 6
    assert sch.all_orders(["a"]) == [("a",)]


def test_a_stopped_trial_never_wins():
    o = [sch.Outcome(sch.Candidate("a", []), None, stopped=True), sch.Outcome(sch.Candidate("b", []), 0.0)]
    assert sch.best(o).candidate.label == "b"


def test_own_measurer_skips_the_selection_trainings():
    fake = FakeTrainer(lambda s, m, h: 0.5 if m == s else 0.9)  # CR would win if it were tried
    result = sch.msa(["template", "relation"], SAMPLES, SCORES, list(SAMPLES), 0.5, [0.3, 0.5], fake,
                     own_measurer=True)
    assert [s.measurer for s in result.steps] == ["template", "relation"]
    assert all(s.measurer_accs == {} for s in result.steps)
    assert len(fake.calls) == 4  # two thresholds per step, nothing else
