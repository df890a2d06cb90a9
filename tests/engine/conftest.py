"""A tiny end-to-end run config (64-px synthetic world, 2-layer towers) for engine tests."""

import pytest

from clipvg.config import load_config

TINY_RUN = [
    "data.synth.image_size=64", "data.synth.train_images=16", "data.synth.val_images=5",
    "data.synth.test_images=5", "data.augment.scale=false", "data.augment.crop=false",
    "model.arch={embed_dim: 32, vision_cfg: {image_size: 64, patch_size: 16, width: 32, layers: 2, head_width: 16},"
    " text_cfg: {context_length: 77, vocab_size: 49408, width: 32, heads: 2, layers: 2}}",
    "model.image_size=64", "model.taps=[0,1]", "model.freeze=none",
    "model.fusion={layers: 1, heads: 2, dim_feedforward: 64}",
    "train.epochs=2", "train.batch_size=8", "train.eval_batch_size=7", "train.lr=1e-3", "train.log_every=1",
]


@pytest.fixture
def tiny_run(tmp_path):
    """``tiny_run(*extra_overrides) -> Config`` writing under ``tmp_path``."""
    def make(*extra: str):
        return load_config(None, [*TINY_RUN, f"storage.root={tmp_path}", "storage.run_name=t", *extra])
    return make
