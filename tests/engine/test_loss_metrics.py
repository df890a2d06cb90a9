"""Loss and metrics: the official fixture's numbers to 1e-6, plus hand-computed cases."""

import pytest
import torch

from clipvg.engine.loss import box_losses
from clipvg.engine.metrics import AccuracyMeter, correct_at, eval_iou
from clipvg.ops.boxes import cxcywh_to_xyxy, generalized_box_iou

@pytest.fixture(scope="module")
def cases(official_cases):
    return official_cases


def test_losses_match_official(cases):
    out = box_losses(cases["pred_boxes"], cases["target_boxes"])
    assert abs(out["loss_bbox"].item() - cases["loss_bbox"].item()) <= 1e-6
    assert abs(out["loss_giou"].item() - cases["loss_giou"].item()) <= 1e-6
    assert torch.equal(out["loss"], out["loss_bbox"] + out["loss_giou"])


def test_giou_matrix_and_eval_iou_match_official(cases):
    giou = generalized_box_iou(cxcywh_to_xyxy(cases["pred_boxes"]), cxcywh_to_xyxy(cases["target_boxes"]))
    assert (giou - cases["giou_matrix"]).abs().max().item() <= 1e-6
    iou = eval_iou(cases["pred_boxes"], cases["target_boxes"])
    assert (iou - cases["eval_iou"]).abs().max().item() <= 1e-6
    assert torch.equal(correct_at(iou), cases["eval_correct_at_0.5"])


def test_loss_hand_computed():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    target = torch.tensor([[0.6, 0.5, 0.2, 0.2]])
    out = box_losses(pred, target)
    assert out["loss_bbox"].item() == pytest.approx(0.1, abs=1e-7)
    # boxes [0.4,0.6] and [0.5,0.7] in x, same y: inter 0.1*0.2, union 0.06, enclosing 0.3*0.2
    giou = 0.02 / 0.06 - (0.06 - 0.06) / 0.06
    assert out["loss_giou"].item() == pytest.approx(1 - giou, abs=1e-6)


def test_loss_gradients_are_finite_for_perfect_prediction():
    target = torch.tensor([[0.5, 0.5, 0.3, 0.4]])
    pred = target.clone().requires_grad_(True)
    out = box_losses(pred, target)
    out["loss"].backward()
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(pred.grad).all()


def test_eval_iou_clamps_prediction_only():
    # prediction sticks out of the canvas on the left: clamped to x0 = 0
    pred = torch.tensor([[0.05, 0.5, 0.3, 0.2]])  # xyxy (-0.1, 0.4, 0.2, 0.6) -> (0, 0.4, 0.2, 0.6)
    target = torch.tensor([[0.1, 0.5, 0.2, 0.2]])  # xyxy (0, 0.4, 0.2, 0.6)
    assert eval_iou(pred, target).item() == pytest.approx(1.0, abs=1e-6)


def test_accuracy_meter_counts_groups_and_merges():
    meter = AccuracyMeter()
    meter.add(torch.tensor([0.9, 0.4, 0.5]), ["attribute", "spatial", "spatial"])
    assert (meter.correct, meter.total) == (2, 3)
    assert meter.group_accuracy() == {"attribute": 1.0, "spatial": 0.5}
    other = AccuracyMeter()
    other.add(torch.tensor([0.1]), ["relational"])
    meter.merge(other.state())
    assert meter.total == 4 and meter.accuracy == 0.5
    assert meter.group_accuracy()["relational"] == 0.0
