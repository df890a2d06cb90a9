"""Training-state checkpoints: exact resume, strict and clear refusals, a model folder too."""

import argparse
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipvg.config import load_config
from clipvg.engine.checkpoint import (CheckpointError, TrainState, load_training_state,
                                      read_state, save_training_state)
from clipvg.engine.steps import build_optimizer, train_step
from clipvg.model import build_model, load_model

FILES = ["config.yaml", "model.safetensors", "model_config.json", "optimizer.pt", "state.json"]


def _batch(seed: int, n: int = 4, size: int = 64, context: int = 77) -> dict:
    """A random batch of the tiny run's shapes (no dataset needed)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, context, dtype=torch.int64)
    tokens[:, 0], tokens[:, 1:4], tokens[:, 4] = 49406, torch.randint(1, 49000, (n, 3), generator=g), 49407
    return {"image": torch.randn(n, 3, size, size, generator=g),
            "pixel_mask": torch.zeros(n, size, size, dtype=torch.int64),
            "tokens": tokens, "token_mask": (tokens > 0).long(),
            "target": torch.rand(n, 4, generator=g) * 0.4 + 0.3,
            "sample_id": [f"s{seed}-{i}" for i in range(n)]}


def _fresh(cfg, seed: int = 123):
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    return model, build_optimizer(model, cfg.train.lr, cfg.train.weight_decay)


def _state() -> TrainState:
    return TrainState(epoch=1, global_step=2, samples_seen=8, best_acc=0.25, best_epoch=1,
                      history=[{"epoch": 1, "train_loss": 1.5, "val": {"acc": 0.25}}],
                      data_position={"epoch": 1, "step_in_epoch": 0})


@pytest.fixture
def trained(tiny_run, tmp_path):
    """(cfg, model, optimizer, folder): two steps taken (dropout on), then saved."""
    cfg = tiny_run()
    model, optimizer = _fresh(cfg, seed=0)
    for i in range(2):
        torch.manual_seed(100 + i)
        train_step(model, _batch(i), optimizer)
    folder = save_training_state(tmp_path / "ckpt", model, optimizer, _state(), cfg)
    return cfg, model, optimizer, folder


def test_round_trip_resumes_bit_exactly(trained):
    cfg, model, optimizer, folder = trained
    assert sorted(p.name for p in folder.iterdir()) == FILES  # no temporary leftovers
    restored, restored_opt = _fresh(cfg)
    assert not torch.equal(restored.fusion.reg_token.weight, model.fusion.reg_token.weight)
    state = load_training_state(folder, restored, restored_opt, schedule=cfg.train.schedule)
    expected = dataclasses.replace(_state(), data_position={"seed": cfg.train.seed, "epoch": 1,
                                                            "step_in_epoch": 0})
    assert state == expected and read_state(folder) == expected
    for m, opt in ((model, optimizer), (restored, restored_opt)):
        torch.manual_seed(7)  # the same dropout masks on both
        train_step(m, _batch(2), opt)
    ours, theirs = model.state_dict(), restored.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_checkpoint_is_a_model_folder_and_records_the_run(trained):
    cfg, model, _, folder = trained
    loaded = load_model(folder)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert load_config(folder / "config.yaml") == cfg
    meta = json.loads((folder / "state.json").read_text())
    assert meta["format_version"] == 1 and meta["schedule"] == "cosine_epoch"


def test_missing_files_are_named(trained, tmp_path):
    cfg, _, _, folder = trained
    model, opt = _fresh(cfg)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_training_state(tmp_path / "nowhere", model, opt)
    for name in ("optimizer.pt", "model.safetensors", "model_config.json", "state.json"):
        (folder / name).rename(tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{folder}.*{name} is missing"):
            load_training_state(folder, model, opt)
        (tmp_path / name).rename(folder / name)
    (folder / "optimizer.pt").unlink()
    load_training_state(folder, model, None)  # weights only: the optimizer file is not needed


def test_corrupt_and_unsafe_files_are_refused(trained):
    cfg, _, _, folder = trained
    model, opt = _fresh(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = (folder / "optimizer.pt").read_bytes()
    (folder / "optimizer.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="optimizer.pt cannot be read"):
        load_training_state(folder, model, opt)
    torch.save({"state": {}, "param_groups": [], "x": argparse.Namespace(a=1)}, folder / "optimizer.pt")
    with pytest.raises(CheckpointError, match="refusing .*optimizer.pt.*nothing was unpickled"):
        load_training_state(folder, model, opt)
    torch.save({"weights": 1}, folder / "optimizer.pt")
    with pytest.raises(CheckpointError, match="not an optimizer state_dict"):
        load_training_state(folder, model, opt)
    (folder / "optimizer.pt").write_bytes(good)
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors cannot be read"):
        load_training_state(folder, model, opt)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json is not valid JSON"):
        load_training_state(folder, model, opt)
    # every refusal happened before anything was loaded
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_state_json_is_checked(trained):
    _, _, _, folder = trained
    raw = json.loads((folder / "state.json").read_text())
    for change, message in (({"format_version": 99}, "unsupported format_version 99"),
                            ({"surprise": 1}, r"unknown keys \['surprise'\]"),
                            ({"epoch": "3"}, "epoch should be int")):
        (folder / "state.json").write_text(json.dumps({**raw, **change}))
        with pytest.raises(CheckpointError, match=message):
            read_state(folder)
    (folder / "state.json").write_text(json.dumps({k: v for k, v in raw.items() if k != "history"}))
    with pytest.raises(CheckpointError, match=r"missing keys \['history'\]"):
        read_state(folder)


def test_a_different_model_or_optimizer_is_refused(trained, tiny_run):
    cfg, _, _, folder = trained
    other, other_opt = _fresh(tiny_run("model.fusion.dim_feedforward=32"))
    with pytest.raises(CheckpointError, match=r"model config mismatch.*fusion.dim_feedforward: "
                                              r"checkpoint 64 vs model 32"):
        load_training_state(folder, other, other_opt)
    model, opt = _fresh(cfg)
    with pytest.raises(CheckpointError, match="schedule 'cosine_epoch', this run uses 'constant'"):
        load_training_state(folder, model, opt, schedule="constant")
    fewer = torch.optim.AdamW(list(model.parameters())[:-1], lr=1e-3)
    with pytest.raises(CheckpointError, match="optimizer.pt does not fit the optimizer: parameter groups"):
        load_training_state(folder, model, fewer)
    weights = load_file(str(folder / "model.safetensors"))
    weights.pop("fusion.reg_token.weight")
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.safetensors does not fit the model: missing "
                                              r"keys \[fusion.reg_token.weight\]"):
        load_training_state(folder, model, opt)


def test_optimizer_moments_of_the_wrong_shape_are_refused(trained):
    cfg, _, optimizer, folder = trained
    state = optimizer.state_dict()
    first = next(iter(state["state"]))
    state["state"][first]["exp_avg"] = torch.zeros(3, 3)
    torch.save(state, folder / "optimizer.pt")
    model, opt = _fresh(cfg)
    with pytest.raises(CheckpointError, match=f"shape mismatches \\[param {first} exp_avg"):
        load_training_state(folder, model, opt)
