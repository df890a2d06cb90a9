"""Tiny CLIP-VG configurations and inputs for the model tests (fast on 2 CPU cores)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from clipvg.config import FusionConfig, ModelConfig

IMAGE_SIZE = 64  # 4 x 4 patches of 16
CONTEXT = 16
VOCAB = 500


def tiny_arch(text_heads: int = 2, vision_layers: int = 6) -> dict:
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": vision_layers, "width": 32,
                       "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 32,
                     "heads": text_heads, "layers": 2},
    }


def tiny_config(**overrides) -> ModelConfig:
    cfg = ModelConfig(arch=tiny_arch(), image_size=IMAGE_SIZE, context_length=CONTEXT,
                      fusion=FusionConfig(layers=2, heads=4, dim_feedforward=64))
    return dataclasses.replace(cfg, **overrides)


def tiny_inputs(batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Images, pixel masks (1 = padding), tokens (SOT ... EOT, zero-padded), token masks."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    pixel_mask = torch.zeros(batch, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.int32)
    pixel_mask[0, :20] = 1  # top padding: first patch row ignored
    pixel_mask[1 % batch, :, 50:] = 1
    image[pixel_mask.bool().unsqueeze(1).expand_as(image)] = 0
    tokens = torch.zeros(batch, CONTEXT, dtype=torch.int64)
    for i in range(batch):
        n = 2 + i  # words
        tokens[i, 0] = VOCAB - 2
        tokens[i, 1:1 + n] = torch.randint(1, VOCAB - 2, (n,), generator=g)
        tokens[i, 1 + n] = VOCAB - 1
    return image, pixel_mask, tokens, (tokens > 0).to(torch.int64)


# Test modules cannot import this conftest by name (pytest runs with --import-mode=importlib),
# so the factories are handed out as fixtures.
@pytest.fixture
def make_config():
    """``make_config(**ModelConfig overrides) -> ModelConfig`` for the tiny towers."""
    return tiny_config


@pytest.fixture
def make_arch():
    """``make_arch(text_heads=2, vision_layers=6) -> dict`` open_clip model config."""
    return tiny_arch


@pytest.fixture
def make_inputs():
    """``make_inputs(batch=3, seed=0) -> (image, pixel_mask, tokens, token_mask)``."""
    return tiny_inputs
