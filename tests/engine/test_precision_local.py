"""``train.precision`` means the same in every launcher: train-local (and so every in_trial
search trial) trains, validates and tests its model under the policy, as the Ray Train worker
does (both build it with :func:`clipvg.engine.loop.build_training`)."""

import pytest
import torch

from clipvg.engine import local, loop, steps
from clipvg.engine.local import train_local


def spy_forwards(monkeypatch) -> list[tuple[str, torch.dtype, torch.dtype]]:
    """Every model forward of the loop (training steps and evaluations alike go through
    ``steps.forward``): (train/eval, dtype of the first visual block's output, dtype of the
    frozen patch embedding's weight)."""
    seen = []
    forward = steps.forward

    def spy(model, batch):
        visual = model.backbone.visual
        hook = visual.transformer.resblocks[0].register_forward_hook(
            lambda m, i, out: seen.append(("train" if model.training else "eval", out.dtype,
                                           visual.conv1.weight.dtype)))
        try:
            return forward(model, batch)
        finally:
            hook.remove()

    monkeypatch.setattr(steps, "forward", spy)
    return seen


@pytest.mark.parametrize("policy, tower, frozen", [
    ("fp32", torch.float32, torch.float32),
    ("auto", torch.float32, torch.float32),  # on CPU: fp32
    ("bf16", torch.bfloat16, torch.float32),  # towers under autocast, weights stay fp32
    ("fp16-frozen", torch.float16, torch.float16),  # the official policy: frozen weights fp16
])
def test_train_local_trains_validates_and_tests_under_train_precision(tiny_run, monkeypatch, policy, tower, frozen):
    seen = spy_forwards(monkeypatch)
    cfg = tiny_run("model.freeze=official", f"train.precision={policy}", "train.epochs=1",
                   "train.max_steps_per_epoch=2")
    history = train_local(cfg, progress=False)
    phases = [phase for phase, _, _ in seen]
    assert phases.count("train") == 2 and phases.count("eval") >= 2  # validation and test
    assert {(dtype, weight) for _, dtype, weight in seen} == {(tower, frozen)}, seen
    assert history.test["test"]["total"] > 0


def test_the_policy_changes_what_train_local_computes(tiny_run, monkeypatch):
    losses = {}
    for policy in ("fp32", "bf16"):
        records = []
        monkeypatch.setattr(local, "train_step", lambda *a, **k: records.append(steps.train_step(*a, **k)) or records[-1])
        cfg = tiny_run("model.freeze=official", f"train.precision={policy}", "train.epochs=1",
                       "train.max_steps_per_epoch=2", f"storage.run_name={policy}")
        train_local(cfg, progress=False)
        losses[policy] = [r["loss"] for r in records]
    assert len(losses["fp32"]) == 2 and losses["fp32"] != losses["bf16"]
    assert losses["fp32"][0] == pytest.approx(losses["bf16"][0], rel=0.05)  # same model, other numerics


def _built(model, optimizer) -> tuple:
    """What a launcher's build decides: each parameter's dtype and trainability, and the
    optimizer's groups (learning rate, weight decay, parameter shapes)."""
    return ({n: (p.dtype, p.requires_grad) for n, p in model.named_parameters()},
            [(g["lr"], g["weight_decay"], [tuple(p.shape) for p in g["params"]])
             for g in optimizer.param_groups])


def test_one_build_for_every_launcher(tiny_run):
    """The Ray Train worker's build (``worker._build``, one process: no DDP wrapper) and the
    local loop's (``loop.build_training``) give the same model - tensors, dtypes under the
    policy, trainable set, initial weights for the same seed - and the same optimizer groups.
    Planted defect that fails it: ``worker._build`` making its own ``build_model(cfg.model)`` +
    ``AdamW(lr=cfg.train.lr)`` (precision policy and train.weight_decay skipped)."""
    from clipvg.distributed import worker  # deferred: loads Ray Train (12 s), only this test needs it

    cfg = tiny_run("model.freeze=official", "train.precision=fp16-frozen", "train.weight_decay=0.05")
    torch.manual_seed(0)
    model, raw_model, optimizer = worker._build(cfg, worker.Ctx(rank=0, world=1, device=torch.device("cpu")))
    assert model is raw_model
    torch.manual_seed(0)
    local_model, local_optimizer = loop.build_training(cfg)
    assert _built(raw_model, optimizer) == _built(local_model, local_optimizer)
    theirs = local_model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in raw_model.state_dict().items())
    assert raw_model.backbone.visual.conv1.weight.dtype == torch.float16  # the policy was applied
    assert all(p.dtype == torch.float32 for g in optimizer.param_groups for p in g["params"])
    assert {g["weight_decay"] for g in optimizer.param_groups} >= {0.05}