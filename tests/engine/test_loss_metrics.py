"""Loss and metrics: the official fixture's numbers to 1e-6, plus hand-computed cases."""

import pytest
import torch

from clipvg.engine.loss import MAP_LOSS_TEMPERATURE, box_losses, patch_targets, similarity_map_loss
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


def test_patch_targets_take_patch_centres_inside_the_box_or_the_centre_patch():
    # 4 x 4 grid: patch centres at 0.125, 0.375, 0.625, 0.875
    target = torch.tensor([[0.5, 0.25, 0.5, 0.5],      # x 0.25-0.75, y 0-0.5: cols 1-2, rows 0-1
                           [0.70, 0.80, 0.05, 0.05]])  # covers no centre: the patch under it
    got = patch_targets(target, (4, 4)).view(2, 4, 4)
    want0 = torch.zeros(4, 4, dtype=torch.bool)
    want0[0:2, 1:3] = True
    want1 = torch.zeros(4, 4, dtype=torch.bool)
    want1[3, 2] = True
    assert torch.equal(got[0], want0) and torch.equal(got[1], want1)


def test_similarity_map_loss_is_cross_entropy_towards_the_target_patches():
    target = torch.tensor([[0.125, 0.125, 0.1, 0.1]])  # patch 0 of a 2 x 2 grid
    pad = torch.tensor([[False, False, False, True]])
    sim = torch.tensor([[0.0, 0.3, -0.1, -0.2, 5.0]])  # CLS first; the padded patch is ignored
    logits = torch.tensor([0.3, -0.1, -0.2]) * MAP_LOSS_TEMPERATURE
    want = -torch.log_softmax(logits, 0)[0]
    assert similarity_map_loss(sim, pad, target, (2, 2)).item() == pytest.approx(want.item(), rel=1e-5)
    better = torch.tensor([[0.0, 0.6, -0.1, -0.2, 5.0]])
    assert similarity_map_loss(better, pad, target, (2, 2)) < similarity_map_loss(sim, pad, target, (2, 2))
