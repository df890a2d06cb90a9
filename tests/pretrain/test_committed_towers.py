"""The committed demo towers: a real open_clip weights file that knows the synthetic world."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipvg.config import SynthConfig, load_config
from clipvg.model import build_model
from clipvg.model.backbone import build_clip
from clipvg.model.clipvg import offline_config
from clipvg.pretrain.loop import collate_scenes
from clipvg.pretrain.objective import phrase_patch_similarity
from clipvg.pretrain.scenes import make_scene

ROOT = Path(__file__).resolve().parents[2]
TOWERS = ROOT / "clipvg/assets/towers/tiny-synth-v1"
DEMO = ROOT / "configs/demo.yaml"
PROBE_SEED = 424_242  # neither the pre-training stream nor its probe stream


def _demo_model_config():
    return load_config(DEMO).model


def test_weights_file_is_small_complete_and_named_by_the_demo():
    model_cfg = _demo_model_config()
    path = TOWERS / "open_clip_model.safetensors"
    assert path.stat().st_size <= 20 * 2**20
    assert (ROOT / model_cfg.weights).resolve() == path.resolve()
    state = load_file(str(path))
    assert set(state) == set(build_clip(offline_config(model_cfg)).state_dict())
    assert all(torch.isfinite(v).all() for v in state.values())


def test_demo_model_loads_the_towers_frozen_but_for_the_tuned_last_blocks(monkeypatch):
    monkeypatch.chdir(ROOT)  # the demo config names the weights relative to the repository root
    model_cfg = _demo_model_config()
    model = build_model(model_cfg)
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    n = model_cfg.text_conditioning.tune_tower_blocks
    visual_blocks = len(model.backbone.visual.transformer.resblocks)
    tuned = tuple(f"visual.transformer.resblocks.{i}." for i in range(visual_blocks - n, visual_blocks))
    tuned += tuple(f"transformer.resblocks.{i}." for i in range(2 - n, 2))  # 2 text blocks
    want = {name for name, _ in model.backbone.named_parameters()
            if name.startswith(tuned + ("ln_final.",)) or name in ("text_projection",
                                                                   "visual.positional_embedding")}
    assert trainable == want
    assert not any(name.startswith(("visual.ln_post", "visual.proj")) for name in trainable)
    state = load_file(str(TOWERS / "open_clip_model.safetensors"))  # the prior's map: the towers' own
    torch.testing.assert_close(model.backbone.visual.proj.detach(), state["visual.proj"])


def test_model_card_states_command_seed_and_curve():
    card = (TOWERS / "MODEL_CARD.md").read_text()
    command = re.search(r"^\s*(clipvg pretrain-towers .*)$", card, re.M).group(1)
    assert "--out clipvg/assets/towers/tiny-synth-v1" in command and "--seed" in command
    assert "| step | images |" in card and (TOWERS / "curve.png").is_file()


def _phrase_top1(clip, scenes) -> float:
    """Share of describing phrases whose most similar patch lies on a described object."""
    batch = collate_scenes(scenes, "imagenet", phrase_context=16)
    with torch.no_grad():
        sim = phrase_patch_similarity(clip, batch["image"], batch["phrase_tokens"])
    targets = batch["phrase_targets"]
    positive = targets.any(-1) & batch["phrase_valid"]
    hit = targets.gather(-1, sim.argmax(-1, keepdim=True)).squeeze(-1)
    return hit[positive].float().mean().item()


@pytest.mark.parametrize("objects", [(1, 1), (3, 6)])
def test_towers_find_described_objects_on_unseen_scenes(objects):
    """Phrase -> patch retrieval with the towers alone (no trained head) on fresh scenes: the
    committed towers find the object far above what untrained towers of the same shape do."""
    model_cfg = _demo_model_config()
    scene_cfg = SynthConfig(image_size=model_cfg.image_size, min_objects=objects[0], max_objects=objects[1])
    scenes = [make_scene(PROBE_SEED, i, scene_cfg, 16) for i in range(48)]
    torch.manual_seed(0)
    clip = build_clip(offline_config(model_cfg)).eval()
    untrained = _phrase_top1(clip, scenes)
    clip.load_state_dict(load_file(str(TOWERS / "open_clip_model.safetensors")))
    trained = _phrase_top1(clip, scenes)
    assert trained >= 0.6 and trained >= untrained + 0.3, (trained, untrained)
