"""``clipvg train-local``: train CLIP-VG in this process, no Ray.

A small, readable loop over :func:`clipvg.engine.steps.train_step` and
:func:`clipvg.engine.steps.evaluate` for laptops, tests and the demo. The cluster path
(:mod:`clipvg.distributed`) reuses the same steps. Outputs under ``cfg.run_dir`` - a local
folder or a storage URI (``s3://...``, with the run's ``storage.*`` options):
``config.yaml`` (resolved), ``metrics.jsonl`` and ``tensorboard/`` (one record per logged step
and per epoch, :class:`~clipvg.engine.run_log.RunLog`), ``best/`` (model folder),
``last/`` (the training state after the latest epoch: model, optimizer, schedule position,
random-generator states; also a model folder) and ``history.json``.

For a URI the loop works in a local cache folder (the TensorBoard writer appends to a real
file, and checkpoints are written by torch to files) and publishes ``best/``, ``last/`` and the
metrics to the run's storage after every epoch, so an interrupted run loses at most the epoch
in progress. Nothing is ever written to a local path derived from a URI.

A run folder that already holds results (``best/``, ``last/`` or ``history.json``) is never
replaced silently: ``train.resume=true`` continues it from ``last/`` (the resumed run draws the
data and dropout an uninterrupted one would), ``--overwrite`` starts it over, anything else is
refused with a :class:`~clipvg.errors.UserError`. Ctrl-C ends with
:class:`~clipvg.errors.InterruptedRun`, one line saying what was kept; a Ctrl-C while ``best/``
and ``last/`` are being written takes effect once they are whole (:func:`held_interrupts`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipvg.config import Config, check_launcher, save_config
from clipvg.data import storage
from clipvg.engine.batching import build_loader, ensure_dataset
from clipvg.engine.checkpoint import (
    STATE_FILE,
    TrainState,
    load_training_state,
    read_rng_state,
    save_training_state,
)
from clipvg.engine.control import fmt_acc, shuffled_text_table
from clipvg.engine.loop import build_training, end_epoch, epoch_rate, under_policy
from clipvg.engine.run_log import RunLog
from clipvg.engine.steps import StepLosses, evaluate, limited, lr_factor, set_lr, train_step
from clipvg.errors import InterruptedRun, Terminated, UserError, how_stopped
from clipvg.model import count_parameters, export_model, load_model
from clipvg.model.hub import ensure_pretrained
from clipvg.progress import progress as progress_bar
from clipvg.sources.synthetic.baseline import world_baselines

log = logging.getLogger("clipvg.train")

BEST, LAST, HISTORY = "best", "last", "history.json"
# what makes a run folder "hold results" (a file of each, so object stores answer exactly)
RESULT_FILES = {BEST: "best/model.safetensors", LAST: "last/model.safetensors", HISTORY: HISTORY}
# what --overwrite removes (a run's own outputs; demo figures included), nothing else
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "tensorboard", BEST, LAST, HISTORY, "curve.png",
               "predictions.png")


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


class RunFolder:
    """The run folder ``run_dir``: worked on in place when it is a local path, else in a local
    cache folder whose entries :meth:`publish` copies to storage."""

    def __init__(self, run_dir: str, options: dict):
        self.uri, self.options = run_dir, options
        local = storage.local_path(run_dir)
        self.remote = local is None
        self.local = Path(local) if local is not None else Path(tempfile.mkdtemp(prefix="clipvg-run-"))

    def exists(self, relative: str) -> bool:
        return storage.exists(storage.join(self.uri, relative), **self.options)

    def publish(self, name: str, *, last: tuple[str, ...] = ()) -> None:
        """Copy the local ``name`` (a folder) to the run's storage (no-op in place)."""
        if self.remote:
            storage.upload_folder(self.local / name, storage.join(self.uri, name), last=last, **self.options)

    def fetch(self, name: str) -> None:
        """Copy the folder ``name`` from the run's storage into the cache (no-op in place)."""
        if self.remote:
            storage.download_folder(storage.join(self.uri, name), self.local / name, **self.options)

    def write_text(self, name: str, text: str) -> None:
        storage.write_bytes(text.encode("utf-8"), storage.join(self.uri, name), **self.options)

    def close(self) -> None:
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)


def prepare_run(cfg: Config, folder: RunFolder, overwrite: bool = False) -> bool:
    """Whether the run continues from ``last/`` (True) or starts fresh (False), decided before
    anything is written: results in the folder are continued with ``train.resume=true``,
    removed with ``overwrite``, and otherwise refused (:class:`UserError`)."""
    found = [name for name, path in RESULT_FILES.items() if folder.exists(path)]
    checkpoint = folder.exists(f"{LAST}/{STATE_FILE}")
    if cfg.train.resume and overwrite:
        raise UserError("train.resume=true continues a run and --overwrite starts it over: give one")
    if cfg.train.resume:
        if checkpoint:
            return True
        what = (f" ({', '.join(found)} there, but no last/{STATE_FILE}: written by an older clipvg "
                f"or another command; start another run with a new storage.run_name, or replace it "
                f"with --overwrite)" if found else f" (last/{STATE_FILE})")
        raise UserError(f"train.resume=true but {cfg.run_dir} has no checkpoint to continue from{what}")
    if found:
        if not overwrite:
            raise UserError(f"{cfg.run_dir} already holds the results of a run ({', '.join(found)}): "
                            f"continue it with train.resume=true, start another with a new "
                            f"storage.run_name, or replace it with --overwrite")
        for name in RUN_OUTPUTS:
            uri = storage.join(folder.uri, name)
            storage.remove_tree(uri, **folder.options)
        log.info("--overwrite: removed the outputs of the earlier run in %s", cfg.run_dir)
    return False


def rng_state(train_loader) -> dict:
    """The random generators a training epoch draws from (global torch and Python ones, the
    loader's shuffling, the augmentation), as tensors, numbers and lists."""
    transform_rng = getattr(getattr(train_loader.dataset, "transform", None), "rng", None)
    generator = getattr(train_loader, "generator", None)
    return {"torch": torch.get_rng_state(), "python": _py_state(random.getstate()),
            "loader": generator.get_state() if generator is not None else None,
            "transform": _py_state(transform_rng.getstate()) if transform_rng is not None else None}


def restore_rng_state(state: dict | None, train_loader) -> bool:
    """Undo :func:`rng_state`; False when there is nothing to restore (an older checkpoint)."""
    if not state:
        return False
    torch.set_rng_state(state["torch"])
    random.setstate(_py_tuple(state["python"]))
    generator = getattr(train_loader, "generator", None)
    if generator is not None and state.get("loader") is not None:
        generator.set_state(state["loader"])
    transform_rng = getattr(getattr(train_loader.dataset, "transform", None), "rng", None)
    if transform_rng is not None and state.get("transform") is not None:
        transform_rng.setstate(_py_tuple(state["transform"]))
    return True


def _py_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_tuple(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


@contextlib.contextmanager
def held_interrupts():
    """Run the block with Ctrl-C (SIGINT) and SIGTERM held, then deliver them: a checkpoint
    being written when the user presses Ctrl-C, or the node is preempted, is finished first, so
    ``last/`` is always a whole checkpoint (the previous one or the new one), never a folder
    without its ``state.json``. Signal handlers can only be set in the main thread; elsewhere
    (a search trial's thread) the block runs as is. An ignored signal stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig in held:  # None: a handler not set from Python; the default action stands in
            signal.signal(sig, signal.SIG_DFL if previous[sig] is None else previous[sig])
    for sig in held:  # deliver what came, as its own handler would have (SIGINT first)
        if sig not in caught or previous[sig] is signal.SIG_IGN:
            continue
        if callable(previous[sig]):  # Python's SIGINT handler, sigterm_as_interrupt's: they raise
            previous[sig](sig, None)
        if sig == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), sig)  # the default action, now that it is back


def _interrupted(run_dir: str, where: str, state: TrainState, how: str = "interrupted") -> str:
    if state.epoch == 0:
        return (f"{how} {where}; kept: nothing to resume in {run_dir} (no epoch finished; "
                f"a rerun starts over)")
    return (f"{how} {where}; kept: {run_dir} last/ from epoch {state.epoch} "
            f"(resume with train.resume=true)")


def train_local(cfg: Config, progress: bool = True, *, overwrite: bool = False,
                **storage_options) -> TrainHistory:
    """Train on ``cfg.data`` (the synthetic world by default) and evaluate every epoch.

    ``cfg.run_dir`` and the dataset may be local or on any storage (options: the run's
    ``storage.*``, updated by ``storage_options``). ``overwrite``: replace the results of an
    earlier run in the folder instead of refusing (see :func:`prepare_run`)."""
    check_launcher(cfg, "train-local")
    ensure_pretrained(cfg.model)  # hub weights cached, or fetched once, or one line at once
    options = {**storage.options_from_config(cfg.storage), **storage_options}
    storage.check_access(cfg.run_dir, cfg.data.uri, **options)
    folder = RunFolder(cfg.run_dir, options)
    try:
        return _train(cfg, folder, prepare_run(cfg, folder, overwrite), progress, options)
    finally:
        folder.close()


def _train(cfg: Config, folder: RunFolder, resume: bool, progress: bool, options: dict) -> TrainHistory:
    local = folder.local
    local.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.train.seed)
    data_uri = ensure_dataset(cfg)

    model, optimizer = build_training(cfg)  # as every launcher: train.precision applied
    total, trainable = count_parameters(model)
    log.info("model: %.2f M parameters, %.2f M trainable", total / 1e6, trainable / 1e6)
    train_loader = build_loader(cfg, data_uri, cfg.data.train_split, train=True, **options)
    val_loader = build_loader(cfg, data_uri, cfg.data.val_split, train=False, **options)
    steps_per_epoch = min(len(train_loader), cfg.train.max_steps_per_epoch or math.inf)

    state = TrainState()
    if resume:
        folder.fetch(LAST)
        folder.fetch(BEST)
        state = load_training_state(local / LAST, model, optimizer, schedule=cfg.train.schedule)
        exact = restore_rng_state(read_rng_state(local / LAST), train_loader)
        log.info("resuming %s from last/: epoch %d done, step %d, best val Acc@0.5 %.4f (epoch %d)%s",
                 cfg.run_dir, state.epoch, state.global_step, state.best_acc, state.best_epoch,
                 "" if exact else " (no random-generator states saved: data order differs)")
    # written once the checkpoint has fitted this config: a refused resume (another model, say)
    # leaves the run's config.yaml describing its own best/ and last/
    save_config(cfg, storage.join(cfg.run_dir, "config.yaml"), **options)
    history = TrainHistory(run_dir=cfg.run_dir if folder.remote else str(local),
                           epochs=list(state.history), best_acc=state.best_acc, best_epoch=state.best_epoch)
    run_log = RunLog(cfg.run_dir, local, options, resume_step=state.global_step if resume else None,
                     resume_epoch=state.epoch if resume else None)
    saved = state  # what last/ holds (on storage too)
    step, epoch, step_in_epoch, where = state.global_step, state.epoch, 0, None
    try:
        for epoch in range(state.epoch, cfg.train.epochs):
            t0, seen, loss_sum, step_in_epoch = time.perf_counter(), 0, 0.0, 0
            t_first = None  # first batch in hand: the step loop's clock starts (epoch_rate)
            if hasattr(train_loader.dataset, "set_epoch"):  # fresh images: a new stream per epoch
                train_loader.dataset.set_epoch(epoch)
            bar = progress_bar(limited(train_loader, cfg.train.max_steps_per_epoch), total=steps_per_epoch,
                               desc=f"epoch {epoch + 1}/{cfg.train.epochs}", enabled=None if progress else False)
            reader = StepLosses(cfg.train.sync_every)  # losses read every train.sync_every steps

            def read(records: list[dict]) -> None:
                nonlocal loss_sum
                for r in records:
                    n = r.pop("n")
                    loss_sum += r["loss"] * n
                    bar.set_postfix(loss=f"{r['loss']:.3f}", sps=f"{r['samples_per_s']:.0f}")
                    if r["step"] % cfg.train.log_every == 0:
                        run_log.step(r)

            for batch in bar:
                t_first = time.perf_counter() if t_first is None else t_first
                factor = lr_factor(step, epoch, cfg.train.epochs, steps_per_epoch, cfg.train.schedule, cfg.train.warmup_steps)
                set_lr(optimizer, cfg.train.lr * factor)
                losses = train_step(model, batch, optimizer, cfg.train.clip_grad_norm, cfg.train.map_loss,
                                    sync=reader.sync)
                n = len(batch["sample_id"])
                seen, step, step_in_epoch = seen + n, step + 1, step_in_epoch + 1
                read(reader.add(losses, step=step, epoch=epoch, lr=cfg.train.lr * factor,
                                samples_per_s=seen / (time.perf_counter() - t0), n=n))
            read(reader.read())
            rate = epoch_rate(seen, t0, t_first, time.perf_counter())
            where = f"at epoch {epoch + 1} step {step_in_epoch} (evaluating, saving)"
            result = evaluate(model, val_loader)
            record = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(seen, 1),
                      **rate,  # train_samples, train_seconds, train_startup_s, train_samples_per_s
                      "val": result.summary(), "elapsed_s": time.perf_counter() - t0}
            # a new state object: ``saved`` keeps what last/ holds until it is written
            state = dataclasses.replace(state, global_step=step, samples_seen=state.samples_seen + seen)
            improved = end_epoch(state, record)
            history.epochs.append(record)
            history.best_acc, history.best_epoch = state.best_acc, state.best_epoch
            with held_interrupts():  # best/ and last/ are written whole: Ctrl-C waits for them
                if improved:
                    export_model(model, local / BEST)
                    folder.publish(BEST)
                save_training_state(local / LAST, model, optimizer, state, cfg,
                                    rng_state=rng_state(train_loader))
                folder.publish(LAST, last=(STATE_FILE,))
                saved = state
                run_log.epoch(record)
                run_log.sync()
            where = None
            log.info("epoch %d: train loss %.4f, val Acc@0.5 %.4f (shuffled text %s) %s", epoch + 1,
                     record["train_loss"], result.accuracy, fmt_acc(record["val"]["shuffled_text"]["acc"]),
                     fmt_types(result.meter.group_accuracy()))
        where = "while testing the best model"
        history.test = _evaluate_best(cfg, data_uri, local, options)
    except KeyboardInterrupt as stop:
        run_log.abandon()
        at = where or f"at epoch {epoch + 1} step {step_in_epoch}"
        raise InterruptedRun(_interrupted(cfg.run_dir, at, saved, how_stopped(stop)),
                             terminated=isinstance(stop, Terminated)) from None
    run_log.close()
    history.test_shuffled_text = shuffled_text_table(history.test)
    history.random_object_baseline = world_baselines(cfg.data)  # what a text-blind pick scores
    folder.write_text(HISTORY, json.dumps(history.__dict__, indent=2))
    return history


def _evaluate_best(cfg: Config, data_uri: str, run_dir: Path, storage_options: dict) -> dict:
    """Held-out accuracy of the best checkpoint on every test split."""
    best = under_policy(load_model(run_dir / "best"), cfg)  # tested as it was validated
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


def fmt_types(per_type: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in per_type.items())
