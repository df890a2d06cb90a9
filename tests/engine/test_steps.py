"""train_step / evaluate on real batches of the synthetic world."""

import math
import random

import pytest
import torch
from torch import nn

from clipvg.engine.batching import build_loader, ensure_dataset
from clipvg.engine.steps import BATCH_KEYS, build_optimizer, evaluate, lr_factor, train_step
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
    control = result.summary()["shuffled_text"]  # the val split has several images: no skip
    assert control["total"] == n_samples and control["skipped"] == 0 and 0.0 <= control["acc"] <= 1.0


def test_eval_batches_name_each_samples_image(tiny_run):
    cfg = tiny_run()
    loader = build_loader(cfg, ensure_dataset(cfg), "val", train=False)
    image_of = {r.sample_id: r.image_id for r in loader.dataset.records}
    for batch in loader:
        assert set(batch) == set(BATCH_KEYS)  # the contract the Ray stream's batches keep too
        assert batch["image_id"] == [image_of[s] for s in batch["sample_id"]]


def test_evaluate_refuses_a_sample_seen_twice(tiny_run):
    cfg = tiny_run()
    batch = _batch(cfg, "val", train=False)
    with pytest.raises(ValueError, match="evaluated twice"):
        evaluate(build_model(cfg.model), [batch, batch])


# Stand-in models for the shuffled-text control. Every sample's box is a cell of a 4x4 grid
# (disjoint boxes: a wrong box has IoU 0); the image carries its sample's box in pixel
# (0, 0, 0:4) and the text carries it in tokens 1..4 (x1000).
class ImageOnly(nn.Module):
    """Text-blind: finds the box in the image."""

    def forward(self, image, pixel_mask, tokens, token_mask):
        return image[:, 0, 0, :4]


class TextReader(nn.Module):
    """Reads the box from the text."""

    def forward(self, image, pixel_mask, tokens, token_mask):
        return tokens[:, 1:5].float() / 1000


def grid_batches(image_ids: list[str], batch_size: int) -> list[dict]:
    """Batches of ``len(image_ids)`` (<= 16) samples; sample k's box is grid cell k."""
    n = len(image_ids)
    k = torch.arange(n)
    boxes = torch.stack([(k % 4 + 0.5) / 4, (k // 4 + 0.5) / 4, torch.full((n,), 0.2), torch.full((n,), 0.2)], 1)
    image = torch.zeros(n, 3, 4, 4)
    image[:, 0, 0, :4] = boxes
    tokens = torch.zeros(n, 77, dtype=torch.int64)
    tokens[:, 0], tokens[:, 1:5] = 49406, (boxes * 1000).round().long()
    batch = {"image": image, "pixel_mask": torch.zeros(n, 4, 4, dtype=torch.int64), "tokens": tokens,
             "token_mask": (tokens > 0).long(), "target": boxes, "sample_id": [f"s{i}" for i in range(n)],
             "image_id": list(image_ids), "expr_type": ["left" if i % 2 else "right" for i in range(n)]}
    return [{key: v[i:i + batch_size] for key, v in batch.items()} for i in range(0, n, batch_size)]


def test_shuffled_text_matches_the_real_accuracy_of_a_text_blind_model():
    images = [f"im{i // 2}" for i in range(10)]  # the last batch (2 samples) is one image
    result = evaluate(ImageOnly(), iter(grid_batches(images, 4)))  # one pass: an iterator
    summary = result.summary()
    assert summary["acc"] == 1.0
    assert summary["shuffled_text"] == {"acc": 1.0, "total": 10, "skipped": 0,
                                        "per_type": {"left": 1.0, "right": 1.0}}
    assert {"acc", "total", "loss", "per_type", "seconds"} <= set(summary)  # the keys it always had


def test_shuffled_text_falls_for_a_model_that_reads_the_text():
    images = [f"im{i // 2}" for i in range(10)]  # the last batch takes the carried texts
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    result = evaluate(TextReader(), grid_batches(images, 4), seed=1)
    # the global RNGs are untouched: an evaluation between epochs changes no training draw
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    assert result.accuracy == 1.0
    assert result.shuffled.total == 10 and result.shuffled.accuracy == 0.0  # every text foreign
    again = evaluate(TextReader(), grid_batches(images, 4), seed=1)
    assert again.summary()["shuffled_text"] == result.summary()["shuffled_text"]


def test_shuffled_text_skips_a_split_of_one_image():
    result = evaluate(TextReader(), grid_batches(["only"] * 5, 2))
    assert result.accuracy == 1.0
    assert result.summary()["shuffled_text"] == {"acc": None, "total": 0, "skipped": 5, "per_type": {}}


def test_shuffled_text_needs_image_ids_and_can_be_turned_off():
    batches = [{k: v for k, v in b.items() if k != "image_id"} for b in grid_batches(["a", "b"], 2)]
    with pytest.raises(ValueError, match="image_id"):
        evaluate(ImageOnly(), batches)
    summary = evaluate(ImageOnly(), batches, shuffled_text=False).summary()
    assert summary["acc"] == 1.0 and "shuffled_text" not in summary


def test_lr_schedules():
    # official: constant within an epoch, cosine over epochs, no warm-up
    assert lr_factor(0, 0, 10, 5, "cosine_epoch", 0) == 1.0
    assert lr_factor(7, 1, 10, 5, "cosine_epoch", 0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))
    assert lr_factor(25, 5, 10, 5, "cosine_epoch", 0) == pytest.approx(0.5)
    assert lr_factor(25, 5, 10, 5, "cosine_step", 0) == pytest.approx(0.5)
    assert lr_factor(4, 0, 10, 5, "constant", 10) == pytest.approx(0.5)  # warm-up step 5 of 10
