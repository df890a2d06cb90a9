"""The train benchmark runs end to end on tiny towers (speed is measured by `clipvg benchmark
train`, never by tests: only the shape of the results is checked here)."""

import json

import torch

from clipvg.cli import main
from clipvg.config import ModelConfig
from clipvg.bench import train as bt

TINY = ("{embed_dim: 32, vision_cfg: {image_size: 64, layers: 2, width: 32, head_width: 16, "
        "patch_size: 16}, text_cfg: {context_length: 16, vocab_size: 500, width: 32, heads: 2, layers: 2}}")
TINY_CFG = ModelConfig(
    arch={"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16,
                                          "patch_size": 16},
          "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 32, "heads": 2, "layers": 2}},
    image_size=64, context_length=16)


def test_cli_writes_json_and_appends_one_markdown_line(tmp_path, capsys):
    (tmp_path / "benchmarks.md").write_text("| earlier | data | ... |\n")
    rc = main(["benchmark", "train", "--out", str(tmp_path), "--arch", TINY, "--batch-sizes",
               "2,3", "--precision", "fp32,fp16-frozen", "--steps", "2", "--warmup", "1",
               "--device", "cpu", "--engines", "none"])
    assert rc == 0
    report = json.loads((tmp_path / "benchmark-train.json").read_text())
    assert report["benchmark"] == "train" and report["model"]["freeze"] == "official"
    model = report["model"]
    assert model["image_size"] == 64 and model["context_length"] == 16
    assert 0 < model["trainable"] < model["parameters"]
    env = report["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert [r["case"] for r in report["results"]] == [
        "b2 fp32", "b2 fp16-frozen", "b3 fp32", "b3 fp16-frozen"]
    for r in report["results"]:
        assert r["steps"] == 2 and r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"]
        assert r["samples_per_s"] == r["batch_size"] / r["step_s_median"]
        assert r["train_flops_per_sample"] > 0 and r["mfu"] is None and r["peak_memory_gib"] is None
    flops = {r["train_flops_per_sample"] for r in report["results"]}
    assert len(flops) == 1  # per sample: the same whatever the batch size and precision
    lines = (tmp_path / "benchmarks.md").read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("| earlier") and lines[1] == report["markdown"]
    assert "| train |" in lines[1] and "b3 fp16-frozen:" in lines[1]
    assert report["markdown"] in capsys.readouterr().out


def test_cli_refuses_bad_options(tmp_path, capsys):
    base = ["benchmark", "train", "--out", str(tmp_path), "--arch", TINY, "--device", "cpu"]
    assert main([*base, "--precision", "fp16"]) == 2
    assert "unknown precision 'fp16'" in capsys.readouterr().err
    assert main([*base, "--compile", "yes"]) == 2
    assert main([*base, "--steps", "0"]) == 2
    assert main([*base, "--device", "tpu9"]) == 2
    assert main([*base, "--engines", "local,slurm"]) == 2
    assert "--engines takes local, ray_train or none" in capsys.readouterr().err
    assert main([*base, "--threads", "0"]) == 2
    assert not (tmp_path / "benchmark-train.json").exists()


def test_default_cases():
    assert bt.default_cases("cpu") == [bt.TrainCase(8, "fp32")]
    gpu = bt.default_cases("cuda")
    assert {c.batch_size for c in gpu} == {64, 128}
    for b in (64, 128):
        assert {(c.precision, c.compile) for c in gpu if c.batch_size == b} == {
            ("bf16", False), ("bf16", True), ("fp16-frozen", False), ("fp32", False)}
    assert bt.TrainCase(64, "bf16", True).label == "b64 bf16 compiled"


def test_synthetic_batch_is_a_consistent_engine_batch():
    b = bt.synthetic_batch(5, 64, 16, vocab_size=500)
    assert b["image"].shape == (5, 3, 64, 64) and b["image"].dtype == torch.float32
    assert b["pixel_mask"].shape == (5, 64, 64) and b["tokens"].shape == (5, 16)
    assert b["tokens"].dtype == torch.int64 and b["tokens"].max() == 499
    assert torch.equal(b["token_mask"], (b["tokens"] > 0).long())
    assert (b["tokens"][:, 0] == 498).all() and ((b["tokens"] == 499).sum(1) == 1).all()
    assert (b["image"][b["pixel_mask"].bool().unsqueeze(1).expand_as(b["image"])] == 0).all()
    cx, cy, w, h = b["target"].unbind(1)
    assert ((cx - w / 2) > 0).all() and ((cy + h / 2) < 1).all() and len(b["sample_id"]) == 5


def test_markdown_line_reports_mfu_memory_and_errors():
    report = {"arch": "ViT-B-16",
              "model": {"freeze": "official", "parameters": 150_000_000, "trainable": 21_000_000},
              "environment": {"node": "n", "device_name": "NVIDIA H100 80GB HBM3", "cpu_cores": 8,
                              "torch": "2.x", "cuda": "13.2", "device": "cuda"},
              "results": [{"case": "b64 bf16", "samples_per_s": 2600.0, "step_s_median": 0.0246,
                           "mfu": 0.41, "peak_memory_gib": 20.5, "train_flops_per_sample": 3.0e10},
                          {"case": "b128 fp32", "error": "out of memory: CUDA"}]}
    line = bt.markdown_line(report)
    assert line.startswith("| ") and line.endswith(" |") and "| train |" in line
    assert "b64 bf16: 2,600.0 samples/s (25 ms/step, MFU 41%, 20.5 GiB)" in line
    assert "b128 fp32: out of memory" in line and "CUDA 13.2" in line and "30.0 GFLOP/sample" in line


def test_benchmark_runs_in_a_ray_task(ray_local):
    report = bt.run_on_ray(TINY_CFG, [bt.TrainCase(2, "fp32")], "cpu", steps=1, warmup=0, cpus=1)
    assert report["results"][0]["samples_per_s"] > 0
    assert report["environment"]["torch_threads"] == 1  # the task's CPUs, not the node's
