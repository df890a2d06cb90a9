"""Tower pre-training end to end on a tiny arch: the weights load into CLIP-VG as CLIP weights."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from clipvg.cli import main
from clipvg.config import FusionConfig, ModelConfig, SynthConfig
from clipvg.model import build_model
from clipvg.model.backbone import build_clip
from clipvg.pretrain.loop import WEIGHTS_FILE, PretrainConfig, collate_scenes, pretrain_towers
from clipvg.pretrain.objective import TowerPretrainer, encode_text_pooled
from clipvg.pretrain.scenes import make_scene
from listing import listing, refusal_line

ARCH = {"embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
MODEL = ModelConfig(arch=ARCH, image_size=64, taps=[0, 1],
                    fusion=FusionConfig(layers=1, heads=2, dim_feedforward=32))


def test_pooled_text_of_short_tokens_equals_open_clip_encode_text():
    torch.manual_seed(0)
    clip = build_clip(MODEL)
    scene = make_scene(0, 0, SynthConfig(image_size=64, min_objects=1, max_objects=3), 16)
    batch = collate_scenes([scene], "imagenet", phrase_context=16)
    ours = encode_text_pooled(clip, batch["phrase_tokens"])
    full = torch.nn.functional.pad(batch["phrase_tokens"], (0, 77 - 16))
    torch.testing.assert_close(ours, clip.encode_text(full), rtol=1e-5, atol=1e-5)


def test_losses_fall_on_a_fixed_batch():
    torch.manual_seed(0)
    pretrainer = TowerPretrainer(build_clip(MODEL))
    cfg = SynthConfig(image_size=64, min_objects=1, max_objects=3)
    batch = collate_scenes([make_scene(1, i, cfg, 16) for i in range(8)], "imagenet", 16)
    opt = torch.optim.AdamW(pretrainer.parameters(), lr=3e-3)
    with torch.no_grad():
        first = {k: float(v) for k, v in pretrainer(batch).items()}
    for _ in range(100):
        loss = pretrainer(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = {k: float(v) for k, v in pretrainer(batch).items()}
    for key in ("align", "cells", "box", "contrastive"):  # every term learns, none is dead
        assert last[key] < 0.8 * first[key], (key, first[key], last[key])


@pytest.mark.parametrize("context", [77, 12])  # 12: captions are cut to the towers' context
def test_pretrained_towers_load_as_clip_weights(tmp_path, context):
    arch = {**ARCH, "text_cfg": {**ARCH["text_cfg"], "context_length": context}}
    model_cfg = dataclasses.replace(MODEL, arch=arch, context_length=context)
    cfg = PretrainConfig(steps=3, batch_size=4, probe_images=4, eval_every=2, warmup_steps=1,
                         stages=[[0.0, 1, 2], [0.5, 2, 3]])
    summary = pretrain_towers(cfg, model_cfg, tmp_path, progress=False)
    curve = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [2, 3]
    assert summary["final_probe"] == curve[-1]["probe"]
    model = build_model(dataclasses.replace(model_cfg, weights=str(tmp_path / WEIGHTS_FILE), freeze="official"))
    clip = build_clip(model_cfg)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / WEIGHTS_FILE))
    assert set(state) == set(clip.state_dict())  # a complete open_clip CLIP state_dict
    torch.testing.assert_close(model.backbone.visual.positional_embedding,
                               state["visual.positional_embedding"])
    trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert trainable == ["visual.positional_embedding"]


def test_cli_writes_weights_and_model_card(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"arch": ARCH, "image_size": 64, "taps": [0, 1]}}))
    out = tmp_path / "towers"
    rc = main(["pretrain-towers", "--config", str(config), "--out", str(out), "--steps", "2",
               "--batch-size", "4", "--eval-every", "1", "--threads", "1"])
    assert rc == 0
    card = (out / "MODEL_CARD.md").read_text()
    assert "--steps 2" in card and "| 2 | 8 |" in card  # the command and the curve's last row
    assert (out / "curve.png").stat().st_size > 1000 and (out / WEIGHTS_FILE).is_file()
    # the same --out again with --overwrite: trained anew, the card names the new command
    assert main(["pretrain-towers", "--config", str(config), "--out", str(out), "--steps", "1",
                 "--batch-size", "4", "--eval-every", "1", "--threads", "1", "--overwrite"]) == 0
    assert "--steps 1" in (out / "MODEL_CARD.md").read_text()


def test_cli_refuses_existing_towers_before_training(tmp_path, capsys, monkeypatch):
    """An --out holding towers is refused (exit 2, one line naming the file and --overwrite)
    before any training, and nothing in it changes. Planted defect that fails it:
    pretrain/cli.run without its refuse_existing call (pretrain_towers runs and replaces)."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"arch": ARCH, "image_size": 64, "taps": [0, 1]}}))
    out = tmp_path / "towers"
    out.mkdir()
    (out / WEIGHTS_FILE).write_bytes(b"earlier towers")
    (out / "README.txt").write_text("not ours\n")
    before = listing(out)

    def no_training(*args, **kwargs):
        raise AssertionError("training started although --out holds towers")

    monkeypatch.setattr("clipvg.pretrain.cli.pretrain_towers", no_training)
    assert main(["pretrain-towers", "--config", str(config), "--out", str(out), "--steps", "1"]) == 2
    refusal_line(capsys.readouterr().err, "pretrain-towers", out / WEIGHTS_FILE)
    assert listing(out) == before


def test_cli_rejects_a_bad_config(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model: {taps: [0, x]}\n")
    assert main(["pretrain-towers", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "model.taps" in capsys.readouterr().err


def test_same_command_same_towers(tmp_path):
    """Pre-training is deterministic for a given seed (same machine type and thread count), so
    the committed command reproduces the committed file."""
    from safetensors.torch import load_file

    cfg = PretrainConfig(steps=2, batch_size=4, probe_images=4, eval_every=2, warmup_steps=1)
    torch.set_num_threads(1)
    for name in ("a", "b"):
        pretrain_towers(cfg, MODEL, tmp_path / name, progress=False)
    a, b = (load_file(str(tmp_path / n / WEIGHTS_FILE)) for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = PretrainConfig(**{**cfg.__dict__, "seed": cfg.seed + 1})
    pretrain_towers(other, MODEL, tmp_path / "c", progress=False)
    c = load_file(str(tmp_path / "c" / WEIGHTS_FILE))
    assert not torch.equal(a["visual.positional_embedding"], c["visual.positional_embedding"])


@pytest.mark.parametrize("bad", [dict(steps=0), dict(stages=[[0.2, 1, 3]]),
                                 dict(stages=[[0.0, 3, 2]]), dict(stages=[[0.0, 1, 2], [0.5, 0, 2]])])
def test_bad_pretrain_config_is_refused(bad):
    with pytest.raises(ValueError, match="pretrain"):
        PretrainConfig(**bad)


def test_cli_refuses_zero_steps(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"arch": ARCH, "image_size": 64, "taps": [0, 1]}}))
    assert main(["pretrain-towers", "--config", str(config), "--out", str(tmp_path / "o"),
                 "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
