"""FLOP counting against hand formulas; peak FLOP/s table; MFU arithmetic."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from clipvg.config import FusionConfig, ModelConfig
from clipvg.engine.flops import (eval_flops_per_sample, mfu, peak_flops, peak_flops_by_name,
                                 train_flops_per_sample)
from clipvg.engine.steps import forward
from clipvg.model import build_model

IN, HIDDEN, OUT = 3 * 4 * 4, 32, 4


class LinearStack(nn.Module):
    """image (B, 3, 4, 4) -> flatten 48 -> Linear(48, 32) -> ReLU -> Linear(32, 4) -> sigmoid."""

    def __init__(self, freeze_first: bool):
        super().__init__()
        self.first = nn.Linear(IN, HIDDEN)
        self.second = nn.Linear(HIDDEN, OUT)
        self.first.requires_grad_(not freeze_first)

    def forward(self, image, pixel_mask, tokens, token_mask):
        return self.second(self.first(image.flatten(1)).relu()).sigmoid()


def batch(b: int) -> dict:
    return {"image": torch.randn(b, 3, 4, 4), "pixel_mask": torch.zeros(b, 4, 4),
            "tokens": torch.zeros(b, 7, dtype=torch.long), "token_mask": torch.ones(b, 7),
            "target": torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(b, 1),
            "sample_id": [str(i) for i in range(b)]}


def test_linear_stack_flops_match_the_hand_formula():
    fwd = 2 * IN * HIDDEN + 2 * HIDDEN * OUT  # 2 FLOPs per multiply-add, per sample
    trainable = LinearStack(freeze_first=False)
    assert eval_flops_per_sample(trainable, batch(5)) == fwd
    # backward: weight grads of both layers (1x each) + the input grad of the second layer
    # (1x); the input of the first layer needs no grad
    assert train_flops_per_sample(trainable, batch(5)) == fwd + 2 * IN * HIDDEN + 2 * (2 * HIDDEN * OUT)
    frozen = LinearStack(freeze_first=True)
    # first layer frozen and nothing before it trainable: its backward does not run at all,
    # and the second layer needs no input grad either
    assert train_flops_per_sample(frozen, batch(5)) == fwd + 2 * HIDDEN * OUT


def test_train_flops_leave_grads_and_mode_as_they_were():
    model = LinearStack(freeze_first=False).eval()
    marker = torch.full_like(model.second.weight, 7.0)
    model.second.weight.grad = marker
    train_flops_per_sample(model, batch(2))
    assert model.second.weight.grad is marker and model.first.weight.grad is None
    assert not model.training


def test_clipvg_train_flops_count_the_frozen_towers_once_or_twice():
    arch = {"embed_dim": 32,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 32, "heads": 2, "layers": 2}}
    model = build_model(ModelConfig(arch=arch, image_size=64, context_length=16, taps=[0, 1],
                                    fusion=FusionConfig(layers=1, heads=2, dim_feedforward=64)))
    tokens = torch.zeros(3, 16, dtype=torch.long)
    tokens[:, :4] = torch.tensor([498, 5, 6, 499])
    b = {"image": torch.randn(3, 3, 64, 64), "pixel_mask": torch.zeros(3, 64, 64, dtype=torch.long),
         "tokens": tokens, "token_mask": (tokens > 0).long(),
         "target": torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(3, 1), "sample_id": ["a", "b", "c"]}
    fwd = eval_flops_per_sample(model, b)
    # the eval count includes attention: in eval mode nn.MultiheadAttention would take its fused
    # fast path, which FlopCounterMode cannot see; the train-mode forward never does
    with FlopCounterMode(display=False) as counter:
        forward(model.train(), b)
    assert fwd == counter.get_total_flops() / 3
    train = train_flops_per_sample(model, b)
    # frozen towers: no weight grads (text tower: no backward at all), so well under 3x forward
    assert fwd < train < 3 * fwd
    model.backbone.set_freeze("none")
    assert train < train_flops_per_sample(model, b) <= 3 * fwd


def test_peak_flops_table():
    assert peak_flops("cpu") is None
    assert peak_flops(torch.device("cpu"), torch.float32) is None
    assert peak_flops_by_name("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_by_name("NVIDIA H100 80GB HBM3", "tf32") == 495e12
    assert peak_flops_by_name("NVIDIA H100 PCIe", torch.float16) == 756e12
    assert peak_flops_by_name("NVIDIA H200") == 989e12
    assert peak_flops_by_name("NVIDIA A100-SXM4-80GB", torch.float32) == 19.5e12
    assert peak_flops_by_name("NVIDIA A10G") == 70e12  # not the A100's nor the A10's
    assert peak_flops_by_name("NVIDIA A10") == 125e12
    assert peak_flops_by_name("NVIDIA L4") == 121e12
    assert peak_flops_by_name("NVIDIA L40S") == 362e12
    assert peak_flops_by_name("Tesla V100-SXM2-16GB") is None  # no bf16 tensor cores
    assert peak_flops_by_name("Tesla V100-SXM2-16GB", torch.float16) == 125e12
    assert peak_flops_by_name("Some Future GPU") is None
    with pytest.raises(ValueError, match="unknown dtype"):
        peak_flops_by_name("NVIDIA H100", torch.int8)


def test_mfu_arithmetic():
    assert mfu(100.0, 1e9, 1e12) == pytest.approx(0.1)
    assert mfu(2500.0, 3.0e11, 989e12) == pytest.approx(2500 * 3.0e11 / 989e12)
    assert mfu(100.0, 1e9, None) is None
    assert mfu(100.0, 1e9, 0.0) is None
