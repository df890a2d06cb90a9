"""CLIP towers: taps, per-token text features, freezing, dead parameters, weight files."""

from __future__ import annotations

import dataclasses

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clipvg.model.backbone import WeightsLoadError, build_backbone, default_taps
from clipvg.model.clipvg import build_model

DEAD = {"logit_scale", "visual.ln_post.weight", "visual.ln_post.bias", "visual.proj"}


def _reference_clip(arch: dict, seed: int = 1) -> open_clip.CLIP:
    """A stock open_clip CLIP (QuickGELU, like OpenAI CLIP) with seeded random weights."""
    torch.manual_seed(seed)
    return open_clip.CLIP(**arch, quick_gelu=True).eval()


def _backbone_from(clip: open_clip.CLIP, cfg, tmp_path, name="clip.pt"):
    path = tmp_path / name
    torch.save(clip.state_dict(), path)
    return build_backbone(dataclasses.replace(cfg, weights=str(path), freeze="none")).eval()


def test_default_taps_follow_the_official_rule():
    assert default_taps(12) == [0, 3, 7, 11]
    assert default_taps(24) == [0, 7, 15, 23]


def test_taps_shape_order_and_values_match_open_clip(make_config, make_arch, make_inputs, tmp_path):
    arch = make_arch(vision_layers=12)
    cfg = make_config(arch=arch)
    clip = _reference_clip(arch)
    backbone = _backbone_from(clip, cfg, tmp_path)
    assert backbone.taps == [0, 3, 7, 11]
    image = make_inputs()[0]
    with torch.no_grad():
        multilevel = backbone.encode_image_multilevel(image)
        ref = clip.visual.forward_intermediates(
            image, indices=[0, 3, 7, 11], output_fmt="NLC", intermediates_only=True,
            output_extra_tokens=True)
    assert multilevel.shape == (3, 1 + 16, 4 * 32)
    for n in range(4):  # channel block n holds tap n: [CLS, patches], no ln_post
        want = torch.cat([ref["image_intermediates_prefix"][n], ref["image_intermediates"][n]], 1)
        torch.testing.assert_close(multilevel[..., 32 * n:32 * (n + 1)], want)


def test_text_features_are_per_token_projected_with_causal_mask_only(
        make_config, make_arch, make_inputs, tmp_path):
    arch = make_arch()
    clip = _reference_clip(arch)
    backbone = _backbone_from(clip, make_config(), tmp_path)
    tokens = make_inputs()[2]
    with torch.no_grad():
        feats = backbone.encode_text_tokens(tokens)
        pooled = clip.encode_text(tokens)  # ln_final + projection at the EOT (argmax) token
    assert feats.shape == (3, 16, 32)
    eot = tokens.argmax(dim=-1)
    torch.testing.assert_close(feats[torch.arange(3), eot], pooled)
    # Causal: changing a later padding id leaves earlier tokens untouched, changes itself
    # (padding is embedded and processed, there is no padding mask inside CLIP).
    changed = tokens.clone()
    changed[:, -1] = 7
    with torch.no_grad():
        feats2 = backbone.encode_text_tokens(changed)
    torch.testing.assert_close(feats2[:, :-1], feats[:, :-1])
    assert (feats2[:, -1] - feats[:, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("policy", ["official", "all", "none"])
def test_freeze_policies(make_config, policy):
    model = build_model(make_config(freeze=policy))
    tower = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    everything = {n for n, _ in model.backbone.named_parameters()}
    expected = {"official": {"visual.positional_embedding"}, "all": set(), "none": everything}
    assert tower == expected[policy]
    new = [p.requires_grad for n, p in model.named_parameters() if not n.startswith("backbone.")]
    assert new and all(new)  # projections, fusion and head always train


@pytest.mark.parametrize("policy,taps", [("none", None), ("official", None), ("none", [0, 2])])
def test_every_trainable_parameter_gets_a_gradient(make_config, make_inputs, policy, taps):
    model = build_model(make_config(freeze=policy, taps=taps)).train()
    names = set(model.state_dict())
    assert not {"backbone." + k for k in DEAD} & names
    assert not any(k.startswith("visu_proj") for k in names)
    if taps == [0, 2]:  # blocks after the last tap are removed, not left dead
        assert len(model.backbone.visual.transformer.resblocks) == 3
    model(*make_inputs()).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "wrapped"])
def test_weights_file_is_loaded_into_the_towers(make_config, make_arch, tmp_path, fmt):
    clip = _reference_clip(make_arch(), seed=3)
    state = clip.state_dict()
    path = tmp_path / f"clip.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "wrapped":  # open_clip training checkpoints: {"state_dict": {"module.*": ...}}
        torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    backbone = build_backbone(make_config(weights=str(path)))
    loaded = backbone.state_dict()
    assert set(loaded) == set(state) - DEAD
    for k, v in loaded.items():
        assert torch.equal(v, state[k]), k
    assert backbone.visual.positional_embedding.requires_grad  # freeze applied after loading


def test_weights_file_errors_name_the_file_and_keys(make_config, make_arch, tmp_path):
    state = _reference_clip(make_arch()).state_dict()
    missing = dict(state)
    del missing["ln_final.weight"]
    missing["bogus.weight"] = torch.zeros(1)
    path = tmp_path / "incomplete.pt"
    torch.save(missing, path)
    with pytest.raises(WeightsLoadError, match="incomplete.pt") as err:
        build_backbone(make_config(weights=str(path)))
    assert "ln_final.weight" in str(err.value) and "bogus.weight" in str(err.value)

    wrong = dict(state)
    wrong["token_embedding.weight"] = torch.zeros(10, 32)
    torch.save(wrong, tmp_path / "wrong_shape.pt")
    with pytest.raises(WeightsLoadError, match="token_embedding.weight"):
        build_backbone(make_config(weights=str(tmp_path / "wrong_shape.pt")))

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsLoadError, match="garbage.pt"):
        build_backbone(make_config(weights=str(tmp_path / "garbage.pt")))
    with pytest.raises(WeightsLoadError, match="does not exist"):
        build_backbone(make_config(weights=str(tmp_path / "absent.pt")))


def test_pretrained_tag_goes_through_open_clip(make_config, make_arch, monkeypatch):
    calls = []

    def fake_create_model(name, **kwargs):
        calls.append((name, kwargs))
        return open_clip.CLIP(**make_arch(), quick_gelu=True)

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    build_backbone(make_config(arch="ViT-B-16", pretrained="openai"))
    assert calls[0][0] == "ViT-B-16"
    assert calls[0][1]["pretrained"] == "openai" and calls[0][1]["force_quick_gelu"] is True
    with pytest.raises(ValueError, match="open_clip model name"):
        build_backbone(make_config(pretrained="openai"))  # inline dict arch has no hub weights
