"""Config: YAML + dotted overrides; unknown keys and wrong types name the key."""

import json
from pathlib import Path

import pytest
import yaml

from clipvg.config import Config, ConfigError, load_config, save_config, to_dict

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_official_recipe():
    cfg = Config()
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.batch_size) == (2.5e-4, 1e-4, 64)
    assert cfg.model.arch == "ViT-B-16" and cfg.model.freeze == "official"
    assert (cfg.model.fusion.layers, cfg.model.fusion.heads, cfg.model.fusion.dropout) == (6, 8, 0.1)
    assert cfg.data.augment.normalize == "imagenet" and not cfg.data.augment.blur


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 5, "lr": 1e-3}, "data": {"seed": 3}}))
    cfg = load_config(path, ["train.epochs=2", "model.fusion.layers=1", "model.taps=[0, 1]", "storage.root=/tmp/x"])
    assert cfg.train.epochs == 2 and cfg.train.lr == 1e-3 and cfg.data.seed == 3
    assert cfg.model.fusion.layers == 1 and cfg.model.taps == [0, 1]
    assert cfg.run_dir == "/tmp/x/default"


def test_int_is_accepted_for_float_but_not_bool_for_int():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 1e-3  # YAML 1.1 reads this as a string
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=true"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochz=3", "unknown key 'train.epochz'"),
        ("trian.epochs=3", "unknown key 'trian'"),
        ("model.fusion.layerz=2", "unknown key 'model.fusion.layerz'"),
        ("train.epochs=three", "train.epochs: expected int"),
        ("model.freeze=partial", "model.freeze: 'partial' is not one of"),
        ("model.taps=[0, a]", r"model.taps\[1\]: expected int"),
        ("model.arch=3", "model.arch"),
        ("train.epochs=0", "train.epochs: 0 must be >= 1"),
        ("data.synth.max_objects=1", "max_objects"),
        ("train.epochs", "not of the form"),
        ("train=3", "train: expected a mapping"),
        ("scaling.model_resources={GPU: 1}", "scaling.model_resources: .* custom resource names"),
        ("scaling.data_resources={clipvg_data: 0}", "scaling.data_resources: .* amounts > 0"),
        ("scaling.data_resources=[clipvg_data]", "scaling.data_resources: expected a mapping"),
    ],
)
def test_bad_input_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_yaml_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(path)


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(None, ["train.epochs=4", "model.arch={embed_dim: 64, vision_cfg: {width: 64}}"])
    save_config(cfg, tmp_path / "config.yaml")
    save_config(cfg, tmp_path / "config.json")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert json.loads((tmp_path / "config.json").read_text()) == to_dict(cfg)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_configs_validate(path):
    load_config(path)
