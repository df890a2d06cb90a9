"""What every training launcher does the same way: the model it trains and the end of an epoch.

``clipvg train-local`` and ``curriculum.launcher=in_trial`` trials (:mod:`clipvg.engine.local`)
and the Ray Train worker (:mod:`clipvg.distributed.worker`) all build their model and optimizer
with :func:`build_training` and close every epoch with :func:`end_epoch`, so ``train.*`` keys
such as ``train.precision`` mean the same whichever launcher runs them. The launchers differ
only in where batches come from and where results go (the worker adds DDP, sharded Ray Data
streams and Ray Train reports).
"""

from __future__ import annotations

import torch

from clipvg.config import Config
from clipvg.engine.checkpoint import TrainState
from clipvg.engine.precision import apply_precision, compile_model
from clipvg.engine.steps import build_optimizer
from clipvg.model import build_model
from clipvg.model.clipvg import CLIPVG


def build_training(cfg: Config, device: torch.device | str = "cpu") -> tuple[CLIPVG, torch.optim.AdamW]:
    """The model of ``cfg.model`` on ``device`` under ``cfg.train.precision``
    (:func:`~clipvg.engine.precision.apply_precision`), compiled in place when
    ``train.compile``, and its AdamW optimizer (``train.lr``, ``train.weight_decay``). Draws
    the initial weights from torch's global generator: seed it first."""
    model = build_model(cfg.model).to(device)
    apply_precision(model, cfg.train.precision, device)
    compile_model(model, cfg.train.compile)
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    return model, optimizer


def under_policy(model: CLIPVG, cfg: Config, device: torch.device | str = "cpu") -> CLIPVG:
    """``model`` (e.g. the best checkpoint, loaded for testing) on ``device`` under
    ``cfg.train.precision`` (and compiled with ``train.compile``), as the model was trained
    and validated."""
    return compile_model(apply_precision(model.to(device), cfg.train.precision, device), cfg.train.compile)


def end_epoch(state: TrainState, record: dict) -> bool:
    """Close epoch ``record["epoch"]`` (1-based) in ``state``, in place: the record appended to
    the history, the best validation accuracy updated when ``record["val"]["acc"]`` is strictly
    better (the official rule: ties keep the earlier epoch), the data position moved to the
    start of the next epoch. ``state.global_step`` / ``samples_seen`` are the caller's (counted
    per step). Returns whether the epoch improved, i.e. its model is the new ``best/``."""
    improved = record["val"]["acc"] > state.best_acc
    if improved:
        state.best_acc, state.best_epoch = record["val"]["acc"], record["epoch"]
    state.epoch, state.history = record["epoch"], [*state.history, record]
    state.data_position = {"epoch": record["epoch"], "step_in_epoch": 0}
    return improved


def epoch_rate(samples: int, t0: float, t_first: float | None, end: float) -> dict:
    """An epoch's training rate, one definition for every launcher (docs/benchmarks.md):
    ``train_samples_per_s`` = ``train_samples`` / ``train_seconds``, where ``train_seconds`` is
    the step loop's wall time from the first batch in hand (``t_first``) to the end of the
    last step (``end``): every later wait for data counts, the start-up before the first batch
    (``train_startup_s``: a data pipeline starting, Ray Data's tasks launching) and the
    evaluation after the loop do not. ``t0``: the epoch's start; ``time.perf_counter`` values."""
    start = end if t_first is None else t_first
    seconds = end - start
    return {"train_samples": samples, "train_seconds": seconds, "train_startup_s": start - t0,
            "train_samples_per_s": samples / seconds if seconds > 0 else 0.0}
