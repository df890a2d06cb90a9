"""Ray Tune runs of the curriculum searches: every trial trains CLIP-VG on one pool.

* :class:`TuneEvaluator` is the ``evaluate`` callback of :mod:`clipvg.curriculum.schedulers`
  (SSA thresholds, MSA measurer selection and thresholds): one Tune run per batch of
  candidate pools, each trial a function trainable that runs a ``TorchTrainer``
  (:func:`clipvg.distributed.trainer.train`) and reports validation Acc@0.5 (per epoch through
  ``TuneReportCallback`` when ASHA early stopping is on).
* :func:`search_orders` is MSA's source-order search: one Tune trial per order, each running
  the whole MSA along its order, its trainings one after another.

Every pool trains once per pipeline run: its run folder is ``<trials>/<pool key>-e<epochs>``
and a finished one (``history.json`` present) is read back instead of trained again, so
candidates shared by several searches (SSA's and MSA's first step, orders with the same
prefix, a rerun after an interruption) cost nothing the second time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any, Callable, Sequence

from clipvg.config import Config, to_dict
from clipvg.curriculum.schedulers import Candidate, MsaResult, Outcome
from clipvg.curriculum.selection import EmptyPool, pool_key, read_pool
from clipvg.data import storage
from clipvg.distributed.trainer import train

log = logging.getLogger("clipvg.tuning")
METRIC = "val_acc"


def training_key(cfg: Config) -> str:
    """What a training's result depends on besides its pool: model, recipe, data handling,
    worker count and launcher (a changed setting must not reuse an old run)."""
    d = to_dict(cfg)
    part = {"model": d["model"], "train": {k: v for k, v in d["train"].items() if k not in ("resume", "max_failures")},
            "data": {k: v for k, v in d["data"].items() if k not in ("uri", "train_pool")},
            "uri": d["data"]["uri"], "workers": cfg.scaling.num_workers, "launcher": cfg.curriculum.launcher}
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:8]


def trial_config(base: Config, pool: list, *, trials_root: str, epochs: int) -> Config:
    """The config of training on ``pool``: its own run folder under ``trials_root``, named by
    the pool and the training settings (``<pool key>-<settings key>``)."""
    per_epoch = base.curriculum.samples_per_epoch or base.train.samples_per_epoch
    cfg = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, train_pool=list(pool)),
        train=dataclasses.replace(base.train, epochs=epochs, resume=False, samples_per_epoch=per_epoch))
    name = f"{pool_key(pool) if pool else 'gt'}-{training_key(cfg)}"
    return dataclasses.replace(cfg, storage=dataclasses.replace(base.storage, root=trials_root, run_name=name))


def finished_history(cfg: Config) -> dict | None:
    """``history.json`` of a finished training run, or None."""
    uri = storage.join(cfg.run_dir, "history.json")
    options = storage.options_from_config(cfg.storage)
    return storage.read_json(uri, **options) if storage.exists(uri, **options) else None


def train_pool(base: Config, pool: list, *, trials_root: str, epochs: int,
               callbacks: list | None = None) -> dict:
    """Train on ``pool`` (or read the finished run back); returns its ``history.json``.
    ``curriculum.launcher``: a TorchTrainer (``ray_train``) or this process (``in_trial``,
    ``in_process``)."""
    cfg = trial_config(base, pool, trials_root=trials_root, epochs=epochs)
    done = finished_history(cfg)
    if done is not None:
        return done
    if base.curriculum.launcher in ("in_trial", "in_process"):
        # deferred: loads torch; paid only when this runs, not on import
        import torch

        # deferred: loads open_clip; paid only when this runs, not on import
        from clipvg.engine.local import train_local_to_storage
        from clipvg.distributed.worker import worker_threads  # the Ray Train worker's rule

        torch.set_num_threads(worker_threads(base.scaling))
        return train_local_to_storage(cfg)

    return train(cfg, callbacks)


def outcome(candidate: Candidate, history: dict | None, last: dict | None = None) -> Outcome:
    if history is None:  # stopped by the scheduler: its last reported accuracy
        acc = (last or {}).get("best_acc", (last or {}).get(METRIC))
        return Outcome(candidate, acc, stopped=True)
    shuffled = history.get("test_shuffled_text") or {}  # absent in runs older than the control
    return Outcome(candidate, history["best_acc"], {s: v["acc"] for s, v in history["test"].items()},
                   history["run_dir"], test_shuffled_text={s: v["acc"] for s, v in shuffled.items()})


def _pool_trial(config: dict, *, base: Config, candidates: list, trials_root: str, epochs: int,
                per_epoch: bool) -> None:
    """Tune function trainable: train one candidate pool with a TorchTrainer."""
    # deferred: loads Ray; paid only when this runs, not on import
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    candidate = candidates[config["index"]]
    history = train_pool(base, candidate.pool, trials_root=trials_root, epochs=epochs,
                         callbacks=[TuneReportCallback()] if per_epoch else None)
    ray.tune.report({METRIC: history["best_acc"], "best_acc": history["best_acc"], "finished": 1})


class TuneEvaluator:
    """``evaluate(candidates) -> outcomes`` as a Ray Tune run over the pools not trained yet."""

    def __init__(self, base: Config, *, trials_root: str, tune_root: str, epochs: int):
        self.base, self.trials_root, self.tune_root, self.epochs = base, trials_root, tune_root, epochs
        self.runs = 0

    def _history(self, c: Candidate) -> dict | None:
        return finished_history(trial_config(self.base, c.pool, trials_root=self.trials_root,
                                              epochs=self.epochs))

    def _empty(self, c: Candidate) -> bool:
        """A pool that selects nothing (e.g. a threshold above every reliability) is not
        trained: its outcome has no accuracy, so it never wins."""
        if not c.pool:
            return False
        try:
            read_pool(c.pool, **storage.options_from_config(self.base.storage))
        except EmptyPool:
            return True
        return False

    def __call__(self, candidates: list[Candidate]) -> list[Outcome]:
        # each run's history.json is read once before the search and, for those it trains, once after
        done = {id(c): self._history(c) for c in candidates}
        empty = {id(c) for c in candidates if done[id(c)] is None and self._empty(c)}
        todo = [c for c in candidates if id(c) not in empty and done[id(c)] is None]
        last = self._tune(todo) if todo else {}
        done.update({id(c): self._history(c) for c in todo})
        results = [Outcome(c, None, empty=True) if id(c) in empty else outcome(c, done[id(c)], last.get(id(c)))
                   for c in candidates]
        for o in results:
            note = " (stopped early)" if o.stopped else " (selects no sample: not trained)" if o.empty else ""
            print(f"[search] {o.candidate.label}: val Acc@0.5 "
                  f"{'n/a' if o.val_acc is None else f'{o.val_acc:.4f}'}{note}", flush=True)
        return results

    def _tune(self, todo: list[Candidate]) -> dict[int, dict]:
        # deferred: loads Ray; paid only when this runs, not on import
        from ray import tune

        c = self.base.curriculum
        per_epoch = c.early_stopping == "asha" and c.launcher == "ray_train"
        trainable = tune.with_parameters(_pool_trial, base=self.base, candidates=todo,
                                         trials_root=self.trials_root, epochs=self.epochs,
                                         per_epoch=per_epoch)
        self.runs += 1
        grid = run_tune(self.base, trainable, {"index": tune.grid_search(list(range(len(todo))))},
                        name=f"search{self.runs:03d}", tune_root=self.tune_root, per_epoch=per_epoch,
                        max_t=self.epochs)
        last = {}
        for result in grid:
            candidate = todo[result.config["index"]]
            unfinished = self._history(candidate) is None
            if result.error is not None and unfinished:
                raise RuntimeError(f"trial {candidate.label!r} failed: {result.error}") from result.error
            if unfinished and not per_epoch:  # only an early-stopping scheduler may cut a trial
                raise RuntimeError(f"trial {candidate.label!r} ended without finishing its training "
                                   "(the search was interrupted?); rerun to continue")
            last[id(candidate)] = result.metrics or {}
        return last


def run_tune(base: Config, trainable: Any, space: dict, *, name: str, tune_root: str, per_epoch: bool,
             max_t: int):
    """One Tune run on the connected cluster, its state under ``tune_root/name``."""
    # deferred: loads Ray; paid only when this runs, not on import
    import ray.tune
    from ray import tune

    c = base.curriculum
    scheduler = None
    if per_epoch:
        # deferred: loads Ray; paid only when this runs, not on import
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="epoch", grace_period=c.asha_grace_epochs, max_t=max_t)
    options = storage.options_from_config(base.storage)
    fs, path = storage.pyarrow_filesystem(tune_root, **options)
    name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"  # a rerun starts a new Tune experiment
    resources = {"CPU": c.cpus_per_trial}
    if c.launcher == "in_trial":  # the trial trains: it holds the worker's CPUs and placement
        resources["CPU"] += base.scaling.cpus_per_worker
        resources.update(base.scaling.model_resources)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=space,
        # reuse_actors: one trial process per concurrent slot imports torch once per search
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler, reuse_actors=True,
                                    max_concurrent_trials=c.max_concurrent_trials),
        # verbose=0: the pipeline prints one line per finished trial ([search]) and the trainers
        # their progress bars; Tune's status tables would drown them
        run_config=ray.tune.RunConfig(name=name, storage_path=path, storage_filesystem=fs, verbose=0,
                                      failure_config=ray.tune.FailureConfig(max_failures=0)),
    )
    return tuner.fit()


class SequentialEvaluator(TuneEvaluator):
    """The same contract, trainings one after another in this process (inside a Tune trial
    of the order search: a trial does not start a Tune run of its own)."""

    def _tune(self, todo: list[Candidate]) -> dict[int, dict]:
        for c in todo:
            train_pool(self.base, c.pool, trials_root=self.trials_root, epochs=self.epochs)
        return {}


def _order_trial(config: dict, *, base: Config, run_msa: Callable, trials_root: str, tune_root: str,
                 epochs: int) -> None:
    # deferred: loads Ray; paid only when this runs, not on import
    import ray.tune

    evaluator = SequentialEvaluator(base, trials_root=trials_root, tune_root=tune_root, epochs=epochs)
    result: MsaResult = run_msa(list(config["order"]), evaluator)
    ray.tune.report({METRIC: result.final.score, "thresholds": result.thresholds})


def search_orders(base: Config, orders: Sequence[tuple], run_msa: Callable[[list, Any], MsaResult], *,
                  trials_root: str, tune_root: str, epochs: int) -> dict[tuple, float]:
    """MSA's source order as a Tune search: one trial per order (``curriculum.launcher=
    in_process``: the orders one after another in this process). Returns order -> the final
    pool's validation accuracy. ``run_msa(order, evaluate)`` must be picklable."""
    if base.curriculum.launcher == "in_process":
        evaluator = SequentialEvaluator(base, trials_root=trials_root, tune_root=tune_root, epochs=epochs)
        return {tuple(o): run_msa(list(o), evaluator).final.score for o in orders}
    # deferred: loads Ray; paid only when this runs, not on import
    from ray import tune

    trainable = tune.with_parameters(_order_trial, base=base, run_msa=run_msa, trials_root=trials_root,
                                     tune_root=tune_root, epochs=epochs)
    grid = run_tune(base, trainable, {"order": tune.grid_search([list(o) for o in orders])},
                    name="orders", tune_root=tune_root, per_epoch=False, max_t=epochs)
    accs = {}
    for result in grid:
        if result.error is not None:
            raise RuntimeError(f"order {result.config['order']} failed: {result.error}") from result.error
        accs[tuple(result.config["order"])] = result.metrics[METRIC]
    return accs
