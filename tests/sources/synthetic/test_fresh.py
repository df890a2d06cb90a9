"""Fresh training images: the same world, never its fixed images, a new stream per epoch."""

from __future__ import annotations

import numpy as np
import pytest

from clipvg.config import Config, ConfigError, SynthConfig, from_dict, load_config
from clipvg.engine.batching import build_loader, ensure_dataset
from clipvg.sources.synthetic.fresh import FreshWorld, scene_config_at
from clipvg.sources.synthetic.scenes import generate_image, image_rng
from clipvg.sources.synthetic.text import EXPR_TYPES

SYNTH = SynthConfig(image_size=64, train_images=20, val_images=4, test_images=4)


def _raw(image, box, text):
    return np.asarray(image), tuple(box), text


def test_epoch_has_exactly_epoch_samples_and_epochs_differ():
    world = FreshWorld(SYNTH, seed=3, transform=_raw, epoch_samples=37)
    first = [sid for _, sid in world]
    assert len(first) == 37 == len(set(first))
    world.set_epoch(1)
    second = [sid for _, sid in world]
    assert not set(first) & set(second)
    world.set_epoch(0)
    assert sorted(sid for _, sid in world) == sorted(first)  # reproducible per epoch


def test_samples_are_world_samples_but_not_fixed_split_images():
    world = FreshWorld(SYNTH, seed=0, transform=_raw, epoch_samples=40)
    fixed = [np.asarray(generate_image(image_rng(0, "train", i), SYNTH).image) for i in range(20)]
    for (pixels, box, text), sample_id in world:
        assert pixels.shape == (64, 64, 3) and text
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert not any(np.array_equal(pixels, f) for f in fixed), sample_id


def test_build_loader_streams_fresh_images_for_training_only(tmp_path):
    cfg: Config = from_dict(Config, {
        "data": {"synth": {"image_size": 64, "train_images": 12, "val_images": 3, "test_images": 3},
                 "fresh_train_images": True, "augment": {"scale": False, "crop": False}},
        "model": {"image_size": 64},
        "train": {"batch_size": 8},
        "storage": {"root": str(tmp_path)},
    })
    uri = ensure_dataset(cfg)
    train = build_loader(cfg, uri, "train", train=True)
    assert isinstance(train.dataset, FreshWorld)
    batches = list(train)
    assert len(batches) == len(train) == train.dataset.epoch_samples // 8
    assert all("fresh-e0" in sid for b in batches for sid in b["sample_id"])
    val = build_loader(cfg, uri, "val", train=False)
    assert {t for b in val for t in b["expr_type"]} <= set(EXPR_TYPES)


def test_easy_to_hard_scenes_grow_from_two_objects_to_the_world_counts():
    world = SynthConfig(image_size=64, min_objects=3, max_objects=6)
    counts = [(c.min_objects, c.max_objects) for c in (scene_config_at(world, e, 6) for e in range(8))]
    assert counts == [(2, 2), (3, 3), (3, 3), (3, 4), (3, 5), (3, 5), (3, 6), (3, 6)]
    assert scene_config_at(world, 0, 0) is world  # no ramp: the world from the start
    stream = FreshWorld(world, 0, lambda image, box, text: text, epoch_samples=40, easy_to_hard_epochs=6)
    stream.set_epoch(0)
    ids = {sample_id.rsplit("-e", 1)[0] for _, sample_id in stream}
    assert ids  # epoch 0 draws two-object scenes only
    for image_id in ids:
        index = int(image_id.rsplit("-", 1)[1])
        assert len(generate_image(image_rng(0, "fresh-e0", index), scene_config_at(world, 0, 6)).objects) == 2


def test_easy_to_hard_needs_the_fresh_stream():
    with pytest.raises(ConfigError, match="easy_to_hard_epochs"):
        load_config(None, ["data.easy_to_hard_epochs=3"])
