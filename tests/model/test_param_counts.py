"""Parameter counts of the default ViT-B/16 CLIP-VG against the method doc §2.4 table."""

from __future__ import annotations

from clipvg.config import ModelConfig
from clipvg.model.clipvg import build_model, count_parameters

# Official ML_CLIP_VG ViT-B/16, distinct tensors (method doc §2.4 / §10).
OFFICIAL_TOTAL = 171_302_405
OFFICIAL_TRAINABLE = 21_832_964
# Tensors the official model holds but never uses; clipvg does not create them.
VISU_PROJ = 512 * 512 + 512  # `visu_proj` Linear 512->512, defined but never called (trainable)
LN_POST = 2 * 768  # CLIP visual ln_post weight + bias: taps are read before it (frozen)
VISUAL_PROJ = 768 * 512  # CLIP visual proj: CLIP-VG uses raw tapped tokens (frozen)
LOGIT_SCALE = 1  # CLIP contrastive temperature, no role in grounding (frozen)


def test_default_vit_b16_parameter_counts():
    model = build_model(ModelConfig())  # random init, no hub access
    total, trainable = count_parameters(model)
    assert total == OFFICIAL_TOTAL - VISU_PROJ - LN_POST - VISUAL_PROJ - LOGIT_SCALE
    # Only visu_proj of the dead tensors was trainable; the others are frozen CLIP tensors.
    assert trainable == OFFICIAL_TRAINABLE - VISU_PROJ
    assert (total, trainable) == (170_644_996, 21_570_308)
    assert model.fusion.seq_len == 275 and model.backbone.taps == [0, 3, 7, 11]
