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
from clipvg.engine.precision import apply_precision
from clipvg.engine.steps import build_optimizer
from clipvg.model import build_model
from clipvg.model.clipvg import CLIPVG


def build_training(cfg: Config, device: torch.device | str = "cpu") -> tuple[CLIPVG, torch.optim.AdamW]:
    """The model of ``cfg.model`` on ``device`` under ``cfg.train.precision``
    (:func:`~clipvg.engine.precision.apply_precision`) and its AdamW optimizer
    (``train.lr``, ``train.weight_decay``). Draws the initial weights from torch's global
    generator: seed it first."""
    model = build_model(cfg.model).to(device)
    apply_precision(model, cfg.train.precision, device)
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    return model, optimizer


def under_policy(model: CLIPVG, cfg: Config, device: torch.device | str = "cpu") -> CLIPVG:
    """``model`` (e.g. the best checkpoint, loaded for testing) on ``device`` under
    ``cfg.train.precision``, as the model was trained and validated."""
    return apply_precision(model.to(device), cfg.train.precision, device)


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
