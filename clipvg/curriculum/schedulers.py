"""SSA and MSA (method doc §6-§7) as plain algorithms over an ``evaluate`` callback.

The schedulers decide *which training pools to try*; how a pool is trained and scored is the
caller's: ``evaluate(candidates) -> outcomes`` trains one CLIP-VG per candidate pool (a Ray Tune
run of TorchTrainers in :mod:`clipvg.distributed.tuning`, or a fake in the unit tests) and
returns the best validation Acc@0.5 of each, in order. Nothing here imports Ray or torch.

Choices the paper left unpublished ([UNVERIFIED]) and what we do:

* objective: best validation Acc@0.5 of the model trained on the pool (the only model-selection
  signal of the official code);
* threshold search: a grid (``curriculum.thresholds``), optionally refined around the best grid
  point (``curriculum.search=refine``); ties go to the lower threshold (more data);
* measurer selection (MSA): every measurer's subset at the fixed ``h0``, added to the pool so
  far; the best validation accuracy wins (ties: the source's own measurer, then the given order);
* one measure-select-retrain round; the final model is trained from scratch on the pool.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Sequence

from clipvg.config import PoolEntry


@dataclass
class Candidate:
    """A training pool to try, and what it stands for (for reports)."""

    label: str
    pool: list[PoolEntry]
    params: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """What training on a candidate's pool gave. ``val_acc`` None: stopped early or failed."""

    candidate: Candidate
    val_acc: float | None
    test: dict = field(default_factory=dict)  # split -> Acc@0.5 of the best checkpoint
    run_dir: str = ""
    stopped: bool = False
    empty: bool = False  # the pool selects no sample: nothing to train
    # split -> Acc@0.5 of the same checkpoint shown texts of other images (engine/control.py)
    test_shuffled_text: dict = field(default_factory=dict)

    @property
    def score(self) -> float:
        return -1.0 if self.val_acc is None else self.val_acc


Evaluate = Callable[[list[Candidate]], list[Outcome]]


def best(outcomes: Sequence[Outcome]) -> Outcome:
    """The outcome with the highest validation accuracy; ties go to the earliest."""
    return max(outcomes, key=lambda o: o.score)  # max() keeps the first of equals


def entry(samples: str, scores: str | None, h: float | None) -> PoolEntry:
    return PoolEntry(samples=samples, scores=scores, threshold=h)


def refine_grid(grid: Sequence[float], h: float, steps: int) -> list[float]:
    """Thresholds between ``h``'s grid neighbours, ``steps`` per grid interval (excluding the
    grid points already tried), rounded to 1e-3 and kept in [0, 1)."""
    grid = sorted(grid)
    spacing = min((b - a for a, b in zip(grid, grid[1:])), default=0.1)
    step = spacing / steps
    lo, hi = max(0.0, h - spacing), min(0.999, h + spacing)
    n = int(round((hi - lo) / step))
    fine = {round(lo + k * step, 3) for k in range(n + 1)}
    return sorted(x for x in fine if 0 <= x < 1 and all(abs(x - g) > 1e-9 for g in grid))


# --------------------------------------------------------------------------------------------
# SSA
# --------------------------------------------------------------------------------------------


@dataclass
class ThresholdSearch:
    """A performance-vs-threshold curve ("P-R curve", paper Fig. 3b) and its best point."""

    curve: dict[float, Outcome]
    h: float
    chosen: Outcome


def search_threshold(base_pool: list[PoolEntry], samples: str, scores: str, thresholds: Sequence[float],
                     evaluate: Evaluate, *, label: str, refine_steps: int | None = None,
                     params: dict | None = None) -> ThresholdSearch:
    """Greedy sample selection: train on ``base_pool`` + {k in source : r_k > h} for every h."""
    def candidates(hs):
        return [Candidate(f"{label} h={h:g}", [*base_pool, entry(samples, scores, h)],
                          {**(params or {}), "h": h}) for h in hs]

    grid = sorted(dict.fromkeys(float(h) for h in thresholds))
    curve = dict(zip(grid, evaluate(candidates(grid))))
    if refine_steps:
        h0 = best([curve[h] for h in grid]).candidate.params["h"]
        fine = refine_grid(grid, h0, refine_steps)
        curve.update(zip(fine, evaluate(candidates(fine))))
    curve = dict(sorted(curve.items()))
    chosen = best(list(curve.values()))
    return ThresholdSearch(curve, chosen.candidate.params["h"], chosen)


def ssa(samples: str, scores: str, thresholds: Sequence[float], evaluate: Evaluate, *,
        refine_steps: int | None = None) -> ThresholdSearch:
    """SSA (§6): one source, scored by its own measurer; the threshold with the best model."""
    return search_threshold([], samples, scores, thresholds, evaluate, label="ssa",
                            refine_steps=refine_steps)


# --------------------------------------------------------------------------------------------
# MSA
# --------------------------------------------------------------------------------------------


@dataclass
class MsaStep:
    """One source added to the pool: which measurer, which threshold, and the curves."""

    source: str
    measurer_accs: dict[str, Outcome]  # measurer -> outcome at h0
    measurer: str
    search: ThresholdSearch
    pool: list[PoolEntry]  # the pool after this step


@dataclass
class MsaResult:
    order: list[str]
    steps: list[MsaStep]

    @property
    def final(self) -> Outcome:
        return self.steps[-1].search.chosen

    @property
    def thresholds(self) -> dict[str, float]:
        return {s.source: s.search.h for s in self.steps}


def msa_step(pool: list[PoolEntry], source: str, samples: dict[str, str], scores: dict[tuple[str, str], str],
             measurers: Sequence[str], h0: float, thresholds: Sequence[float], evaluate: Evaluate, *,
             refine_steps: int | None = None, step: int = 1) -> MsaStep:
    """Measurer selection at fixed ``h0`` (skipped when there is one measurer to choose
    from), then the threshold search for that measurer."""
    # the source's own measurer first, so it wins ties
    order = sorted(measurers, key=lambda m: (m != source, list(measurers).index(m)))
    accs: dict[str, Outcome] = {}
    if len(order) > 1:
        at_h0 = evaluate([Candidate(f"msa{step} {source} by {m} h={h0:g}",
                                    [*pool, entry(samples[source], scores[(m, source)], h0)],
                                    {"measurer": m, "h": h0, "source": source}) for m in order])
        accs = dict(zip(order, at_h0))
    chosen = best(list(accs.values())).candidate.params["measurer"] if accs else order[0]
    search = search_threshold(pool, samples[source], scores[(chosen, source)], thresholds, evaluate,
                              label=f"msa{step} {source} by {chosen}", refine_steps=refine_steps,
                              params={"measurer": chosen, "source": source})
    return MsaStep(source, accs, chosen, search, search.chosen.candidate.pool)


def _measurers_for(source: str, measurers: Sequence[str], own_measurer: bool) -> list[str]:
    return [source] if own_measurer else list(measurers)


def msa(order: Sequence[str], samples: dict[str, str], scores: dict[tuple[str, str], str],
        measurers: Sequence[str], h0: float, thresholds: Sequence[float], evaluate: Evaluate, *,
        refine_steps: int | None = None, own_measurer: bool = False) -> MsaResult:
    """MSA (§7) along a given source order: the pool grows one selected subset per source.
    ``own_measurer``: every source is scored by its own measurer (SR only, no selection)."""
    pool: list[PoolEntry] = []
    steps = []
    for t, source in enumerate(order, 1):
        s = msa_step(pool, source, samples, scores, _measurers_for(source, measurers, own_measurer), h0,
                     thresholds, evaluate, refine_steps=refine_steps, step=t)
        steps.append(s)
        pool = s.pool
    return MsaResult(list(order), steps)


def msa_greedy(samples: dict[str, str], scores: dict[tuple[str, str], str], measurers: Sequence[str],
               h0: float, thresholds: Sequence[float], evaluate: Evaluate, *,
               refine_steps: int | None = None, own_measurer: bool = False) -> MsaResult:
    """MSA with a greedy source order: at each step every remaining source is tried and the
    one whose best subset gives the best model joins the pool."""
    pool: list[PoolEntry] = []
    remaining, steps = list(samples), []
    while remaining:
        tries = [msa_step(pool, s, samples, scores, _measurers_for(s, measurers, own_measurer), h0,
                          thresholds, evaluate, refine_steps=refine_steps, step=len(steps) + 1)
                 for s in remaining]
        pick = max(tries, key=lambda s: s.search.chosen.score)  # ties: the earlier source
        steps.append(pick)
        pool = pick.pool
        remaining.remove(pick.source)
    return MsaResult([s.source for s in steps], steps)


def all_orders(sources: Sequence[str]) -> list[tuple[str, ...]]:
    """Every order of the sources (the space of ``source_order=search``)."""
    return list(itertools.permutations(sources))
