"""The CUDA code paths, run where a GPU is present (marker ``gpu``); skipped, with the reason in
the ``-ra`` summary, everywhere else (``pytest -m gpu`` selects only these).

The rest of the suite runs on CPUs only, so without this module nothing would ever execute:
``train.precision=auto`` resolving to bf16 autocast on CUDA, a training step on CUDA, MFU from
``clipvg.engine.flops`` with the device's peak, ``data.augment.backend=device`` on CUDA, the
block compilation (``train.compile``) on CUDA, and the scoring replica a
``curriculum.scoring.gpus_per_actor > 0`` actor runs (its ``device="cuda"``; the Ray actor pool
around it is not started here: Ray's start-up and one ``import open_clip`` per worker cost more
than the check is worth). Ray Train's ``use_gpu`` is not run either (it needs a Ray cluster
that sees the GPU: the GPU suite's job, docs/benchmarks.md).

Every test uses the tiny model of the GPU suite's smoke mode (``clipvg.bench.gpu_suite.TINY``)
and float32 comparisons run with TF32 off. Each docstring names the planted defect it catches.
"""

from __future__ import annotations

import copy
import json
import random
import re

import numpy as np
import pytest
import torch

from clipvg.bench import gpu_suite
from clipvg.bench.train import synthetic_batch
from clipvg.config import AugmentConfig, load_config
from clipvg.data.augment import draw_params
from clipvg.data.augment_torch import apply_batch
from clipvg.engine.flops import mfu, peak_flops, peak_flops_by_name, train_flops_per_sample
from clipvg.engine.loop import build_training
from clipvg.engine.precision import compile_model, resolve_precision
from clipvg.engine.steps import forward, train_step

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="GPU-only: no CUDA device here (the CUDA paths run on a GPU machine)"),
]

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
BATCH = 4


@pytest.fixture(autouse=True)
def no_tf32():
    """Full float32 matmuls for the CPU-vs-CUDA comparisons (TF32 is far coarser)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tiny_cfg(*overrides: str):
    return load_config(None, ["model.weights=null", "model.pretrained=null", *gpu_suite.TINY,
                              f"train.batch_size={BATCH}", *overrides])


def tiny_training(device: torch.device, *overrides: str):
    """(model, optimizer, batch) of the tiny model on ``device``, same weights on every device."""
    cfg = tiny_cfg(*overrides)
    torch.manual_seed(0)  # build_training draws the initial weights from the global generator
    model, optimizer = build_training(cfg, device)
    backbone = model.backbone
    batch = synthetic_batch(BATCH, backbone.visual.image_size[0], backbone.context_length,
                            device=device, vocab_size=backbone.token_embedding.num_embeddings)
    return model, optimizer, batch


def test_auto_precision_is_bf16_autocast_of_the_towers_on_cuda():
    """``train.precision=auto`` on CUDA: the towers' matmuls run in bfloat16 (autocast on the
    inputs' device type), the weights stay float32, the fusion and the boxes are float32.
    Planted defects it catches: ``resolve_precision('auto', cuda)`` answering fp32, or the
    backbone's autocast opened for device type "cpu" instead of the inputs' (the CUDA towers
    would then run float32)."""
    assert resolve_precision("auto", CUDA) == "bf16"
    model, _, batch = tiny_training(CUDA, "train.precision=auto")
    assert model.backbone.autocast_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.parameters())
    seen = {}
    watch = {"visual": model.backbone.visual.transformer.resblocks[0].mlp.c_fc,
             "text": model.backbone.transformer.resblocks[0].mlp.c_fc,
             "fusion": model.fusion.encoder.layers[0].linear1}
    handles = [m.register_forward_hook(lambda mod, args, out, n=n: seen.__setitem__(n, out.dtype))
               for n, m in watch.items()]
    try:
        with torch.no_grad():
            boxes = forward(model.eval(), batch)
    finally:
        for h in handles:
            h.remove()
    assert seen == {"visual": torch.bfloat16, "text": torch.bfloat16, "fusion": torch.float32}
    assert boxes.dtype == torch.float32 and boxes.is_cuda and torch.isfinite(boxes).all()


def test_a_training_step_on_cuda_matches_the_cpu_step():
    """fp32 training on CUDA: the first step's losses equal the CPU's (same weights, same
    batch, TF32 off) and the weights move on the device. Planted defects it catches: a tensor
    the model makes on the CPU inside forward (e.g. a mask built without ``device=``: a
    device-mismatch error), an optimizer state left on the CPU, a mask or position table
    indexed differently on CUDA (the losses would differ)."""
    first = []  # the first step's losses: CPU, CUDA
    for device in (CPU, CUDA):
        model, optimizer, batch = tiny_training(device, "train.precision=fp32")
        before = copy.deepcopy(model.ml_visu_proj.weight.detach())
        first.append(train_step(model, batch, optimizer))
        second = train_step(model, batch, optimizer)
        assert all(np.isfinite(v) for v in second.values())
        assert not torch.equal(before, model.ml_visu_proj.weight.detach())
        assert model.ml_visu_proj.weight.device.type == device.type
    cpu, cuda = first
    assert cuda["loss"] == pytest.approx(cpu["loss"], rel=1e-4, abs=1e-5)


def test_mfu_from_counted_flops_and_the_device_peak():
    """MFU on CUDA: FLOPs counted on the CUDA model equal the CPU count (the counter sees the
    CUDA kernels), the device's bf16 peak is the data-sheet value of its name, and MFU is
    a fraction in (0, 1). Planted defects it catches: ``peak_flops`` answering None on CUDA
    (e.g. the device-type check inverted) or an H100/H200 name that no pattern matches; a
    fused CUDA attention kernel the FLOP counter has no formula for (counted as 0: attention
    is ~14% of this model's training FLOPs). The tolerance is 5%: on the CPU, the flash and
    the math attention kernels' formulas already differ by 1.9% (measured)."""
    name = torch.cuda.get_device_name(CUDA)
    peak = peak_flops(CUDA, torch.bfloat16)
    assert peak == peak_flops_by_name(name, torch.bfloat16)
    if re.search(r"H100|H200|A100|L40S|A10|\bL4\b", name.upper()):
        assert peak is not None and peak > 1e13, name
    cpu, cuda = (train_flops_per_sample(*tiny_training(device, "train.precision=fp32")[::2])
                 for device in (CPU, CUDA))
    assert cuda > 0
    assert cuda == pytest.approx(cpu, rel=0.05)
    if peak is not None:
        value = mfu(1000.0, cuda, peak)
        assert 0 < value < 1 and value == pytest.approx(1000.0 * cuda / peak)


def test_device_augmentation_on_cuda_equals_the_cpu_backend():
    """``data.augment.backend=device`` on CUDA: every switch on, the uint8 canvases and pixel
    masks made on the GPU are bit-identical to the same call on the CPU (which
    tests/data/test_augment_torch.py holds equal to the PIL backend). Planted defects it
    catches: a resampling weight table built on the CPU and used against CUDA pixels (device
    error), a float rounding that differs on CUDA (e.g. ``round`` done in float32 kernels)."""
    rs = np.random.default_rng(0)
    images, params = [], []
    for seed in range(16):
        w, h = int(rs.integers(20, 120)), int(rs.integers(20, 120))
        images.append(rs.integers(0, 256, (h, w, 3), dtype=np.uint8))
        cfg = AugmentConfig(scale=True, crop=seed % 4 == 0, translate=True, color=True, blur=seed % 2 == 0)
        params.append(draw_params(w, h, [w * 0.2, h * 0.2, w * 0.7, h * 0.8], "the red cup", cfg,
                                  random.Random(seed), size=64))
    for normalize in (None, "imagenet"):
        cpu = apply_batch(images, params, device=CPU, normalize=normalize)
        gpu = apply_batch(images, params, device=CUDA, normalize=normalize)
        assert gpu["image"].is_cuda and gpu["pixel_mask"].is_cuda
        assert torch.equal(gpu["pixel_mask"].cpu(), cpu["pixel_mask"])
        if normalize is None:
            assert torch.equal(gpu["image"].cpu(), cpu["image"])
        else:  # the float normalisation of equal uint8 pixels: equal to float32 rounding
            assert torch.allclose(gpu["image"].cpu(), cpu["image"], rtol=0, atol=1e-6)


def test_compiled_blocks_on_cuda_match_eager():
    """``train.compile=true`` on CUDA: the compiled blocks give the eager model's boxes and
    train (a step runs, losses finite). Planted defects it catches: ``compile_model`` wrapping
    the model instead of compiling the blocks in place (state_dict keys change: asserted),
    a block that inductor cannot compile for CUDA (error), or a compiled block that computes
    something else (boxes differ)."""
    model, optimizer, batch = tiny_training(CUDA, "train.precision=fp32")
    keys = list(model.state_dict())
    with torch.no_grad():
        eager = forward(model.eval(), batch)
    compile_model(model)
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        compiled = forward(model.eval(), batch)
    assert torch.allclose(compiled, eager, rtol=0, atol=1e-4)
    losses = train_step(model, batch, optimizer)
    assert all(np.isfinite(v) for v in losses.values())


def test_gpu_suite_smoke_runs_every_case_on_cuda(tmp_path):
    """The GPU suite's smoke mode on CUDA: training cases under each precision, the scoring
    replica on ``device="cuda"`` (what an actor with ``curriculum.scoring.gpus_per_actor > 0``
    runs), and both augmentation backends, with no case failing. Planted defects it catches:
    the scorer putting its model on CUDA but its canvases on the CPU, fp16-frozen weights not
    cast on CUDA, any CUDA-only error in a case (recorded as ``error``)."""
    assert gpu_suite.main(["--out", str(tmp_path), "--smoke", "--device", "cuda"]) == 0
    report = json.loads((tmp_path / "gpu-suite.json").read_text())
    assert report["environment"]["device"].startswith("cuda")
    for section in ("train", "score", "augment"):
        assert report[section], section
        for r in report[section]:
            assert "error" not in r, r
    scored = [r for r in report["score"] if "samples_per_s" in r]
    assert scored and all(r["device"].startswith("cuda") for r in scored)
