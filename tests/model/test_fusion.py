"""Fusion encoder: DETR post-norm layer semantics, masks, init, [REG] and box head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipvg.config import FusionConfig
from clipvg.model.fusion import FusionEncoderLayer, build_fusion

D, HEADS, FF = 16, 4, 32


def _reference_layer(layer: FusionEncoderLayer, x, pos, pad):
    """The layer written out from the method doc §2.1 formulas (eval mode, no dropout)."""
    wq, wk, wv = layer.self_attn.in_proj_weight.chunk(3)  # rows [Wq; Wk; Wv]
    bq, bk, bv = layer.self_attn.in_proj_bias.chunk(3)
    B, L, _ = x.shape
    split = lambda t: t.view(B, L, HEADS, D // HEADS).transpose(1, 2)  # noqa: E731
    q, k, v = split((x + pos) @ wq.T + bq), split((x + pos) @ wk.T + bk), split(x @ wv.T + bv)
    logits = q @ k.transpose(-1, -2) / math.sqrt(D // HEADS)
    logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
    attn = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, L, D)
    attn = layer.self_attn.out_proj(attn)
    x = F.layer_norm(x + attn, (D,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    ffn = layer.linear2(F.relu(layer.linear1(x)))
    return F.layer_norm(x + ffn, (D,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)


def _randomise(module):
    torch.manual_seed(5)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 and p.shape[0] == D else 0))


def test_layer_matches_the_written_out_formula():
    layer = FusionEncoderLayer(D, HEADS, FF, dropout=0.1, layernorm_eps=1e-5).eval()
    _randomise(layer)
    torch.manual_seed(0)
    x, pos = torch.randn(2, 7, D), torch.randn(1, 7, D)
    pad = torch.tensor([[False] * 5 + [True] * 2, [False] * 7])
    with torch.no_grad():
        torch.testing.assert_close(layer(x, pos, pad), _reference_layer(layer, x, pos, pad),
                                   atol=1e-5, rtol=1e-5)
        # Position on the values would change the result: it must not be there.
        moved = _reference_layer(layer, x, pos, pad)
        assert not torch.allclose(layer(x + pos, torch.zeros_like(pos), pad), moved, atol=1e-3)


def test_masked_keys_do_not_influence_other_tokens():
    fusion = build_fusion(FusionConfig(layers=2, heads=HEADS, dim_feedforward=FF), D, 9).eval()
    torch.manual_seed(0)
    text, visu = torch.randn(2, 4, D), torch.randn(2, 4, D)
    text_pad = torch.tensor([[False, False, True, True]] * 2)
    visu_pad = torch.tensor([[False, True, False, False]] * 2)
    with torch.no_grad():
        boxes, out = fusion(text, text_pad, visu, visu_pad)
        text2, visu2 = text.clone(), visu.clone()
        text2[:, 2:] += 5.0
        visu2[:, 1] -= 3.0
        boxes2, out2 = fusion(text2, text_pad, visu2, visu_pad)
    torch.testing.assert_close(boxes2, boxes)
    keep = torch.tensor([True, True, True, False, False, True, False, True, True])
    torch.testing.assert_close(out2[:, keep], out[:, keep])
    assert boxes.shape == (2, 4) and out.shape == (2, 9, D)
    assert ((boxes > 0) & (boxes < 1)).all()


def test_reg_token_and_position_table_are_used():
    fusion = build_fusion(FusionConfig(layers=1, heads=HEADS, dim_feedforward=FF), D, 5).eval()
    torch.manual_seed(0)
    args = (torch.randn(1, 2, D), torch.zeros(1, 2, dtype=torch.bool),
            torch.randn(1, 2, D), torch.zeros(1, 2, dtype=torch.bool))
    with torch.no_grad():
        base = fusion(*args)[0]
        fusion.reg_token.weight.add_(1.0)
        assert not torch.allclose(fusion(*args)[0], base)
        with pytest.raises(ValueError, match="position table"):
            fusion(args[0][:, :1], args[1][:, :1], args[2], args[3])


def test_initialisation_follows_detr():
    cfg = FusionConfig(layers=2, heads=8, dim_feedforward=128)
    fusion = build_fusion(cfg, 64, 10)
    for layer in fusion.encoder.layers:
        w = layer.self_attn.in_proj_weight  # (3D, D): Xavier bound sqrt(6 / (D + 3D))
        assert w.abs().max() <= math.sqrt(6 / (64 + 192)) + 1e-7
        assert w.std() > 0.5 * math.sqrt(2 / (64 + 192))
        assert layer.linear1.weight.abs().max() <= math.sqrt(6 / (64 + 128)) + 1e-7
        assert torch.all(layer.self_attn.in_proj_bias == 0)
        assert torch.all(layer.self_attn.out_proj.bias == 0)
        assert torch.all(layer.norm1.weight == 1) and torch.all(layer.norm2.bias == 0)
        assert layer.norm1.eps == 1e-5
    assert 0.8 < fusion.pos_embed.weight.std() < 1.2  # Embedding default N(0, 1)
    assert not hasattr(fusion.encoder, "norm")  # no final LayerNorm
    assert [type(m).__name__ for m in fusion.box_head.layers] == ["Linear"] * 3
    assert [m.out_features for m in fusion.box_head.layers] == [64, 64, 4]


def test_dropout_only_in_train_mode():
    fusion = build_fusion(FusionConfig(layers=1, heads=HEADS, dim_feedforward=FF, dropout=0.5),
                          D, 5)
    torch.manual_seed(0)
    args = (torch.randn(2, 2, D), torch.zeros(2, 2, dtype=torch.bool),
            torch.randn(2, 2, D), torch.zeros(2, 2, dtype=torch.bool))
    fusion.train()
    assert not torch.allclose(fusion(*args)[0], fusion(*args)[0])
    fusion.eval()
    torch.testing.assert_close(fusion(*args)[0], fusion(*args)[0])


def test_bad_head_count_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        build_fusion(FusionConfig(heads=3), 16, 5)
