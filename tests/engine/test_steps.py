"""train_step / evaluate on real batches of the synthetic world."""

import math

import pytest
import torch

from clipvg.data.batching import build_loader, ensure_dataset
from clipvg.engine.steps import build_optimizer, evaluate, lr_factor, train_step
from clipvg.model import build_model


def _batch(cfg, split="train", train=True):
    return next(iter(build_loader(cfg, ensure_dataset(cfg), split, train=train)))


def test_tiny_model_overfits_a_fixed_batch(tiny_run):
    cfg = tiny_run("model.fusion.dropout=0.0", "data.augment.color=false", "data.augment.translate=false")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    batch = _batch(cfg)
    first = train_step(model, batch, optimizer)["loss"]
    for _ in range(250):
        last = train_step(model, batch, optimizer)["loss"]
    assert last < first / 10, f"loss fell only from {first:.3f} to {last:.3f}"


def test_train_step_rejects_non_finite_loss(tiny_run):
    cfg = tiny_run()
    model = build_model(cfg.model)
    batch = _batch(cfg)
    batch["target"][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        train_step(model, batch, build_optimizer(model, 1e-3, 0.0))


def test_evaluate_counts_every_sample_once(tiny_run):
    cfg = tiny_run()  # eval batch 7 does not divide the split: the tail batch must count
    uri = ensure_dataset(cfg)
    loader = build_loader(cfg, uri, "val", train=False)
    n_samples = len(loader.dataset)
    assert n_samples % cfg.train.eval_batch_size != 0
    result = evaluate(build_model(cfg.model), loader)
    assert result.total == n_samples
    assert sorted(result.ious) == sorted(r.sample_id for r in loader.dataset.records)
    assert sum(n for _, n in result.meter.groups.values()) == n_samples
    assert 0.0 <= result.accuracy <= 1.0 and math.isfinite(result.loss)


def test_evaluate_refuses_a_sample_seen_twice(tiny_run):
    cfg = tiny_run()
    batch = _batch(cfg, "val", train=False)
    with pytest.raises(ValueError, match="evaluated twice"):
        evaluate(build_model(cfg.model), [batch, batch])


def test_lr_schedules():
    # official: constant within an epoch, cosine over epochs, no warm-up
    assert lr_factor(0, 0, 10, 5, "cosine_epoch", 0) == 1.0
    assert lr_factor(7, 1, 10, 5, "cosine_epoch", 0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))
    assert lr_factor(25, 5, 10, 5, "cosine_epoch", 0) == pytest.approx(0.5)
    assert lr_factor(25, 5, 10, 5, "cosine_step", 0) == pytest.approx(0.5)
    assert lr_factor(4, 0, 10, 5, "constant", 10) == pytest.approx(0.5)  # warm-up step 5 of 10
