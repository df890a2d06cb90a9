"""FLOPs per sample, device peak FLOP/s and model FLOPs utilisation (MFU), in plain PyTorch.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over what actually runs:
matmuls, convolutions and attention, forward and backward (element-wise ops are not counted,
as usual for MFU). Frozen weights get no weight gradient, so their layers cost 1x forward in
backward if something upstream needs a gradient (the visual tower under ``freeze: official``:
its positional embedding is trainable) and nothing at all otherwise (the frozen text tower).
A multiply-add counts as 2 FLOPs.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from clipvg.engine.loss import box_losses
from clipvg.engine.steps import forward


def _batch_size(batch: dict) -> int:
    return int(batch["image"].shape[0])


def train_flops_per_sample(model: nn.Module, batch: dict) -> float:
    """FLOPs of forward + L1/GIoU loss + backward of ``batch``, divided by its batch size.

    ``batch`` is an engine batch (:mod:`clipvg.engine.steps`) on the model's device. The
    model runs in train mode (dropout changes no FLOPs); existing ``.grad`` tensors and the
    train/eval mode are restored, so this can run between real steps. No optimizer step.
    """
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    model.train()
    try:
        with FlopCounterMode(display=False) as counter:
            box_losses(forward(model, batch), batch["target"])["loss"].backward()
    finally:
        for p, g in zip(params, saved):
            p.grad = g
        model.train(was_training)
    return counter.get_total_flops() / _batch_size(batch)


def eval_flops_per_sample(model: nn.Module, batch: dict) -> float:
    """FLOPs of one evaluation forward pass (eval mode, no graph) per sample of ``batch``.

    Attention is counted as the regular (not fast-path) ``nn.MultiheadAttention`` computes it.
    Not run under ``torch.no_grad()``: a view of a parameter made there
    (``pos_embed.weight.unsqueeze(0)``) claims ``requires_grad`` without a ``grad_fn``, which
    breaks the module tracker inside ``FlopCounterMode`` (torch 2.15). Turning
    ``requires_grad`` off on every parameter for the call builds no graph either, and counts
    the same forward.
    """
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    try:
        for p in params:
            p.requires_grad_(False)
        # nn.MultiheadAttention's inference fast path is one fused op FlopCounterMode has no
        # formula for (it would count the attention as 0); the regular path runs the same math.
        torch.backends.mha.set_fastpath_enabled(False)
        with FlopCounterMode(display=False) as counter:
            forward(model, batch)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return counter.get_total_flops() / _batch_size(batch)


# Dense (no sparsity) peak FLOP/s per GPU from the vendors' data sheets, at boost clock:
# (name pattern, {precision: FLOP/s}). "fp32" is the CUDA-core rate; "tf32" the tensor-core rate
# for float32 matmuls when TF32 is allowed. First match wins, so specific names come first.
_T = 1e12
_PEAKS: list[tuple[str, dict[str, float]]] = [
    (r"H100.*NVL", dict(bf16=835 * _T, fp16=835 * _T, tf32=418 * _T, fp32=60 * _T)),
    (r"H100.*PCIE", dict(bf16=756 * _T, fp16=756 * _T, tf32=378 * _T, fp32=51 * _T)),
    (r"H200.*NVL", dict(bf16=835 * _T, fp16=835 * _T, tf32=418 * _T, fp32=60 * _T)),
    # H100 SXM ("NVIDIA H100 80GB HBM3"), H200 (SXM) and GH200 share the SXM H100's compute
    (r"H100|H200|GH200", dict(bf16=989 * _T, fp16=989 * _T, tf32=495 * _T, fp32=67 * _T)),
    (r"A100", dict(bf16=312 * _T, fp16=312 * _T, tf32=156 * _T, fp32=19.5 * _T)),
    (r"L40S", dict(bf16=362 * _T, fp16=362 * _T, tf32=183 * _T, fp32=91.6 * _T)),
    (r"\bL4\b", dict(bf16=121 * _T, fp16=121 * _T, tf32=60 * _T, fp32=30.3 * _T)),
    # AWS's A10G (80 SMs, 1.71 GHz) runs float16/bfloat16 matmuls with float32 accumulation at
    # half the A10's per-SM rate (as GeForce GA102 parts do): 80 * 1.71e9 * 512 = 70 TFLOP/s.
    (r"A10G", dict(bf16=70 * _T, fp16=70 * _T, tf32=35 * _T, fp32=35 * _T)),
    (r"\bA10\b", dict(bf16=125 * _T, fp16=125 * _T, tf32=62.5 * _T, fp32=31.2 * _T)),
    (r"V100", dict(fp16=125 * _T, fp32=15.7 * _T)),  # no bf16 / tf32 tensor cores
    (r"\bT4\b", dict(fp16=65 * _T, fp32=8.1 * _T)),
]
_DTYPE_KEYS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def peak_flops_by_name(name: str, dtype: torch.dtype | str = torch.bfloat16) -> float | None:
    """Dense peak FLOP/s of the GPU called ``name`` (``torch.cuda.get_device_name``) for
    ``dtype`` (``torch.bfloat16``, ``torch.float16``, ``torch.float32`` or the strings
    ``"bf16"``, ``"fp16"``, ``"tf32"``, ``"fp32"``); None when unknown."""
    key = _DTYPE_KEYS.get(dtype, dtype)
    if key not in ("bf16", "fp16", "tf32", "fp32"):
        raise ValueError(f"unknown dtype {dtype!r} for peak FLOP/s")
    upper = name.upper()
    for pattern, peaks in _PEAKS:
        if re.search(pattern, upper):
            return peaks.get(key)
    return None


def peak_flops(device: torch.device | str, dtype: torch.dtype | str = torch.bfloat16) -> float | None:
    """Dense tensor-core peak FLOP/s of ``device`` for ``dtype`` (see
    :func:`peak_flops_by_name`); None for CPUs and unknown devices.

    ``torch.float32`` means the CUDA-core float32 rate; pass ``"tf32"`` for float32 matmuls
    with TF32 allowed.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_by_name(torch.cuda.get_device_name(device), dtype)


def mfu(samples_per_s: float, flops_per_sample: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over ``peak`` (None when the peak is unknown)."""
    if peak is None or peak <= 0:
        return None
    return samples_per_s * flops_per_sample / peak
