"""The CLIP-VG training loss: plain L1 plus GIoU, both with weight 1 (method doc §3.1).

``L = (1/B) sum_i |b_i_hat - b_i|_1 + (1/B) sum_i (1 - GIoU(xyxy(b_i_hat), xyxy(b_i)))``

Normalised by the *local* batch size (the official code does not all-reduce the count; DDP then
averages gradients across workers).
"""

from __future__ import annotations

from torch import Tensor

from clipvg.ops.boxes import cxcywh_to_xyxy, elementwise_generalized_box_iou


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
