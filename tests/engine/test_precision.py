"""Precision policies on a tiny random-init CLIP-VG (CPU: bf16 autocast and fp16 matmuls run)."""

import copy

import pytest
import torch
from open_clip.transformer import LayerNorm, LayerNormFp32
from torch import nn

from clipvg.config import FusionConfig, ModelConfig
from clipvg.engine.loss import box_losses
from clipvg.engine.precision import PRECISIONS, apply_precision, resolve_precision
from clipvg.engine.steps import MODEL_INPUTS, build_optimizer, train_step
from clipvg.model import build_model

SIZE, CONTEXT, VOCAB = 64, 16, 500


def tiny_model(freeze: str = "official") -> nn.Module:
    arch = {"embed_dim": 32,
            "vision_cfg": {"image_size": SIZE, "layers": 4, "width": 32, "head_width": 16,
                           "patch_size": 16},
            "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 32, "heads": 2,
                         "layers": 2}}
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, image_size=SIZE, context_length=CONTEXT, freeze=freeze,
                                   fusion=FusionConfig(layers=2, heads=4, dim_feedforward=64)))


def tiny_batch(batch: int = 4) -> dict:
    g = torch.Generator().manual_seed(1)
    tokens = torch.zeros(batch, CONTEXT, dtype=torch.int64)
    tokens[:, 0], tokens[:, 6] = VOCAB - 2, VOCAB - 1  # SOT, EOT
    tokens[:, 1:6] = torch.randint(1, VOCAB - 2, (batch, 5), generator=g)
    pixel_mask = torch.zeros(batch, SIZE, SIZE, dtype=torch.int64)
    pixel_mask[0, 40:] = 1
    return {"image": torch.randn(batch, 3, SIZE, SIZE, generator=g), "pixel_mask": pixel_mask,
            "tokens": tokens, "token_mask": (tokens > 0).long(),
            "target": torch.tensor([[0.5, 0.5, 0.3, 0.4]]).repeat(batch, 1),
            "sample_id": [str(i) for i in range(batch)]}


def intermediates(model, batch) -> dict:
    model.eval()
    with torch.no_grad():
        return model.forward_intermediates(*(batch[k] for k in MODEL_INPUTS))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def reference():
    model = tiny_model()
    return model, intermediates(model, tiny_batch())


def test_resolve_precision_auto_and_names():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", torch.device("cuda", 1)) == "bf16"
    assert resolve_precision("auto", "cuda") == "bf16"
    for name in ("fp32", "bf16", "bf16-all", "fp16-frozen"):
        assert resolve_precision(name, "cpu") == name
    assert set(PRECISIONS) == {"auto", "fp32", "bf16", "bf16-all", "fp16-frozen"}
    with pytest.raises(ValueError, match="unknown precision 'fp16'.*fp16-frozen"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        apply_precision(tiny_model(), "half", "cpu")


def test_fp32_and_auto_on_cpu_change_nothing(reference):
    model, ref = reference
    for policy in ("fp32", "auto"):
        m = apply_precision(copy.deepcopy(model), policy, "cpu")
        assert all(p.dtype == torch.float32 for p in m.parameters())
        assert m.backbone.autocast_dtype is None
        out = intermediates(m, tiny_batch())
        assert torch.equal(out["fusion_out"], ref["fusion_out"])


def _record_dtypes(model) -> tuple[dict, list]:
    """Forward hooks recording output dtypes of a visual and a text tower Linear, the trainable
    projections and a fusion Linear."""
    seen = {}
    watch = {"visual_mlp": model.backbone.visual.transformer.resblocks[1].mlp.c_fc,
             "text_mlp": model.backbone.transformer.resblocks[0].mlp.c_fc,
             "ml_visu_proj": model.ml_visu_proj, "text_proj": model.text_proj,
             "fusion_linear": model.fusion.encoder.layers[0].linear1}
    handles = []
    for name, mod in watch.items():
        def hook(mod, args, out, name=name):
            seen[name] = (args[0].dtype, out.dtype)
        handles.append(mod.register_forward_hook(hook))
    return seen, handles


def test_bf16_autocasts_the_towers_only_and_stays_close_to_fp32(reference):
    model, ref = reference
    m = apply_precision(copy.deepcopy(model), "bf16", "cpu")
    assert m.backbone.autocast_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in m.parameters())  # autocast: weights stay fp32
    seen, handles = _record_dtypes(m)
    out = intermediates(m, tiny_batch())
    for h in handles:
        h.remove()
    assert seen["visual_mlp"][1] == torch.bfloat16 and seen["text_mlp"][1] == torch.bfloat16
    assert seen["ml_visu_proj"] == (torch.float32, torch.float32)
    assert seen["text_proj"] == (torch.float32, torch.float32)
    assert seen["fusion_linear"] == (torch.float32, torch.float32)  # autocast ends with the towers
    for key in ("visual_multilevel", "text_features", "fusion_out", "pred_boxes"):
        assert out[key].dtype == torch.float32 and torch.isfinite(out[key]).all()
    # bf16 has an 8-bit mantissa: tower outputs drift by ~1e-2 relative, never 0 (which would
    # mean nothing ran in bf16) and never O(1) (which would mean a wrong cast somewhere).
    for key in ("visual_multilevel", "text_features", "fusion_out"):
        assert 1e-4 < rel_err(out[key], ref[key]) < 5e-2, key
    assert (out["pred_boxes"] - ref["pred_boxes"]).abs().max() < 1e-2


def test_fp16_frozen_stores_frozen_matmul_weights_half_and_keeps_the_rest_fp32(reference):
    model, ref = reference
    m = apply_precision(copy.deepcopy(model), "fp16-frozen", "cpu")
    bb = m.backbone
    assert bb.autocast_dtype is None
    half = {n for n, p in m.named_parameters() if p.dtype == torch.float16}
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32, name  # trainable: fp32 master weights
    assert "visual.conv1.weight" in {n.removeprefix("backbone.") for n in half}
    assert bb.visual.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.float16
    assert bb.visual.transformer.resblocks[0].attn.out_proj.weight.dtype == torch.float16
    assert bb.transformer.resblocks[0].mlp.c_fc.bias.dtype == torch.float16
    assert bb.text_projection.dtype == torch.float16
    for p in (bb.token_embedding.weight, bb.positional_embedding, bb.visual.class_embedding,
              bb.visual.positional_embedding, bb.ln_final.weight, bb.visual.ln_pre.bias):
        assert p.dtype == torch.float32
    norms = [mod for mod in bb.modules() if isinstance(mod, nn.LayerNorm)]
    assert norms and all(type(mod) is LayerNormFp32 for mod in norms)
    assert all(p.dtype == torch.float32 for mod in norms for p in mod.parameters())
    assert all(p.dtype == torch.float32 for n, p in m.named_parameters() if not n.startswith("backbone."))
    seen, handles = _record_dtypes(m)
    out = intermediates(m, tiny_batch())
    for h in handles:
        h.remove()
    assert seen["visual_mlp"] == (torch.float16, torch.float16)
    assert seen["text_mlp"] == (torch.float16, torch.float16)
    assert seen["ml_visu_proj"] == (torch.float32, torch.float32)
    assert seen["fusion_linear"] == (torch.float32, torch.float32)
    for key in ("visual_multilevel", "text_features", "fusion_out"):
        assert out[key].dtype == torch.float32 and torch.isfinite(out[key]).all()
        assert 1e-5 < rel_err(out[key], ref[key]) < 1e-2, key  # fp16: 11-bit mantissa


@pytest.mark.parametrize("policy", ["fp32", "bf16", "fp16-frozen"])
def test_trainable_parameters_get_fp32_gradients_and_train(policy):
    model = apply_precision(tiny_model(), policy, "cpu")
    batch = tiny_batch()
    model.train()
    loss = box_losses(model(*(batch[k] for k in MODEL_INPUTS)), batch["target"])["loss"]
    assert loss.dtype == torch.float32
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == torch.float32, name
            assert torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    # the trainable visual positional embedding sits inside the low-precision tower
    assert model.backbone.visual.positional_embedding.grad.abs().sum() > 0
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    losses = [train_step(model, batch, optimizer)["loss"] for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_policies_can_be_switched_back(reference):
    model, ref = reference
    m = apply_precision(copy.deepcopy(model), "fp16-frozen", "cpu")
    m = apply_precision(m, "bf16", "cpu")
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert not any(type(mod) is LayerNormFp32 for mod in m.modules())
    m = apply_precision(m, "fp32", "cpu")
    assert m.backbone.autocast_dtype is None
    assert all(type(mod) is LayerNorm for mod in m.backbone.modules() if isinstance(mod, nn.LayerNorm))
    out = intermediates(m, tiny_batch())
    assert rel_err(out["fusion_out"], ref["fusion_out"]) < 1e-2  # weights went through fp16 once


def test_fp16_frozen_leaves_trainable_towers_fp32():
    m = apply_precision(tiny_model(freeze="none"), "fp16-frozen", "cpu")
    assert all(p.dtype == torch.float32 for p in m.parameters())
