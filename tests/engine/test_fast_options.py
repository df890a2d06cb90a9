"""The opt-in speed options of issue 19, each against the numerics it must keep:
``train.precision=bf16-all``, ``train.compile``, ``train.sync_every`` and
``curriculum.scoring.full_bf16`` / ``compile`` (``model.truncate_text``: tests/model)."""

import copy
import math

import pytest
import torch
from safetensors.torch import load_file

from clipvg.config import ConfigError, load_config
from clipvg.engine import loop, steps
from clipvg.engine.local import train_local
from clipvg.engine.loss import box_losses
from clipvg.engine.precision import apply_precision, compile_model
from clipvg.engine.reliability import ReliabilityScorer
from clipvg.engine.run_log import read_metrics
from clipvg.engine.steps import StepLosses, build_optimizer, train_step
from clipvg.model import build_model
from clipvg.model.io import WEIGHTS_FILE


def random_batch(cfg, batch: int = 4, seed: int = 0) -> dict:
    """A model batch of random images, mixed-length texts and targets for ``cfg.model``."""
    g = torch.Generator().manual_seed(seed)
    S, L = cfg.model.image_size, cfg.model.context_length
    pixel_mask = torch.zeros(batch, S, S, dtype=torch.int64)
    pixel_mask[0, S // 2:] = 1
    tokens = torch.zeros(batch, L, dtype=torch.int64)
    for i in range(batch):
        n = 2 + 3 * i
        tokens[i, 0], tokens[i, n + 1] = 49406, 49407  # SOT, EOT
        tokens[i, 1:n + 1] = torch.randint(1, 49000, (n,), generator=g)
    return {"image": torch.randn(batch, 3, S, S, generator=g), "pixel_mask": pixel_mask,
            "tokens": tokens, "token_mask": (tokens > 0).to(torch.int64),
            "target": 0.3 + 0.4 * torch.rand(batch, 4, generator=g),
            "sample_id": [f"s{i}" for i in range(batch)]}


def fusion_dtypes(model) -> list[torch.dtype]:
    """Records the dtype of the first fusion layer's FFN output at every forward."""
    seen = []
    model.fusion.encoder.layers[0].linear1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    return seen


# ----------------------------------------------------------------------------- bf16-all
def test_bf16_all_runs_the_whole_forward_in_bf16_with_fp32_weights_and_loss(tiny_run):
    cfg = tiny_run()
    torch.manual_seed(0)
    base = build_model(cfg.model)
    batch = random_batch(cfg)
    for policy, want in (("bf16", torch.float32), ("bf16-all", torch.bfloat16)):
        model = apply_precision(copy.deepcopy(base), policy, "cpu")
        seen = fusion_dtypes(model)
        out = steps.forward(model, batch)
        assert seen == [want] and out.dtype == torch.float32
    assert model.backbone.autocast_dtype == torch.bfloat16
    optimizer = build_optimizer(model, 1e-3, 0.0)
    losses = train_step(model, batch, optimizer)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for g in optimizer.param_groups for p in g["params"] if p.grad is not None)
    fp32 = box_losses(steps.forward(base, batch), batch["target"])["loss"].item()
    assert losses["loss"] == pytest.approx(fp32, rel=0.02) and losses["loss"] != fp32
    apply_precision(model, "fp32", "cpu")  # switched back: nothing in bf16
    assert model.forward_autocast_dtype is None and fusion_dtypes(model) == []


def test_train_local_trains_and_evaluates_under_bf16_all(tiny_run, monkeypatch):
    seen = []
    forward = steps.forward

    def spy(model, batch, *args, **kwargs):
        hook = model.fusion.encoder.layers[0].linear1.register_forward_hook(
            lambda m, i, out: seen.append(("train" if model.training else "eval", out.dtype)))
        try:
            return forward(model, batch, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(steps, "forward", spy)
    cfg = tiny_run("train.precision=bf16-all", "train.epochs=1", "train.max_steps_per_epoch=2")
    history = train_local(cfg, progress=False)
    assert [p for p, _ in seen].count("train") == 2 and {d for _, d in seen} == {torch.bfloat16}
    assert "eval" in {p for p, _ in seen} and history.test["test"]["total"] > 0


def test_scoring_full_bf16_is_the_bf16_all_policy(tiny_run):
    cfg = tiny_run()
    torch.manual_seed(0)
    model = build_model(cfg.model)
    plain = ReliabilityScorer(copy.deepcopy(model), [], {}, size=64, device="cpu", precision="fp32")
    full = ReliabilityScorer(copy.deepcopy(model), [], {}, size=64, device="cpu", precision="fp32",
                             autocast=True)
    assert plain.model.forward_autocast_dtype is None
    assert full.model.forward_autocast_dtype == torch.bfloat16  # one implementation: bf16-all


# ----------------------------------------------------------------------------- compile
@pytest.mark.slow  # inductor compiles 3 block graphs: ~40 s on 2 cores with a cold cache, ~5 s warm
def test_compiled_step_matches_eager_in_fp32(tiny_run):
    """Loss and every gradient of one fp32 training step, compiled vs eager, within 1e-5 (no
    dropout: compiled code draws other random numbers). Not the weights after AdamW: its first
    update is ~lr * sign(grad), so a gradient of ~1e-8 that differs by 1e-9 moves a weight by
    up to lr either way."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    cfg = tiny_run("model.fusion.dropout=0.0")
    torch.manual_seed(0)
    eager = build_model(cfg.model)
    compiled = compile_model(copy.deepcopy(eager))
    batch = random_batch(cfg)
    grads, losses = [], []
    for model in (eager, compiled):
        model.train()
        loss = box_losses(steps.forward(model, batch), batch["target"])["loss"]
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert counters["stats"]["unique_graphs"] - graphs >= 3  # visual, text, fusion blocks ran compiled
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=1e-5, msg=name)
    assert compiled.state_dict().keys() == eager.state_dict().keys()


def test_build_training_compiles_the_blocks_when_asked(tiny_run):
    plain, _ = loop.build_training(tiny_run())
    model, optimizer = loop.build_training(tiny_run("train.compile=true"))
    blocks = [*model.backbone.visual.transformer.resblocks, *model.backbone.transformer.resblocks,
              *model.fusion.encoder.layers]
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert all(b._compiled_call_impl is None for b in plain.modules())
    assert model.state_dict().keys() == plain.state_dict().keys()


# ----------------------------------------------------------------------------- sync_every
def test_step_losses_reads_every_n_steps_and_names_the_range():
    reader = StepLosses(3)
    t = lambda v: {"loss": torch.tensor(v), "l1": torch.tensor(v / 2)}  # noqa: E731
    assert reader.add(t(1.0), step=1) == [] and reader.add(t(2.0), step=2) == []
    assert reader.add(t(3.0), step=3) == [{"step": s, "loss": float(s), "l1": s / 2} for s in (1, 2, 3)]
    assert reader.add(t(4.0), step=4) == [] and reader.read() == [{"step": 4, "loss": 4.0, "l1": 2.0}]
    reader.add(t(5.0), step=5), reader.add(t(math.nan), step=6)
    with pytest.raises(FloatingPointError, match=r"at step 6 \(steps 5-7 read together"):
        reader.add(t(1.0), step=7)
    assert StepLosses(1).add({"loss": 2.0}, step=1) == [{"step": 1, "loss": 2.0}]  # floats: as given
    with pytest.raises(ConfigError, match="train.sync_every"):
        load_config(None, ["train.sync_every=0"])


def test_sync_every_4_trains_the_same_weights_and_logs_the_same_losses(tiny_run):
    runs = {}
    for every in (1, 4):
        cfg = tiny_run("train.epochs=1", "train.max_steps_per_epoch=6", f"train.sync_every={every}",
                       f"storage.run_name=s{every}", "data.augment.color=false")
        history = train_local(cfg, progress=False)
        steps_logged = [r for r in read_metrics(cfg.run_dir) if r["kind"] == "step"]
        runs[every] = (load_file(f"{cfg.run_dir}/last/{WEIGHTS_FILE}"), steps_logged, history.epochs[0]["train_loss"])
    (w1, log1, loss1), (w4, log4, loss4) = runs[1], runs[4]
    assert w1.keys() == w4.keys() and all(torch.equal(w1[k], w4[k]) for k in w1)
    assert [r["step"] for r in log4] == list(range(1, 7))
    assert [r["loss"] for r in log4] == [r["loss"] for r in log1] and loss4 == loss1


def test_sync_every_still_stops_a_run_at_a_nan(tiny_run, monkeypatch):
    from clipvg.engine import local

    calls = []

    def poisoned(model, batch, *args, **kwargs):
        calls.append(kwargs["sync"])
        if len(calls) == 2:  # plant a NaN in the 2nd step's targets
            batch = {**batch, "target": batch["target"].clone().fill_(math.nan)}
        return train_step(model, batch, *args, **kwargs)

    monkeypatch.setattr(local, "train_step", poisoned)
    cfg = tiny_run("train.epochs=1", "train.max_steps_per_epoch=6", "train.sync_every=4")
    with pytest.raises(FloatingPointError, match=r"at step 2 \(steps 1-4 read together"):
        train_local(cfg, progress=False)
    assert calls == [False] * 4  # no step read its own loss
