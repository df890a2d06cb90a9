"""The CLIP-VG training loss: plain L1 plus GIoU, both with weight 1 (method doc §3.1).

``L = (1/B) sum_i |b_i_hat - b_i|_1 + (1/B) sum_i (1 - GIoU(xyxy(b_i_hat), xyxy(b_i)))``

Normalised by the *local* batch size (the official code does not all-reduce the count; DDP then
averages gradients across workers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clipvg.ops.boxes import cxcywh_to_xyxy, elementwise_generalized_box_iou

# Logit scale of the similarity-map loss: cosines lie in [-1, 1], too flat as logits for a
# softmax over ~50-200 patches to single out one object. 20 is the only value tried (the
# ablation in docs/pretraining.md); not tuned.
MAP_LOSS_TEMPERATURE = 20.0


def box_losses(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """L1 and GIoU losses of predicted against target boxes.

    Args:
        pred: ``(B, 4)`` predicted ``(cx, cy, w, h)`` in ``[0, 1]`` of the padded canvas.
        target: ``(B, 4)`` target boxes in the same format.

    Returns:
        ``loss_bbox`` (sum of absolute differences over ``B x 4`` divided by ``B``),
        ``loss_giou`` (mean of ``1 - GIoU``) and ``loss`` (their sum), all scalars.
    """
    if pred.shape != target.shape or pred.shape[-1] != 4:
        raise ValueError(f"expected matching (B, 4) boxes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    batch = pred.shape[0]
    loss_bbox = (pred - target).abs().sum() / batch
    giou = elementwise_generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(target))
    loss_giou = (1 - giou).sum() / batch
    return {"loss_bbox": loss_bbox, "loss_giou": loss_giou, "loss": loss_bbox + loss_giou}


def patch_targets(target: Tensor, grid: tuple[int, int]) -> Tensor:
    """Which patches of a ``(Gh, Gw)`` grid over the canvas belong to each target box.

    Args:
        target: ``(B, 4)`` ``(cx, cy, w, h)`` in ``[0, 1]`` of the padded canvas.
    Returns:
        ``(B, Gh*Gw)`` bool, row-major: patches whose centre lies inside the box, or, for a box
        that covers no patch centre (smaller than a patch), the patch under the box centre.
    """
    gh, gw = grid
    ys = (torch.arange(gh, device=target.device, dtype=target.dtype) + 0.5) / gh
    xs = (torch.arange(gw, device=target.device, dtype=target.dtype) + 0.5) / gw
    x0, y0, x1, y1 = cxcywh_to_xyxy(target).unbind(-1)
    inside_y = (ys[None] >= y0[:, None]) & (ys[None] <= y1[:, None])  # (B, Gh)
    inside_x = (xs[None] >= x0[:, None]) & (xs[None] <= x1[:, None])  # (B, Gw)
    inside = (inside_y[:, :, None] & inside_x[:, None, :]).flatten(1)
    row = (target[:, 1] * gh).long().clamp(0, gh - 1)
    col = (target[:, 0] * gw).long().clamp(0, gw - 1)
    centre = F.one_hot(row * gw + col, gh * gw).bool()
    return torch.where(inside.any(1, keepdim=True), inside, centre)


def similarity_map_loss(similarity: Tensor, patch_pad: Tensor, target: Tensor,
                        grid: tuple[int, int]) -> Tensor:
    """Cross-entropy of the similarity prior's map against the target's patches.

    The map (``(B, 1+G*G)``, CLS first) as logits over the valid patches, times
    :data:`MAP_LOSS_TEMPERATURE`; the target distribution is uniform over
    :func:`patch_targets`. Trains whatever the map is computed from (tuned tower blocks, the
    visual positional embedding) to single out the object the expression names.
    """
    logits = (similarity[:, 1:] * MAP_LOSS_TEMPERATURE).masked_fill(patch_pad, float("-inf"))
    positive = (patch_targets(target, grid) & ~patch_pad).float()
    positive = torch.where(positive.sum(1, keepdim=True) > 0, positive, (~patch_pad).float())
    want = positive / positive.sum(1, keepdim=True)
    log_p = torch.log_softmax(logits, dim=1).masked_fill(patch_pad, 0.0)
    return -(want * log_p).sum(1).mean()
