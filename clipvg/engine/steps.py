"""One training step and one evaluation pass, in plain PyTorch.

Both work on *batches*: dicts with (B = batch size, S = canvas side)

* ``image``       (B, 3, S, S) float32, normalised, padding = 0
* ``pixel_mask``  (B, S, S) int, 1 = padding
* ``tokens``      (B, 77) int64 CLIP BPE ids; ``token_mask`` (B, 77) int64, 1 = real token
* ``target``      (B, 4) float32 (cx, cy, w, h) normalised by the padded canvas
* ``sample_id``   list[str] of length B; optional ``expr_type`` list[str] for per-type accuracy
* ``image_id``    list[str] of length B (evaluation: the shuffled-text control, see
  :mod:`clipvg.engine.control`, shows each sample a text of another image)

They know nothing of Ray, DDP or where batches come from: the local loop
(:mod:`clipvg.engine.local`) and the Ray Train workers (:mod:`clipvg.distributed`) feed them
alike. The model is called as ``model(image, pixel_mask, tokens, token_mask) -> (B, 4)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

from clipvg.engine.control import TextShuffler, control_summary
from clipvg.engine.loss import box_losses, similarity_map_loss
from clipvg.engine.metrics import AccuracyMeter, eval_iou
from clipvg.engine.precision import autocast_forward

MODEL_INPUTS = ("image", "pixel_mask", "tokens", "token_mask")
# What every batch builder returns (engine/batching.collate, distributed/streaming's model
# batches), so train_step / evaluate read one contract: the model inputs, ``target`` (B, 4)
# normalised cxcywh on the canvas, and per sample its id, expression type and image id (the
# shuffled-text control needs the image).
BATCH_KEYS = (*MODEL_INPUTS, "target", "sample_id", "expr_type", "image_id")


def to_device(batch: dict, device: torch.device | str) -> dict:
    """Move the tensors of a batch to ``device`` (lists of ids stay where they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def forward(model: nn.Module, batch: dict, intermediates: bool = False) -> Tensor | dict:
    """``(B, 4)`` float32 predicted boxes for a batch, under the model's precision policy
    (``bf16-all``: the whole call under bf16 autocast, :func:`~clipvg.engine.precision.autocast_forward`).
    ``intermediates``: the model's dict of every stage instead (boxes and similarity map float32)."""
    inputs = [batch[k] for k in MODEL_INPUTS]
    with autocast_forward(model, inputs[0].device.type):
        out = model(*inputs, intermediates=True) if intermediates else model(*inputs)
    if not intermediates:
        return out.float()
    return {**out, **{k: out[k].float() for k in ("pred_boxes", "similarity") if k in out}}


def train_step(
    model: nn.Module,
    batch: dict,
    optimizer: torch.optim.Optimizer,
    clip_grad_norm: float = 0.0,
    map_loss_weight: float = 0.0,
    sync: bool = True,
) -> dict[str, float] | dict[str, Tensor]:
    """Forward, L1 + GIoU loss (float32, outside any autocast), backward, optimizer step.

    ``map_loss_weight`` > 0 adds that times :func:`similarity_map_loss` (``loss_map``; the
    model needs the similarity prior). ``sync=True`` (``train.sync_every=1``): returns the
    losses as floats and raises ``FloatingPointError`` on a non-finite loss before the update
    (the official trainer aborts too), so a diverged run stops loudly instead of writing NaN
    checkpoints. ``sync=False``: no host sync at all; returns the losses as detached 0-d
    tensors on the device, to be read and checked later by :class:`StepLosses`.
    """
    model.train()
    if map_loss_weight > 0:
        out = forward(model, batch, intermediates=True)
        losses = box_losses(out["pred_boxes"], batch["target"])
        losses["loss_map"] = similarity_map_loss(out["similarity"], out["patch_mask"],
                                                 batch["target"], out["grid_size"])
        losses["loss"] = losses["loss"] + map_loss_weight * losses["loss_map"]
    else:
        losses = box_losses(forward(model, batch), batch["target"])
    loss = losses["loss"]
    if sync and not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()} (samples {batch['sample_id'][:4]}...)")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad_norm > 0:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    optimizer.step()
    if not sync:
        return {k: v.detach() for k, v in losses.items()}
    return {k: v.item() for k, v in losses.items()}


class StepLosses:
    """The losses of training steps, read on the host every ``every`` steps (``train.sync_every``).

    Each step is :meth:`add`-ed with its losses (floats from ``train_step(sync=True)``, or 0-d
    device tensors from ``sync=False``) and host values of the step (``step``, ``lr``, ...).
    Every ``every`` steps (and at :meth:`read`, e.g. the end of an epoch) the queued losses
    are stacked and copied to the host in one transfer, checked finite, and returned as one
    record per step: the host values plus the float losses, in step order. A non-finite loss
    raises ``FloatingPointError`` naming its step and the range read together (with
    ``every > 1`` the optimizer has already applied the steps up to the read).
    """

    def __init__(self, every: int = 1):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self._queued: list[tuple[dict, dict]] = []

    @property
    def sync(self) -> bool:
        """Whether each step must read its own losses (the ``sync`` of :func:`train_step`)."""
        return self.every == 1

    def add(self, losses: dict, **info) -> list[dict]:
        """Queue one step; the records read now (``[]`` until ``every`` steps are queued)."""
        self._queued.append((info, losses))
        return self.read() if len(self._queued) >= self.every else []

    def read(self) -> list[dict]:
        """Every queued step as a record ``{**info, **losses as floats}``; the queue empties."""
        queued, self._queued = self._queued, []
        if not queued:
            return []
        keys = list(queued[0][1])
        values = [[l[k] for k in keys] for _, l in queued]
        if isinstance(values[0][0], Tensor):  # one device -> host copy for all of them
            values = torch.stack([torch.stack(v).float() for v in values]).tolist()
        records = [{**info, **dict(zip(keys, map(float, v)))} for (info, _), v in zip(queued, values)]
        for r in records:
            if not math.isfinite(r["loss"]):
                first, last = records[0].get("step"), records[-1].get("step")
                raise FloatingPointError(f"non-finite loss {r['loss']} at step {r.get('step')} "
                                         f"(steps {first}-{last} read together, train.sync_every={self.every})")
        return records


@dataclass
class EvalResult:
    """Acc@0.5 over every evaluated sample, per expression type, and each sample's IoU; with
    the shuffled-text control, its Acc@0.5 too (``shuffled``; None when not run)."""

    meter: AccuracyMeter
    loss: float  # mean training loss (L1 + GIoU) over the samples
    ious: dict[str, float] = field(default_factory=dict)  # sample_id -> evaluation IoU
    seconds: float = 0.0  # the whole pass, control included
    shuffled: AccuracyMeter | None = None  # the same samples shown texts of other images
    shuffled_skipped: int = 0  # samples with no text of another image to show

    @property
    def accuracy(self) -> float:
        return self.meter.accuracy

    @property
    def total(self) -> int:
        return self.meter.total

    def summary(self) -> dict:
        out = {"acc": self.accuracy, "total": self.total, "loss": self.loss,
               "per_type": self.meter.group_accuracy(), "seconds": round(self.seconds, 2)}
        if self.shuffled is not None:
            out["shuffled_text"] = control_summary(self.shuffled, self.shuffled_skipped)
        return out


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict], device: torch.device | str = "cpu",
             shuffled_text: bool = True, seed: int = 0) -> EvalResult:
    """Official evaluation (prediction clamped to the canvas, IoU >= 0.5) over every batch.

    Every sample is counted exactly once: a ``sample_id`` seen twice is an error, because a
    duplicated or dropped row would silently bias the reported accuracy. ``shuffled_text``:
    also run each batch with texts of other images (:mod:`clipvg.engine.control`, drawn with
    ``seed``; batches then need ``image_id``) in the same single pass over ``batches``.
    """
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    meter, ious, loss_sum = AccuracyMeter(), {}, 0.0
    shuffler, control = (TextShuffler(seed), AccuracyMeter()) if shuffled_text else (None, None)
    for batch in batches:
        batch = to_device(batch, device)
        pred = forward(model, batch)
        iou = eval_iou(pred, batch["target"])
        meter.add(iou, batch.get("expr_type"))
        loss_sum += box_losses(pred, batch["target"])["loss"].item() * len(iou)
        for sample_id, value in zip(batch["sample_id"], iou.tolist()):
            if sample_id in ious:
                raise ValueError(f"sample {sample_id!r} was evaluated twice")
            ious[sample_id] = value
        foreign = shuffler(batch) if shuffler is not None else None
        if foreign is not None:
            control.add(eval_iou(forward(model, foreign), foreign["target"]), foreign.get("expr_type"))
    model.train(was_training)
    loss = loss_sum / meter.total if meter.total else math.nan
    return EvalResult(meter=meter, loss=loss, ious=ious, seconds=time.perf_counter() - start,
                      shuffled=control, shuffled_skipped=shuffler.skipped if shuffler is not None else 0)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over every trainable tensor, weight decay on all of them. One group (what the
    official script ends up doing: its per-backbone groups match no CLIP-VG parameter name),
    plus one group per learning-rate scale in ``model.lr_scales`` (``{parameter name: scale}``,
    e.g. tower blocks tuned at a tenth of the fusion's lr). Each group's ``lr_scale`` multiplies
    the scheduled lr (:func:`set_lr`)."""
    scales = getattr(model, "lr_scales", {})  # a model attribute, not a config read
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(float(scales.get(name, 1.0)), []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters (model.freeze=all with nothing else?)")
    return torch.optim.AdamW([{"params": params, "lr_scale": scale} for scale, params in groups.items()],
                             lr=lr, weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled ``lr`` times each group's ``lr_scale`` (1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def lr_factor(step: int, epoch: int, epochs: int, steps_per_epoch: int, schedule: str, warmup_steps: int) -> float:
    """Multiplier of the base learning rate at global ``step`` (in ``epoch``).

    ``cosine_epoch`` is the official schedule: constant within an epoch,
    ``0.5 (1 + cos(pi e / E))`` for epoch ``e``; ``cosine_step`` decays every step; an optional
    linear warm-up over the first ``warmup_steps`` multiplies either.
    """
    if schedule == "cosine_epoch":
        factor = 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    elif schedule == "cosine_step":
        factor = 0.5 * (1 + math.cos(math.pi * step / max(1, epochs * steps_per_epoch)))
    elif schedule == "constant":
        factor = 1.0
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


def limited(batches: Iterable[dict], max_steps: int | None) -> Iterator[dict]:
    """The first ``max_steps`` batches (all when None)."""
    for i, batch in enumerate(batches):
        if max_steps is not None and i >= max_steps:
            return
        yield batch
