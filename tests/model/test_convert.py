"""Export/load round trip, the safe official-checkpoint reader and the conversion CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from clipvg.cli import main as cli_main
from clipvg.config import FusionConfig, ModelConfig
from clipvg.model.clipvg import build_model
from clipvg.model.convert import (
    UnsafeCheckpointError,
    convert_official_state_dict,
    load_untrusted_checkpoint,
    model_config_from_args,
    model_config_from_official,
)
from clipvg.model.io import ConversionError, export_model, load_model
from listing import listing, refusal_line

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "clipvg_official" / "tiny"
VIT_B16 = REPO / "tests" / "fixtures" / "clipvg_official" / "vit_b16"


@pytest.fixture(scope="module")
def tiny_official():
    """(ModelConfig, official state_dict, cases) of the official-parity fixture."""
    cfg = model_config_from_official(json.loads((TINY / "config.json").read_text()))
    state = torch.load(TINY / "official_state_dict.pt", map_location="cpu", weights_only=True)
    cases = torch.load(TINY / "cases.pt", map_location="cpu", weights_only=True)
    return cfg, state, cases


class PlantedPayload:
    """Unpickling this would call ``open(target, "w")``, creating the file."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_export_then_load_gives_identical_outputs(make_config, make_inputs, tmp_path):
    cfg = make_config()
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.fusion.reg_token.weight.add_(0.5)  # anything not reproducible by a fresh init
    folder = export_model(model, tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "model_config.json"]
    saved = json.loads((folder / "model_config.json").read_text())
    assert saved == dataclasses.asdict(dataclasses.replace(cfg, weights=None, pretrained=None))
    loaded = load_model(folder)
    assert not loaded.training
    inputs = make_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), model(*inputs))
    with pytest.raises(ConversionError, match="not a clipvg model folder"):
        load_model(tmp_path)


def test_planted_pickle_is_refused_by_the_cli_without_running(tmp_path):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": PlantedPayload(target)}, evil)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "clipvg.cli", "convert-official", str(evil), str(out),
         "--arch", "ViT-B-16"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    assert "refusing to load" in proc.stderr and "io.open" in proc.stderr
    assert "evil.pth" in proc.stderr and "Traceback" not in proc.stderr
    assert not target.exists()
    assert not out.exists()


def test_unsafe_and_bad_files_raise_clear_errors(tmp_path, capsys):
    target = tmp_path / "pwned.txt"
    torch.save([PlantedPayload(target)], tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="evil.pt"):
        load_untrusted_checkpoint(tmp_path / "evil.pt")
    assert not target.exists()
    (tmp_path / "junk.pth").write_bytes(b"\x00junk")
    with pytest.raises(ConversionError, match="junk.pth"):
        load_untrusted_checkpoint(tmp_path / "junk.pth")
    torch.save({"model": {"a": torch.zeros(1)}}, tmp_path / "bare.pth")
    assert cli_main(["convert-official", str(tmp_path / "bare.pth"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--arch" in err and "Traceback" not in err


def test_training_checkpoint_with_namespace_args_converts(tiny_official, tmp_path, capsys):
    cfg, state, cases = tiny_official
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.AdamW(params, lr=2.5e-4, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5)
    args = argparse.Namespace(model="ViT-B/16", lr=2.5e-4, vl_hidden_dim=64, imsize=224,
                              max_query_len=77, dataset="unc", gpu="0,1", aug_crop=True)
    ckpt = tmp_path / "best_checkpoint.pth"
    torch.save({"model": state, "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                "epoch": 42, "args": args, "val_accu": 0.5}, ckpt)
    loaded = load_untrusted_checkpoint(ckpt)
    assert loaded.args.model == "ViT-B/16" and loaded.extra["epoch"] == 42
    assert len(loaded.state_dict) == 689

    out = tmp_path / "converted"
    rc = cli_main(["convert-official", str(ckpt), str(out),
                   "--official-config", str(TINY / "config.json")])
    assert rc == 0, capsys.readouterr().err
    with torch.no_grad():
        boxes = load_model(out)(cases["images"], cases["pixel_mask"], cases["tokens"],
                                cases["token_mask"])
    assert (boxes - cases["pred_boxes"]).abs().max() <= 1e-5

    # a second conversion into the same OUT: refused, nothing touched; --overwrite replaces it
    before = listing(out)
    capsys.readouterr()
    assert cli_main(["convert-official", str(ckpt), str(out),
                     "--official-config", str(TINY / "config.json")]) == 2
    refusal_line(capsys.readouterr().err, "convert-official", out / "model.safetensors")
    assert listing(out) == before
    assert cli_main(["convert-official", str(ckpt), str(out), "--official-config",
                     str(TINY / "config.json"), "--overwrite"]) == 0
    assert load_model(out) is not None


def test_cli_refuses_an_existing_model_before_reading_the_checkpoint(tmp_path, capsys):
    """An OUT holding model_config.json is refused (exit 2, one line naming it and --overwrite)
    before IN is even read (it does not exist here), and nothing in OUT changes. Planted defect
    that fails it: convert_cli.run without its refuse_existing call (the missing IN is reported
    instead, or an existing model replaced)."""
    out = tmp_path / "models" / "unc"
    out.mkdir(parents=True)
    (out / "model_config.json").write_text("{}\n")
    before = listing(out)
    assert cli_main(["convert-official", str(tmp_path / "absent.pth"), str(out)]) == 2
    refusal_line(capsys.readouterr().err, "convert-official", out / "model_config.json")
    assert listing(out) == before


def test_converter_casts_fp16_and_checks_keys(tiny_official):
    cfg, state, _ = tiny_official
    model = build_model(cfg)
    half = dict(state)
    key = "clip.visual.transformer.resblocks.3.mlp.c_fc.weight"
    half[key] = state[key].half()
    half["image_encoder_clip_vg" + key[len("clip.visual"):]] = half[key]  # alias shares it
    mapped = convert_official_state_dict(half, model)
    ours = "backbone.visual.transformer.resblocks.3.mlp.c_fc.weight"
    assert mapped[ours].dtype == torch.float32
    assert torch.equal(mapped[ours], state[key].half().float())
    # text_projection keeps its (width, embed_dim) right-multiplied orientation
    assert torch.equal(mapped["backbone.text_projection"], state["clip.text_projection"])

    broken = dict(state)
    broken["text_encoder_clip_vg.ln_final.bias"] = state["clip.ln_final.bias"] + 1
    with pytest.raises(ConversionError, match="text_encoder_clip_vg.ln_final.bias"):
        convert_official_state_dict(broken, model)
    missing = {k: v for k, v in state.items() if k != "ml_visu_proj.bias"}
    with pytest.raises(ConversionError, match="ml_visu_proj.bias"):
        convert_official_state_dict(missing, model)
    with pytest.raises(ConversionError, match="surprise.weight"):
        convert_official_state_dict({**state, "surprise.weight": torch.zeros(1)}, model)


def test_config_from_training_args():
    args = argparse.Namespace(model="ViT-B/16", vl_hidden_dim=512, vl_nheads=8,
                              vl_dim_feedforward=2048, vl_enc_layers=6, vl_dropout=0.1,
                              imsize=224, max_query_len=77)
    cfg = model_config_from_args(args)
    assert cfg.arch == "ViT-B-16" and cfg.fusion == FusionConfig(d_model=512)
    assert model_config_from_args(args, arch="ViT-L-14").arch == "ViT-L-14"
    heads = model_config_from_args(args, text_heads=4).arch
    assert heads["text_cfg"]["heads"] == 4 and heads["vision_cfg"]["width"] == 768
    with pytest.raises(ConversionError, match="--arch"):
        model_config_from_args(None)


def test_official_config_json_maps_to_open_clip_arch(tiny_official):
    cfg = tiny_official[0]
    assert cfg.taps == [0, 3, 7, 11] and cfg.quick_gelu and cfg.patch_mask == "official"
    assert cfg.arch["vision_cfg"]["head_width"] == 64 and cfg.arch["text_cfg"]["heads"] == 1
    assert cfg.fusion == FusionConfig(d_model=64, layers=6, heads=8, dim_feedforward=128)
    # committed with the other fixtures: a missing file fails here, it never passes silently
    real = model_config_from_official(json.loads((VIT_B16 / "config.json").read_text()))
    ref = open_clip.get_model_config("ViT-B-16")
    assert real.arch["embed_dim"] == ref["embed_dim"]
    for tower in ("vision_cfg", "text_cfg"):
        for k, v in ref[tower].items():
            assert real.arch[tower][k] == v, (tower, k)
    assert real.arch["vision_cfg"]["width"] // real.arch["vision_cfg"]["head_width"] == 12
    assert isinstance(real, ModelConfig) and real.fusion.d_model == 512
