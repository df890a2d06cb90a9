"""``clipvg benchmark train`` engines: train-local and the Ray Train path on the same tiny run,
each epoch's rate under one definition (clipvg.engine.loop.epoch_rate), and the worker's torch
threads set by the rule of clipvg.distributed.worker.worker_threads, not left at Ray's
OMP_NUM_THREADS (speed itself is measured by the benchmark, never by tests)."""

import json

import pytest

from clipvg.cli import main
from clipvg.engine.loop import epoch_rate

TINY_RUN = """
data:
  synth: {image_size: 64, train_images: 24, val_images: 6, test_images: 6}
  augment: {scale: false, crop: false, color: false}
model:
  arch: {embed_dim: 32, vision_cfg: {image_size: 64, patch_size: 16, width: 32, layers: 2, head_width: 16},
         text_cfg: {context_length: 24, vocab_size: 49408, width: 32, heads: 2, layers: 2}}
  image_size: 64
  context_length: 24
  taps: [0, 1]
  fusion: {layers: 1, heads: 2, dim_feedforward: 64, dropout: 0.0}
train: {batch_size: 8, eval_batch_size: 16, lr: 1.0e-3}
scaling: {cpus_per_worker: 0.5, data_cpus: 0.5}
"""


def test_epoch_rate_counts_the_step_loop_from_the_first_batch():
    # epoch starts at t=10, first batch in hand at 12.5, last step ends at 17.5
    assert epoch_rate(100, 10.0, 12.5, 17.5) == {"train_samples": 100, "train_seconds": 5.0,
                                                 "train_startup_s": 2.5, "train_samples_per_s": 20.0}
    assert epoch_rate(0, 10.0, None, 11.0)["train_samples_per_s"] == 0.0  # no batch at all


def test_an_engine_rate_is_its_best_epoch_after_the_first():
    from clipvg.bench.engines import _summary

    epochs = [{"train_samples_per_s": r, "train_seconds": 1.0, "train_samples": 10} for r in (90.0, 40.0, 50.0)]
    assert _summary(epochs, 5.0, 1)["samples_per_s"] == 50.0  # the pre-decoded first epoch left out
    assert _summary(epochs[:1], 5.0, 1)["samples_per_s"] == 90.0  # one epoch: that one


def test_both_engines_train_the_same_run_side_by_side(ray_local, tmp_path, short_tmp):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_RUN)
    out = short_tmp / "engines-bench"
    # 2 threads: Ray exports OMP_NUM_THREADS=1 for the worker's 0.5 CPU, so a worker that did not
    # set its threads would report 1
    assert main(["benchmark", "train", "--engines-only", "--engine-config", str(config), "--images", "24",
                 "--epochs", "1", "--threads", "2", "--out", str(out)]) == 0
    report = json.loads((out / "benchmark-train.json").read_text())
    local, ray = report["engines"]["local"], report["engines"]["ray_train"]
    assert report["results"] == [] and report["threads"] == 2 and report["batch_size"] == 8
    assert local["torch_threads"] == 2 and ray["torch_threads"] == 2  # the worker's own count
    assert local["samples_per_epoch"] == ray["samples_per_epoch"] > 0  # the same run: same samples
    for r in (local, ray):
        (rate,), (seconds,) = r["epoch_samples_per_s"], r["epoch_train_seconds"]
        assert r["samples_per_s"] == rate == pytest.approx(r["samples_per_epoch"] / seconds)
        assert r["epoch_startup_s"][0] >= 0
    assert report["ray_over_local"] == ray["samples_per_s"] / local["samples_per_s"]
    md = (out / "benchmarks.md").read_text().splitlines()
    assert md == [report["markdown"]] and "| train engines |" in md[0] and "Ray Train / local =" in md[0]
