"""Learning test: CLIP-VG from the committed towers learns to localise; from untrained towers it
does not, in the same short run.

What the issue asks for, >= 0.46 held-out Acc@0.5 on the full world (3-6 objects), does not hold
yet (see docs/pretraining.md): this pins the part that does, single-object scenes, where the
box must come from the towers' patch features through the fusion.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clipvg.config import load_config
from clipvg.engine.local import train_local

ROOT = Path(__file__).resolve().parents[2]
SHORT_RUN = [
    "data.synth.min_objects=1", "data.synth.max_objects=1", "data.synth.train_images=600",
    "data.synth.val_images=100", "data.synth.test_images=100",
    "train.epochs=2", "train.max_steps_per_epoch=100", "train.warmup_steps=50", "train.log_every=50",
]


def _held_out_acc(tmp_path: Path, weights: str | None) -> float:
    overrides = SHORT_RUN + [f"storage.root={tmp_path}", f"model.weights={weights or 'null'}"]
    cfg = load_config(ROOT / "configs/demo.yaml", overrides)
    return train_local(cfg, progress=False).test["test"]["acc"]


@pytest.mark.slow
def test_committed_towers_make_localisation_learnable(tmp_path):
    towers = str(ROOT / "clipvg/assets/towers/tiny-synth-v1/open_clip_model.safetensors")
    trained = _held_out_acc(tmp_path / "trained", towers)
    untrained = _held_out_acc(tmp_path / "untrained", None)
    # measured (one core, 2 epochs): 0.84 from the committed towers, 0.02 from untrained ones
    assert trained >= 0.5, trained
    assert untrained <= 0.15, untrained
