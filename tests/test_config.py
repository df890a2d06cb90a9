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
        # issue 26: passed the checks and failed deep in the run (FloatingPointError, KeyError)
        ("train.lr=.inf", "train.lr: inf must be a finite number"),
        ("train.weight_decay=.nan", "train.weight_decay: nan must be a finite number"),
        ("data.synth.val_images=0", "data.synth.val_images: 0 must be >= 1"),
        ("data.synth.val_images=-5", "data.synth.val_images: -5 must be >= 1"),
        ("data.synth.test_images=0", "data.synth.test_images: 0 must be >= 1"),
        ("data.synth.train_images=0", "data.synth.train_images: 0 must be >= 1"),
    ],
)
def test_bad_input_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("text", ["", "\n", "# nothing set yet\n"])
def test_an_empty_config_file_is_refused_saying_how_to_get_the_defaults(tmp_path, text):
    """An empty file used to mean the full official recipe (110 epochs, a 2,000-image world)."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"run.yaml is empty: leave out --config .* defaults"):
        load_config(path)


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


# ---------------------------------------------------------------- no key outside the schema


def test_scoring_full_bf16_is_a_schema_key_read_by_the_scorer(monkeypatch):
    cfg = load_config(None, ["curriculum.scoring.full_bf16=true"])
    assert cfg.curriculum.scoring.full_bf16 is True and Config().curriculum.scoring.full_bf16 is False
    with pytest.raises(ConfigError, match="full_bf16: expected bool"):
        load_config(None, ["curriculum.scoring.full_bf16=3"])
    # the scoring actor pool gets it (not a getattr default that can never be set)
    from clipvg.distributed import inference

    seen = {}

    class FakeDataset:
        def map_batches(self, fn, fn_constructor_kwargs, **kw):
            seen.update(fn_constructor_kwargs)
            return self

    class FakePlan:
        num_images, root = 4, "unused"
        samples = __import__("pyarrow").table({"image_id": ["a"]})

        def index(self):
            return type("I", (), {"sample_ids": ["s"]})()

    monkeypatch.setattr("clipvg.distributed.streaming.build_dataset", lambda *a, **k: FakeDataset())
    monkeypatch.setattr(inference, "image_sizes", lambda *a, **k: {})
    spec = type("Spec", (), {"size": 64})()
    inference.model_dataset(FakePlan(), spec, cfg, "model", cfg.curriculum.scoring)
    assert seen["autocast"] is True


def test_no_config_read_bypasses_the_schema():
    import re

    pattern = re.compile(r"getattr\((\w*cfg|sc|pool|storage_cfg)\b")
    found = [f"{p.relative_to(REPO)}:{n}" for p in (REPO / "clipvg").rglob("*.py")
             for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_generator_options_are_typed_and_validated_at_load():
    cfg = load_config("demo")  # the demo's options load unchanged
    assert cfg.curriculum.generators == {"template": {"min_area_frac": 0.0039},
                                         "caption": {"min_area_frac": 0.0039}}
    cfg = load_config(None, ["curriculum.generators={template: {top_n: 2, min_area_frac: 1e-3}}"])
    assert cfg.curriculum.generators == {"template": {"top_n": 2, "min_area_frac": 0.001}}  # only the given
    with pytest.raises(ConfigError, match=r"'curriculum.generators.template.min_area_fracc'.*accepts: "
                                          r"dup_iou, max_per_image, min_area_frac, top_n"):
        load_config(None, ["curriculum.generators={template: {min_area_fracc: 0.01}}"])
    with pytest.raises(ConfigError, match=r"curriculum.generators.relation.top_k: expected int"):
        load_config(None, ["curriculum.generators={relation: {top_k: many}}"])
    with pytest.raises(ConfigError, match=r"curriculum.generators.caption.min_area_frac: 2.0 must be in"):
        load_config(None, ["curriculum.generators={caption: {min_area_frac: 2}}"])
    with pytest.raises(ConfigError, match=r"curriculum.generators.captions: unknown source 'captions' "
                                          r"\(known: caption, relation, template\)"):
        load_config(None, ["curriculum.generators={captions: {}}"])
    with pytest.raises(ConfigError, match=r"curriculum.sources\[1\]: unknown source 'relaton' "
                                          r"\(known: caption, relation, template\)"):
        load_config(None, ["curriculum.sources=[template, relaton]"])


def test_generator_option_schema_matches_the_generators():
    """config.py cannot import clipvg.pseudo (it sits below it), so its option dataclasses and
    the generators' own defaults are checked against each other here."""
    import dataclasses

    from clipvg.config import GENERATOR_OPTIONS
    from clipvg.pseudo.generate import GENERATORS, resolve_options

    assert set(GENERATOR_OPTIONS) == set(GENERATORS)
    for name, options in GENERATOR_OPTIONS.items():
        typed = dataclasses.asdict(options())
        code_only = {k for k in GENERATORS[name].defaults if k not in typed}  # not YAML: callables
        assert code_only <= {"head_noun"}, (name, code_only)
        assert {k: v for k, v in GENERATORS[name].defaults.items() if k in typed} == typed, name
        assert resolve_options(name, typed)  # every typed option is one the generator takes


def test_asha_needs_the_ray_train_launcher():
    load_config(None, ["curriculum.early_stopping=asha"])  # ray_train is the default
    with pytest.raises(ConfigError, match="curriculum.early_stopping: asha needs curriculum.launcher=ray_train"):
        load_config(None, ["curriculum.early_stopping=asha", "curriculum.launcher=in_trial"])


def test_two_key_rules_at_load_time():
    with pytest.raises(ConfigError, match=r"data.fresh_train_images: needs the synthetic world \(data.uri: null\)"):
        load_config(None, ["data.fresh_train_images=true", "data.uri=/data/refcoco"])
    with pytest.raises(ConfigError, match="model.fusion.d_model: 100 is not divisible by model.fusion.heads 8"):
        load_config(None, ["model.fusion.d_model=100"])
    with pytest.raises(ConfigError, match="model.pretrained: 'openai' needs model.arch to be an open_clip model name"):
        load_config(None, ["model.arch={embed_dim: 64, vision_cfg: {layers: 2}, text_cfg: {layers: 2}}",
                           "model.pretrained=openai"])
    with pytest.raises(ConfigError, match=r"model.taps: \[1, 3, 5\]: the similarity prior .* last block \(11\)"):
        load_config(None, ["model.text_conditioning.similarity_prior=true", "model.taps=[1, 3, 5]"])


@pytest.mark.parametrize("launcher, overrides, message", [
    ("ray_train", ["train.samples_per_epoch=100"], "train.samples_per_epoch: supported by the single-process engine"),
    ("ray_train", ["data.fresh_train_images=true"], "data.fresh_train_images: supported by clipvg train-local only"),
    ("pipeline", ["train.samples_per_epoch=100"], "train.samples_per_epoch: .*curriculum.launcher=ray_train"),
    ("pipeline", ["data.fresh_train_images=true", "curriculum.launcher=in_trial"],
     "data.fresh_train_images: supported by clipvg train-local only"),
])
def test_what_a_launcher_cannot_honour_is_refused_at_load(launcher, overrides, message):
    load_config(None, overrides)  # fine for train-local, the default reading
    load_config(None, overrides, launcher="train-local")
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides, launcher=launcher)


def test_launchers_refuse_before_any_work(tmp_path):
    """Configs built in code get the same check from the launchers themselves."""
    import dataclasses

    from clipvg.distributed.trainer import resolve_config, train
    from clipvg.engine.local import train_local

    cfg = load_config(None, [f"storage.root={tmp_path}", "train.samples_per_epoch=10"])
    with pytest.raises(ConfigError, match="train.samples_per_epoch"):
        resolve_config(cfg)
    with pytest.raises(ConfigError, match="train.samples_per_epoch"):
        train(cfg)
    fresh = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fresh_train_images=True, uri=str(tmp_path)))
    with pytest.raises(ConfigError, match="data.fresh_train_images: needs the synthetic world"):
        train_local(fresh)
    assert not any(tmp_path.iterdir())  # nothing written
