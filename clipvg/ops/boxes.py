"""Box conversions, IoU and GIoU. Tensor in, tensor out; every function works on ``(..., 4)``.

Conventions (one place for all of them):

* ``xyxy``   – ``(x0, y0, x1, y1)``, corners. On disk: original-image pixels.
* ``xywh``   – ``(x, y, w, h)``, top-left corner and size (COCO-family split files).
* ``cxcywh`` – ``(cx, cy, w, h)``, centre and size. In the model: normalised to ``[0, 1]`` by the
  padded square canvas.

The pairwise functions (``box_iou``, ``generalized_box_iou``) return ``(N, M)`` matrices; the
``elementwise_*`` variants compare box ``i`` of ``a`` with box ``i`` of ``b`` and return ``(N,)``.
Nothing here clamps: callers that want clamping (evaluation) do it explicitly.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` centre/size -> corners: ``(cx - w/2, cy - h/2, cx + w/2, cy + h/2)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` corners -> centre/size."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` top-left/size -> corners."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` corners -> top-left/size."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack((x0, y0, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``(..., 4)`` xyxy boxes, ``(x1 - x0) * (y1 - y0)`` (negative for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union of broadcastable xyxy boxes ``a`` and ``b``."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, box_area(a) + box_area(b) - inter


def _enclosing_area(a: Tensor, b: Tensor) -> Tensor:
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes: ``a`` (N, 4), ``b`` (M, 4) -> (N, M)."""
    inter, union = box_inter_union(a[:, None, :], b[None, :, :])
    return inter / union


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU (Rezatofighi et al. 2019) of xyxy boxes: (N, 4), (M, 4) -> (N, M).

    ``GIoU = IoU - (|C| - |A u B|) / |C|`` with ``C`` the smallest enclosing box. No clamping of
    the inputs, as in the official loss (degenerate predictions are not rejected).
    """
    return _giou(a[:, None, :], b[None, :, :])


def elementwise_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of box ``i`` of ``a`` with box ``i`` of ``b``: (N, 4), (N, 4) -> (N,)."""
    inter, union = box_inter_union(a, b)
    return inter / union


def elementwise_generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of box ``i`` of ``a`` with box ``i`` of ``b``: (N, 4), (N, 4) -> (N,)."""
    return _giou(a, b)


def _giou(a: Tensor, b: Tensor) -> Tensor:
    inter, union = box_inter_union(a, b)
    enclosing = _enclosing_area(a, b)
    return inter / union - (enclosing - union) / enclosing
