"""Overrides of a tiny Ray Train run, shared by the distributed tests and the golden curve."""

from pathlib import Path


# A tiny Ray Train run: 64-px world, 2-layer towers, fractional CPUs (2-core machine: whole-CPU
# workers plus Ray Data tasks deadlock, see docs/platform notes).
TINY_TRAIN = [
    "data.synth.image_size=64", "data.synth.train_images=24", "data.synth.val_images=6",
    "data.synth.test_images=6", "data.augment.scale=false", "data.augment.crop=false",
    "data.augment.color=false",
    "model.arch={embed_dim: 32, vision_cfg: {image_size: 64, patch_size: 16, width: 32, layers: 2, head_width: 16},"
    " text_cfg: {context_length: 24, vocab_size: 49408, width: 32, heads: 2, layers: 2}}",
    "model.image_size=64", "model.context_length=24", "model.taps=[0,1]",
    "model.fusion={layers: 1, heads: 2, dim_feedforward: 64, dropout: 0.0}",
    "train.epochs=2", "train.batch_size=8", "train.eval_batch_size=16", "train.lr=1e-3",
    "train.log_every=1", "scaling.cpus_per_worker=0.5", "scaling.data_cpus=0.5",
]

# The fixed-seed run whose per-step loss and held-out accuracy are committed under tests/golden/
# (tests/distributed/test_trainer.py compares a fresh run; the fault-tolerance test compares a
# run that lost its node).
GOLDEN = Path(__file__).parent / "golden" / "train_loss_tiny.json"
GOLDEN_RUN = [*TINY_TRAIN, "train.epochs=3", "storage.run_name=golden"]
