"""``clipvg train-local``: train CLIP-VG in this process, no Ray.

A small, readable loop over :func:`clipvg.engine.steps.train_step` and
:func:`clipvg.engine.steps.evaluate` for laptops, tests and the demo. The cluster path
(:mod:`clipvg.distributed`) reuses the same steps. Outputs under ``cfg.run_dir``:
``config.yaml`` (resolved), ``metrics.jsonl`` (one line per logged step and per epoch),
``best/`` and ``last/`` (``model.safetensors`` + ``model_config.json``), ``curve.png``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from clipvg.config import Config, load_config, save_config
from clipvg.data.batching import build_loader, ensure_dataset
from clipvg.data.synthetic_baseline import world_baselines
from clipvg.engine.control import fmt_acc, shuffled_text_table
from clipvg.engine.steps import build_optimizer, evaluate, limited, lr_factor, set_lr, train_step
from clipvg.model import build_model, count_parameters, export_model

log = logging.getLogger("clipvg.train")


@dataclass
class TrainHistory:
    """What a local training run produced (also written to ``metrics.jsonl``)."""

    run_dir: str
    epochs: list[dict] = field(default_factory=list)  # per epoch: train loss, val acc, per type
    best_acc: float = -1.0
    best_epoch: int = -1
    test: dict = field(default_factory=dict)  # split -> summary of the best model
    # split -> {"acc", "per_type"} of the best model shown texts of other images (the control
    # of clipvg.engine.control; also inside each test summary, as "shuffled_text")
    test_shuffled_text: dict = field(default_factory=dict)
    # synthetic world only: split -> {"acc", "per_type", "total"} of a random object's box
    random_object_baseline: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train_local(cfg: Config, progress: bool = True, **storage_options) -> TrainHistory:
    """Train on ``cfg.data`` (the synthetic world by default) and evaluate every epoch.
    ``cfg.run_dir`` is a local folder; the dataset may be anywhere (``storage_options``)."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    seed_everything(cfg.train.seed)
    data_uri = ensure_dataset(cfg)

    model = build_model(cfg.model)
    total, trainable = count_parameters(model)
    log.info("model: %.2f M parameters, %.2f M trainable", total / 1e6, trainable / 1e6)
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    train_loader = build_loader(cfg, data_uri, cfg.data.train_split, train=True, **storage_options)
    val_loader = build_loader(cfg, data_uri, cfg.data.val_split, train=False, **storage_options)
    steps_per_epoch = min(len(train_loader), cfg.train.max_steps_per_epoch or math.inf)

    history = TrainHistory(run_dir=str(run_dir))
    metrics_file = (run_dir / "metrics.jsonl").open("w")
    step = 0
    for epoch in range(cfg.train.epochs):
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        if hasattr(train_loader.dataset, "set_epoch"):  # fresh images: a new stream per epoch
            train_loader.dataset.set_epoch(epoch)
        bar = tqdm(limited(train_loader, cfg.train.max_steps_per_epoch), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=None if progress else True, leave=False)
        for batch in bar:
            factor = lr_factor(step, epoch, cfg.train.epochs, steps_per_epoch, cfg.train.schedule, cfg.train.warmup_steps)
            set_lr(optimizer, cfg.train.lr * factor)
            losses = train_step(model, batch, optimizer, cfg.train.clip_grad_norm, cfg.train.map_loss)
            n = len(batch["sample_id"])
            seen, loss_sum, step = seen + n, loss_sum + losses["loss"] * n, step + 1
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{losses['loss']:.3f}", sps=f"{rate:.0f}")
            if step % cfg.train.log_every == 0:
                _write(metrics_file, {"step": step, "epoch": epoch, "lr": cfg.train.lr * factor,
                                      "samples_per_s": rate, **losses})
        train_seconds = time.perf_counter() - t0
        result = evaluate(model, val_loader)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_samples": seen,
                  "train_seconds": train_seconds,
                  "train_samples_per_s": seen / (time.perf_counter() - t0),
                  "val": result.summary(), "elapsed_s": time.perf_counter() - t0}
        history.epochs.append(record)
        _write(metrics_file, record)
        export_model(model, run_dir / "last")
        if result.accuracy > history.best_acc:  # strictly better, as the official trainer
            history.best_acc, history.best_epoch = result.accuracy, epoch + 1
            export_model(model, run_dir / "best")
        log.info("epoch %d: train loss %.4f, val Acc@0.5 %.4f (shuffled text %s) %s", epoch + 1,
                 record["train_loss"], result.accuracy, fmt_acc(record["val"]["shuffled_text"]["acc"]),
                 _fmt_types(result.meter.group_accuracy()))
    metrics_file.close()
    history.test = _evaluate_best(cfg, data_uri, run_dir, storage_options)
    history.test_shuffled_text = shuffled_text_table(history.test)
    history.random_object_baseline = world_baselines(cfg.data)  # what a text-blind pick scores
    (run_dir / "history.json").write_text(json.dumps(history.__dict__, indent=2))
    return history


def _evaluate_best(cfg: Config, data_uri: str, run_dir: Path, storage_options: dict) -> dict:
    """Held-out accuracy of the best checkpoint on every test split."""
    from clipvg.model import load_model

    best = load_model(run_dir / "best")
    out = {}
    for split in cfg.data.test_splits:
        loader = build_loader(cfg, data_uri, split, train=False, **storage_options)
        out[split] = evaluate(best, loader).summary()
    return out


def train_local_to_storage(cfg: Config, progress: bool = False) -> dict:
    """:func:`train_local` in a temporary folder, then ``best/``, ``history.json``,
    ``metrics.jsonl`` and ``config.yaml`` published to ``cfg.run_dir`` (any storage URI).
    Returns the history as :mod:`clipvg.distributed.trainer` writes it (``run_dir`` = the
    storage folder). A run interrupted before publishing starts over when run again."""
    import dataclasses
    import tempfile

    from clipvg.data import storage

    options = storage.options_from_config(cfg.storage)
    with tempfile.TemporaryDirectory(prefix="clipvg-trial-") as tmp:
        local = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=tmp, run_name="run"))
        history = train_local(local, progress=progress, **options)
        folder = Path(history.run_dir)
        record = {**history.__dict__, "run_dir": cfg.run_dir, "world_size": 1}
        (folder / "history.json").write_text(json.dumps(record, indent=2))
        files = [p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] != "last"]
        for path in sorted(files, key=lambda p: p.name == "history.json"):  # history.json last
            storage.write_bytes(path.read_bytes(), storage.join(cfg.run_dir, *path.relative_to(folder).parts),
                                **options)
    return record


def _write(handle, record: dict) -> None:
    handle.write(json.dumps(record) + "\n")
    handle.flush()


def _fmt_types(per_type: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in per_type.items())


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML run config (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.config, args.overrides)
    history = train_local(cfg)
    for split, summary in history.test.items():
        print(f"held-out {split} Acc@0.5 = {summary['acc']:.4f} over {summary['total']} samples "
              f"(best epoch {history.best_epoch}) {_fmt_types(summary['per_type'])}; "
              f"shuffled text {fmt_acc(summary['shuffled_text']['acc'])}")
    print(f"outputs: {history.run_dir}")
    return 0
