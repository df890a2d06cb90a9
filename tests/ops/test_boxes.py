"""Box math: hand-computed values pin the formulas; hypothesis pins the invariants."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipvg.ops import boxes as B


def _xyxy_boxes(n_min=1, n_max=6):
    coord = st.floats(0, 100, allow_nan=False, width=32)
    size = st.floats(0.5, 50, allow_nan=False, width=32)
    box = st.tuples(coord, coord, size, size).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])
    return st.lists(box, min_size=n_min, max_size=n_max).map(lambda l: torch.tensor(l, dtype=torch.float64))


def test_hand_computed_iou_and_giou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    # intersection 1, union 4 + 4 - 1 = 7, enclosing box 3 x 3 = 9
    assert math.isclose(B.box_iou(a, b).item(), 1 / 7, rel_tol=1e-6)
    assert math.isclose(B.generalized_box_iou(a, b).item(), 1 / 7 - 2 / 9, rel_tol=1e-6)
    # disjoint boxes: IoU 0, GIoU negative: enclosing 4 x 1 = 4, union 2 -> -(4 - 2)/4
    c = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    d = torch.tensor([[3.0, 0.0, 4.0, 1.0]])
    assert B.box_iou(c, d).item() == 0.0
    assert math.isclose(B.generalized_box_iou(c, d).item(), -0.5, rel_tol=1e-6)


def test_conversions_hand_computed():
    cxcywh = torch.tensor([0.5, 0.4, 0.2, 0.6])
    assert torch.allclose(B.cxcywh_to_xyxy(cxcywh), torch.tensor([0.4, 0.1, 0.6, 0.7]))
    xywh = torch.tensor([303.58, 69.03, 293.29, 425.79], dtype=torch.float64)
    assert torch.allclose(B.xywh_to_xyxy(xywh), torch.tensor([303.58, 69.03, 596.87, 494.82], dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(_xyxy_boxes())
def test_conversions_round_trip(boxes):
    assert torch.allclose(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(boxes)), boxes, atol=1e-9)
    assert torch.allclose(B.xywh_to_xyxy(B.xyxy_to_xywh(boxes)), boxes, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(_xyxy_boxes(), _xyxy_boxes())
def test_iou_giou_invariants(a, b):
    iou = B.box_iou(a, b)
    giou = B.generalized_box_iou(a, b)
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all()
    assert ((giou >= -1 - 1e-12) & (giou <= iou + 1e-12)).all()  # GIoU <= IoU, GIoU in [-1, 1]
    assert torch.allclose(iou, B.box_iou(b, a).T)  # symmetric
    assert torch.allclose(giou, B.generalized_box_iou(b, a).T)
    self_iou = B.box_iou(a, a).diagonal()
    assert torch.allclose(self_iou, torch.ones_like(self_iou))
    # elementwise versions agree with the diagonal of the pairwise ones
    n = min(len(a), len(b))
    assert torch.allclose(B.elementwise_box_iou(a[:n], b[:n]), iou[:n, :n].diagonal())
    assert torch.allclose(B.elementwise_generalized_box_iou(a[:n], b[:n]), giou[:n, :n].diagonal())


@settings(max_examples=40, deadline=None)
@given(_xyxy_boxes(), st.floats(0.1, 10), st.floats(-50, 50), st.floats(-50, 50))
def test_iou_is_invariant_to_scale_and_shift(a, scale, dx, dy):
    # the reason evaluation in the letter-boxed canvas equals evaluation in image pixels
    b = a.flip(0)
    moved_a = a * scale + torch.tensor([dx, dy, dx, dy], dtype=a.dtype)
    moved_b = b * scale + torch.tensor([dx, dy, dx, dy], dtype=b.dtype)
    assert torch.allclose(B.box_iou(a, b), B.box_iou(moved_a, moved_b), atol=1e-7)
    assert torch.allclose(B.generalized_box_iou(a, b), B.generalized_box_iou(moved_a, moved_b), atol=1e-7)
