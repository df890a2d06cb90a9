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
* ``"bf16-all"``    - opt-in: the whole forward (towers, ``ml_visu_proj`` / ``text_proj``,
                      fusion, box head) under ``torch.autocast(<device type>, bfloat16)``.
                      Every weight stays float32 in memory (the master weights AdamW updates),
                      gradients are float32 (autocast casts in the forward, the casts'
                      backward returns float32), the predicted boxes are cast to float32 and
                      the loss is computed in float32 outside autocast. Applied by
                      :func:`autocast_forward` around each call of the model
                      (:func:`clipvg.engine.steps.forward`, the reliability scorer), which
                      reads the policy :func:`apply_precision` recorded on the model.
* ``"auto"``        - ``"bf16"`` on CUDA, ``"fp32"`` elsewhere.

The model itself knows no devices: :func:`apply_precision` only sets the backbone's
``autocast_dtype`` hook, the dtypes of frozen tensors and (``bf16-all``) the model's
``forward_autocast_dtype`` attribute that :func:`autocast_forward` reads; the autocast device
type always comes from the inputs.

Compilation (``train.compile``, ``curriculum.scoring.compile``) is applied here too
(:func:`compile_model`): every transformer block compiled in place, so parameter names,
``state_dict`` keys and the optimizer's tensors are those of the eager model.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, ContextManager

import torch
from torch import nn

if TYPE_CHECKING:
    from clipvg.model.clipvg import CLIPVG

PRECISIONS = ("auto", "fp32", "bf16", "bf16-all", "fp16-frozen")


def resolve_precision(policy: str, device: torch.device | str) -> str:
    """The concrete policy (``fp32``, ``bf16``, ``bf16-all`` or ``fp16-frozen``) for ``policy``
    on ``device``.

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
    model.forward_autocast_dtype = torch.bfloat16 if policy == "bf16-all" else None
    if policy in ("bf16", "bf16-all"):  # bf16-all: the towers too when called without the context
        backbone.autocast_dtype = torch.bfloat16
    elif policy == "fp16-frozen":
        _store_frozen_half(backbone)
    return model


def _unwrap(model: nn.Module) -> nn.Module:
    """The CLIPVG inside a DDP wrapper (``.module``); the module itself otherwise."""
    return getattr(model, "module", model)


def autocast_forward(model: nn.Module, device_type: str) -> ContextManager:
    """The context to call ``model`` (a CLIPVG, or a DDP wrapper of one) in: bf16 autocast on
    ``device_type`` ("cpu", "cuda", the inputs' device type) under ``bf16-all``, nothing
    otherwise. Run the loss outside it, on the float32 outputs."""
    dtype = getattr(_unwrap(model), "forward_autocast_dtype", None)  # a model attribute, absent on old instances
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def compile_model(model: nn.Module, enabled: bool = True) -> nn.Module:
    """``model`` (a CLIPVG) with every transformer block compiled in place
    (``nn.Module.compile``: the visual and text towers' residual blocks and the fusion's encoder
    layers; the glue between them stays eager). Blocks, not the whole model: identical blocks
    share one compiled graph (3 graphs in all, per train / eval mode and shape), the host read
    of ``model.truncate_text`` stays outside any graph, and on this 2-core CPU the whole model
    took 123 s to compile (forward + backward, cold cache) vs 37 s for the blocks (tiny towers, measured once). State_dict keys,
    parameters and the optimizer's tensors are the eager model's. ``enabled=False``: left as
    it is. Returns ``model``."""
    if enabled:
        # One code object (open_clip's block forward) serves both towers, in train and eval
        # mode, for fixed and then dynamic text lengths and batch sizes: measured 7 compiled
        # variants on a tiny run with truncate_text (bf16-all), near dynamo's default limit of
        # 8, past which it falls back to eager without failing. Raised process-wide.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
        for block in _blocks(_unwrap(model)):
            block.compile()
    return model


_RECOMPILE_LIMIT = 32


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a CLIPVG: visual tower, text tower, fusion encoder."""
    backbone = model.backbone
    return [*backbone.visual.transformer.resblocks, *backbone.transformer.resblocks,
            *model.fusion.encoder.layers]


def _reset(backbone: nn.Module) -> None:
    """Back to the fp32 policy: no autocast, frozen weights float32, open_clip's LayerNorm."""
    # lazy: engine.steps imports this module for autocast_forward; open_clip takes seconds
    from open_clip.transformer import LayerNorm, LayerNormFp32

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
    from open_clip.transformer import LayerNorm, LayerNormFp32  # lazy, as in _reset

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
