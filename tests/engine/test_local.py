"""The local loop end to end, on a tiny world: outputs written, every epoch evaluated; Ctrl-C,
resume and --overwrite; a run on S3 (moto) that goes only where it is told."""

import json
import os
import re

import pytest
import torch

from clipvg.config import load_config
from clipvg.engine import local, steps
from clipvg.engine.checkpoint import read_state
from clipvg.engine.local import train_local
from clipvg.engine.run_log import read_metrics
from clipvg.errors import UserError
from clipvg.model import load_model
from interrupts import interrupted
from listing import listing
from storage_trap import keys, mangled_paths, trap


def test_train_local_writes_outputs_and_reports_every_epoch(tiny_run, tmp_path):
    cfg = tiny_run()
    history = train_local(cfg, progress=False)
    run_dir = tmp_path / "t"
    assert [e["epoch"] for e in history.epochs] == [1, 2]
    assert history.test["test"]["total"] > 0
    # the shuffled-text control: inside the test summary, and on its own in history.json
    control = history.test["test"]["shuffled_text"]
    assert control["total"] == history.test["test"]["total"] and control["skipped"] == 0
    assert history.test_shuffled_text == {"test": {"acc": control["acc"], "per_type": control["per_type"]}}
    saved = json.loads((run_dir / "history.json").read_text())
    assert saved["test_shuffled_text"] == history.test_shuffled_text
    assert all("shuffled_text" in e["val"] for e in saved["epochs"])
    assert load_config(run_dir / "config.yaml") == cfg  # resolved config next to the outputs
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["kind"] == "step"]
    assert steps and all(r["samples_per_s"] > 0 for r in steps)
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1, 2]
    assert any(p.name.startswith("events") for p in (run_dir / "tensorboard").iterdir())
    for folder in ("best", "last"):
        model = load_model(run_dir / folder)
        assert model.config.image_size == 64
    assert read_state(run_dir / "last").epoch == 2  # last/ is a whole training state


class Interrupt:
    """``train_step`` that raises KeyboardInterrupt (Ctrl-C) on its ``at``-th call."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return steps.train_step(*args, **kwargs)


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def untimed(summary):
    """A summary without its wall-clock fields."""
    if isinstance(summary, dict):
        return {k: untimed(v) for k, v in summary.items() if k != "seconds"}
    return summary


def step_losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(str(run_dir)) if r["kind"] == "step"]


def test_ctrl_c_keeps_last_and_resume_gives_the_uninterrupted_run(tiny_run, tmp_path, monkeypatch):
    """Ctrl-C in epoch 2 -> one line saying what was kept; a plain rerun is refused (naming the
    three ways on); train.resume=true continues from last/ and ends where an uninterrupted run
    ends (same weights, same per-step losses, every epoch once); --overwrite starts over."""
    fast = ("train.max_steps_per_epoch=3",)
    whole = train_local(tiny_run(*fast, "storage.run_name=whole"), progress=False)
    assert [e["epoch"] for e in whole.epochs] == [1, 2]

    cfg = tiny_run(*fast, "storage.run_name=cut")
    monkeypatch.setattr(local, "train_step", Interrupt(at=5))  # epoch 2, after its first step
    message = interrupted(train_local, cfg, progress=False)
    assert message == (f"interrupted at epoch 2 step 1; kept: {tmp_path}/cut last/ from epoch 1 "
                       f"(resume with train.resume=true)")
    assert read_state(tmp_path / "cut" / "last").epoch == 1
    monkeypatch.setattr(local, "train_step", steps.train_step)

    before = weights(tmp_path / "cut" / "best")
    with pytest.raises(UserError) as refused:
        train_local(cfg, progress=False)
    for way in ("train.resume=true", "storage.run_name", "--overwrite"):
        assert way in str(refused.value)
    assert weights(tmp_path / "cut" / "best").keys() == before.keys()
    assert all(torch.equal(weights(tmp_path / "cut" / "best")[k], v) for k, v in before.items())

    resumed = train_local(tiny_run(*fast, "storage.run_name=cut", "train.resume=true"), progress=False)
    assert [e["epoch"] for e in resumed.epochs] == [1, 2]
    assert [e["train_loss"] for e in resumed.epochs] == [e["train_loss"] for e in whole.epochs]
    assert resumed.best_epoch == whole.best_epoch
    assert untimed(resumed.test) == untimed(whole.test)
    for folder in ("last", "best"):
        a, b = weights(tmp_path / "whole" / folder), weights(tmp_path / "cut" / folder)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
    assert step_losses(tmp_path / "cut") == step_losses(tmp_path / "whole")  # no step twice
    assert [r["epoch"] for r in read_metrics(str(tmp_path / "cut")) if r["kind"] == "epoch"] == [1, 2]

    with pytest.raises(UserError, match="--overwrite"):  # the two contradict each other
        train_local(tiny_run(*fast, "storage.run_name=cut", "train.resume=true"), progress=False,
                    overwrite=True)
    again = train_local(tiny_run(*fast, "storage.run_name=cut", "train.epochs=1"), progress=False,
                        overwrite=True)
    assert [e["epoch"] for e in again.epochs] == [1]
    assert [r["epoch"] for r in read_metrics(str(tmp_path / "cut")) if r["kind"] == "epoch"] == [1]
    assert read_state(tmp_path / "cut" / "last").epoch == 1


def test_resume_needs_a_checkpoint_and_ctrl_c_in_epoch_one_keeps_nothing(tiny_run, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"train.resume=true but .*/t has no checkpoint"):
        train_local(tiny_run("train.resume=true"), progress=False)
    monkeypatch.setattr(local, "train_step", Interrupt(at=1))
    assert re.fullmatch(r"interrupted at epoch 1 step 0; kept: nothing to resume in .*/t \(no epoch "
                        r"finished; a rerun starts over\)", interrupted(train_local, tiny_run(), progress=False))


def test_a_refused_resume_leaves_the_run_as_it_was(tiny_run, tmp_path):
    """Resuming with a model that does not fit the checkpoint (another fusion depth) is refused
    in one line and changes nothing in the run folder, config.yaml included: the run still
    describes its own best/ and last/. Planted: config.yaml written before the checkpoint is
    read (as it was) rewrites it with the refused config."""
    train_local(tiny_run("train.epochs=1"), progress=False)
    before = listing(tmp_path / "t")
    with pytest.raises(Exception) as refused:
        train_local(tiny_run("train.epochs=2", "train.resume=true", "model.fusion.layers=2"), progress=False)
    assert "\n" not in str(refused.value) and "Traceback" not in str(refused.value)
    assert listing(tmp_path / "t") == before


def test_s3_run_goes_only_to_the_bucket_and_resumes_there(s3, tiny_run, tmp_path, monkeypatch):
    """storage.root=s3://... with the endpoint in storage.endpoint_url only (AWS_ENDPOINT_URL
    points at a trap): the world, config, metrics, TensorBoard events, best/, last/ and
    history.json land in the bucket, nothing else is contacted, no local 's3:' folder appears,
    and train.resume=true continues the run from the bucket."""
    root = s3.uri("local-run")
    monkeypatch.chdir(tmp_path)
    over = (f"storage.root={root}", f"storage.endpoint_url={s3.endpoint_url}",
            "train.max_steps_per_epoch=1")
    with trap(monkeypatch) as t:
        history = train_local(tiny_run(*over, "train.epochs=1"), progress=False)
        assert history.run_dir == f"{root}/t"
        with pytest.raises(UserError, match="train.resume=true"):
            train_local(tiny_run(*over, "train.epochs=2"), progress=False)
        resumed = train_local(tiny_run(*over, "train.epochs=2", "train.resume=true"), progress=False)
    assert t.connections == 0
    assert mangled_paths(tmp_path) == []
    assert [e["epoch"] for e in resumed.epochs] == [1, 2]
    found = keys(s3, f"{root}/t")
    for name in ("config.yaml", "metrics.jsonl", "history.json", "best/model.safetensors",
                 "last/model.safetensors", "last/optimizer.pt", "last/rng_state.pt", "last/state.json"):
        assert name in found, (name, found)
    assert any(k.startswith("tensorboard/events") for k in found)
    assert not any(".tmp-" in k for k in found)
    assert any(k.endswith("manifest.json") for k in keys(s3, f"{root}/worlds"))
    records = read_metrics(f"{root}/t", **s3.options)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]


def test_a_wrong_endpoint_fails_at_once_naming_it(s3, tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with trap(monkeypatch) as t:
        with pytest.raises(UserError) as err:
            train_local(tiny_run(f"storage.root={s3.uri('wrong')}", "storage.endpoint_url=http://127.0.0.1:9"),
                        progress=False)
    assert "http://127.0.0.1:9" in str(err.value) and "\n" not in str(err.value)
    assert t.connections == 0
    assert os.listdir(tmp_path) == []  # no world, no config, no folder named after the URI
