"""The similarity prior and tower tuning: CLIP's aligned map kept, read and fed to the fusion."""

from __future__ import annotations

import dataclasses

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clipvg.config import ConfigError, TextConditioningConfig, load_config
from clipvg.engine.steps import build_optimizer, set_lr, train_step
from clipvg.model.clipvg import build_model
from clipvg.model.similarity import centred_patch_similarity, eot_embeddings

ALIGNED_HEAD = ("backbone.visual.ln_post.weight", "backbone.visual.ln_post.bias",
                "backbone.visual.proj")


def _with(cfg, **conditioning):
    return dataclasses.replace(cfg, text_conditioning=TextConditioningConfig(**conditioning))


def test_centred_similarity_is_cosine_minus_valid_mean_and_zero_elsewhere():
    g = torch.Generator().manual_seed(0)
    eot, dense = torch.randn(2, 8, generator=g), torch.randn(2, 1 + 4, 8, generator=g)
    pad = torch.tensor([[False, False, True, False], [False, False, False, False]])
    got = centred_patch_similarity(eot, dense, pad)
    for b in range(2):
        valid = [j for j in range(4) if not pad[b, j]]
        cos = {j: float(dense[b, 1 + j] @ eot[b] / (dense[b, 1 + j].norm() * eot[b].norm()))
               for j in valid}
        mean = sum(cos.values()) / len(cos)
        assert got[b, 0] == 0  # CLS carries no map
        for j in range(4):
            want = cos[j] - mean if j in cos else 0.0
            assert got[b, 1 + j].item() == pytest.approx(want, abs=1e-6)


def test_eot_embedding_is_taken_at_the_largest_token_id():
    feats = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    tokens = torch.tensor([[7, 3, 9, 0, 0], [7, 2, 4, 9, 0]])
    torch.testing.assert_close(eot_embeddings(feats, tokens), torch.stack([feats[0, 2], feats[1, 3]]))


def test_official_default_keeps_no_aligned_head_and_no_prior(make_config):
    model = build_model(make_config())
    assert model.similarity_prior is None
    assert not set(ALIGNED_HEAD) & set(model.state_dict())
    assert model.lr_scales == {}


def test_prior_loads_clip_ln_post_and_proj_from_a_weights_file_and_keeps_them_frozen(
        make_config, make_arch, tmp_path):
    torch.manual_seed(3)
    clip = open_clip.CLIP(**make_arch(), quick_gelu=True)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    model = build_model(_with(make_config(weights=str(path), freeze="none"), similarity_prior=True))
    state = model.state_dict()
    torch.testing.assert_close(state["backbone.visual.proj"], clip.visual.proj.detach())
    torch.testing.assert_close(state["backbone.visual.ln_post.weight"], clip.visual.ln_post.weight.detach())
    params = dict(model.named_parameters())
    assert not any(params[k].requires_grad for k in ALIGNED_HEAD)  # even with freeze=none
    assert params["similarity_prior.scale"].requires_grad


def test_prior_map_equals_open_clip_dense_embeddings_against_encode_text(
        make_config, make_arch, make_inputs, tmp_path):
    torch.manual_seed(4)
    clip = open_clip.CLIP(**make_arch(), quick_gelu=True).eval()
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)
    model = build_model(_with(make_config(weights=str(path)), similarity_prior=True)).eval()
    image, pixel_mask, tokens, token_mask = make_inputs()
    with torch.no_grad():
        out = model.forward_intermediates(image, pixel_mask, tokens, token_mask)
        # open_clip's own forward: every token through ln_post and proj, text through encode_text
        last = len(clip.visual.transformer.resblocks) - 1
        ref = clip.visual.forward_intermediates(image, indices=[last], output_fmt="NLC",
                                                intermediates_only=True, output_extra_tokens=True)
        stream = torch.cat([ref["image_intermediates_prefix"][0], ref["image_intermediates"][0]], 1)
        dense = clip.visual.ln_post(stream) @ clip.visual.proj
        text = clip.encode_text(tokens)
    want = centred_patch_similarity(text, dense, out["patch_mask"])
    torch.testing.assert_close(out["similarity"], want, atol=1e-5, rtol=1e-4)


def test_prior_needs_the_last_block_tapped(make_config):
    with pytest.raises(ValueError, match="last tap"):
        build_model(_with(make_config(taps=[0, 2]), similarity_prior=True))


def test_prior_makes_the_box_depend_on_the_text_from_the_first_step(make_config, make_inputs):
    torch.manual_seed(0)
    model = build_model(_with(make_config(), similarity_prior=True)).eval()
    image, pixel_mask, tokens, token_mask = make_inputs(batch=2)
    with torch.no_grad():
        with_map = model.forward_intermediates(image, pixel_mask, tokens, token_mask)
        model.similarity_prior.scale.zero_()
        without = model.forward_intermediates(image, pixel_mask, tokens, token_mask)
    assert (with_map["visu_src"] - without["visu_src"]).abs().max() > 1e-3
    torch.testing.assert_close(with_map["visu_src"][:, 0], without["visu_src"][:, 0])  # CLS untouched


def test_tuned_tower_blocks_train_at_their_own_learning_rate(make_config):
    model = build_model(_with(make_config(), tune_tower_blocks=1, tower_lr_scale=0.1))
    params = dict(model.named_parameters())
    last = len(model.backbone.visual.transformer.resblocks) - 1
    assert params[f"backbone.visual.transformer.resblocks.{last}.mlp.c_fc.weight"].requires_grad
    assert not params[f"backbone.visual.transformer.resblocks.{last - 1}.mlp.c_fc.weight"].requires_grad
    assert params["backbone.text_projection"].requires_grad
    assert model.lr_scales["backbone.text_projection"] == 0.1
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    set_lr(optimizer, 2e-3)
    by_scale = {g["lr_scale"]: g for g in optimizer.param_groups}
    assert set(by_scale) == {1.0, 0.1}
    assert by_scale[0.1]["lr"] == pytest.approx(2e-4) and by_scale[1.0]["lr"] == pytest.approx(2e-3)
    tuned = {id(p) for p in by_scale[0.1]["params"]}
    assert tuned == {id(params[n]) for n in model.lr_scales}


def test_map_loss_trains_the_tuned_towers_to_single_out_the_target(make_config, make_inputs):
    torch.manual_seed(0)
    model = build_model(_with(make_config(), similarity_prior=True, tune_tower_blocks=1,
                              tower_lr_scale=1.0))
    image, pixel_mask, tokens, token_mask = make_inputs(batch=3)
    batch = {"image": image, "pixel_mask": pixel_mask, "tokens": tokens, "token_mask": token_mask,
             "target": torch.tensor([[0.6, 0.6, 0.3, 0.3]] * 3), "sample_id": ["a", "b", "c"]}
    optimizer = build_optimizer(model, lr=3e-3, weight_decay=0.0)
    first = train_step(model, batch, optimizer, map_loss_weight=1.0)
    for _ in range(15):
        last = train_step(model, batch, optimizer, map_loss_weight=1.0)
    assert set(first) == {"loss", "loss_bbox", "loss_giou", "loss_map"}
    assert last["loss_map"] < 0.7 * first["loss_map"]


def test_map_loss_needs_the_prior():
    with pytest.raises(ConfigError, match="map_loss"):
        load_config(None, ["train.map_loss=0.5"])
