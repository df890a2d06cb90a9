"""Numeric precision policies of a CLIP-VG model (method doc §2.2), in plain PyTorch.

Policies (``TrainConfig.precision``):

* ``"fp32"``        - everything float32 (the reference).
* ``"bf16"``        - both CLIP towers compute under ``torch.autocast(<device type>, bfloat16)``;
                      their weights stay float32 in memory and their outputs are cast to float32
                      before ``ml_visu_proj`` / ``text_proj``. Projections, fusion, [REG] token,
                      box head and (``freeze: official``) the trainable visual positional
                      embedding compute and store in float32 and get float32 gradients.
* ``"fp16-frozen"`` - the official policy: the *frozen* tower weights of Linear / conv /
                      attention layers and the ``text_projection`` matrix are stored float16 (as
                      CLIP's loader does), so the towers run in float16 without autocast;
                      LayerNorm parameters, embedding tables, class and positional embeddings
                      stay float32 and every LayerNorm computes in float32 (open_clip's
                      ``LayerNormFp32``). Tower outputs are float32, trainable parts float32, no
                      loss scaling (no float16 tensor ever receives a gradient).
* ``"auto"``        - ``"bf16"`` on CUDA, ``"fp32"`` elsewhere.

The model itself knows no devices: :func:`apply_precision` only sets the backbone's
``autocast_dtype`` hook and the dtypes of frozen tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from open_clip.transformer import LayerNorm, LayerNormFp32
from torch import nn

if TYPE_CHECKING:
    from clipvg.model.clipvg import CLIPVG

PRECISIONS = ("auto", "fp32", "bf16", "fp16-frozen")


def resolve_precision(policy: str, device: torch.device | str) -> str:
    """The concrete policy (``fp32``, ``bf16`` or ``fp16-frozen``) for ``policy`` on ``device``.

    Raises ``ValueError`` naming the valid policies for an unknown name.
    """
    if policy not in PRECISIONS:
        raise ValueError(f"unknown precision {policy!r}; expected one of {', '.join(PRECISIONS)}")
    if policy == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return policy


def apply_precision(model: CLIPVG, policy: str, device: torch.device | str) -> CLIPVG:
    """Put ``model`` (a :class:`~clipvg.model.clipvg.CLIPVG`) under ``policy``, in place.

    Call after ``model.to(device)`` (a later ``model.float()`` or ``.half()`` would undo or
    spoil it). The optimizer may be built before or after: only frozen tensors change dtype,
    trainable parameters keep their identity and stay float32. Applying a policy first undoes
    the previous one, so policies can be switched on one model. Weights of frozen tensors
    survive the float16 round trip only to float16 precision.

    Returns:
        ``model``.
    """
    policy = resolve_precision(policy, device)
    backbone = model.backbone
    _reset(backbone)
    if policy == "bf16":
        backbone.autocast_dtype = torch.bfloat16
    elif policy == "fp16-frozen":
        _store_frozen_half(backbone)
    return model


def _reset(backbone: nn.Module) -> None:
    """Back to the fp32 policy: no autocast, frozen weights float32, open_clip's LayerNorm."""
    backbone.autocast_dtype = None
    for module in backbone.modules():
        if type(module) is LayerNormFp32:
            module.__class__ = LayerNorm  # what build_clip makes (towers built without cast_dtype)
    for p in backbone.parameters():
        if p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


# The weights CLIP's loader stores in float16: conv / linear weights and biases, the attention
# in-projection, the text projection matrix. Embeddings and LayerNorms stay float32.
_HALF_ATTRS = {nn.Conv2d: ("weight", "bias"), nn.Linear: ("weight", "bias"),
               nn.MultiheadAttention: ("in_proj_weight", "in_proj_bias", "q_proj_weight",
                                       "k_proj_weight", "v_proj_weight", "bias_k", "bias_v")}


def _store_frozen_half(backbone: nn.Module) -> None:
    """float16 storage for frozen matmul weights; LayerNorm computed in float32.

    Only tensors with ``requires_grad=False`` are cast: a trainable tensor (``freeze: none``)
    stays float32, since a float16 master weight would lose its updates without loss scaling.
    A module whose tensors are not all frozen is left float32 entirely (mixed weight/bias
    dtypes would not run).
    """
    half = torch.float16
    for module in backbone.modules():
        for kind, attrs in _HALF_ATTRS.items():
            if isinstance(module, kind):
                tensors = [t for t in (getattr(module, a, None) for a in attrs) if t is not None]
                if tensors and not any(t.requires_grad for t in tensors):
                    for t in tensors:
                        t.data = t.data.to(half)
        if type(module) is LayerNorm:
            # open_clip's LayerNorm computes in the input dtype; official CLIP's computes in
            # float32 and casts back. Same parameters, so swapping the class is enough.
            module.__class__ = LayerNormFp32
    proj = getattr(backbone, "text_projection", None)
    if isinstance(proj, nn.Parameter) and not proj.requires_grad:
        proj.data = proj.data.to(half)
