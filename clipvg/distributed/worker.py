"""The Ray Train worker: one process per GPU (or CPU slot) running the engine's steps.

Every worker builds the model, wraps it in DDP (Ray Train's ``prepare_model``), restores the
last checkpoint if there is one, and then for each epoch streams its share of the training
images (:mod:`clipvg.distributed.shards`) through Ray Data, runs
:func:`clipvg.engine.steps.train_step`, evaluates its share of the validation images, merges the
counts of all workers, and reports. Rank 0 writes the checkpoint (model, optimizer, schedule
position, epoch, best accuracy, data position, resolved config), the metrics files and, when
validation improves, ``<run>/best/``. The data order and augmentation depend only on
``(seed, epoch)``, so a restarted run continues with the data an uninterrupted one would see.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.experimental.tqdm_ray import tqdm
from safetensors.torch import load

from clipvg.config import Config, ScalingConfig
from clipvg.data import storage
from clipvg.data.fanout import FanOutSpec
from clipvg.distributed.shards import rank_images
from clipvg.distributed.streaming import StreamPlan, StreamReport, build_dataset, iter_model_batches
from clipvg.engine.checkpoint import TrainState, load_training_state, save_training_state
from clipvg.engine.control import control_summary, fmt_acc, shuffled_text_table
from clipvg.engine.flops import mfu, peak_flops, train_flops_per_sample
from clipvg.engine.loop import build_training, end_epoch, epoch_rate
from clipvg.engine.metrics import AccuracyMeter
from clipvg.engine.run_log import RunLog
from clipvg.engine.steps import StepLosses, evaluate, lr_factor, set_lr, train_step
from clipvg.model.io import CONFIG_FILE, WEIGHTS_FILE
from clipvg.sources.synthetic.baseline import world_baselines

log = logging.getLogger("clipvg.train")
BEST = "best"
CHECKPOINT_PREFIX = "checkpoint_epoch"  # + 4-digit epoch: names sort by epoch
# Written into a checkpoint folder on storage once Ray's upload of it has returned. Ray copies
# the folder's files in parallel threads, so no file of the checkpoint itself can mark it
# complete: state.json may land before model.safetensors is fully written.
COMPLETE_MARKER = "COMPLETE"


@dataclass
class WorkerJob:
    """What the driver ships to every worker (``train_loop_config={"job": ...}``)."""

    cfg: Config  # resolved: absolute local paths, data.uri set
    plans: dict[str, StreamPlan]  # split -> plan (train, val and test splits), texts tokenized
    storage_options: dict
    counts: dict = field(default_factory=dict)  # split -> samples per input row (worker cache)


@dataclass
class Ctx:
    """This worker's place in the group."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def train_loop_per_worker(config: dict) -> None:
    job: WorkerJob = config["job"]
    cfg = job.cfg
    ctx = _context()
    torch.set_num_threads(worker_threads(cfg.scaling))  # Ray left OMP_NUM_THREADS at the reservation
    _configure_data()
    torch.manual_seed(cfg.train.seed + ctx.rank)  # official: seed + rank
    model, raw_model, optimizer = _build(cfg, ctx)
    state = _restore(raw_model, optimizer, ctx, job)
    run_log = _open_log(cfg, job, ctx, state)
    for epoch in range(state.epoch, cfg.train.epochs):
        torch.manual_seed(hash((cfg.train.seed, ctx.rank, epoch)) % 2**31)  # resumable dropout
        train = _train_epoch(model, optimizer, job, ctx, epoch, state, run_log)
        val = _evaluate(raw_model, job, cfg.data.val_split, ctx)
        record = {"epoch": epoch + 1, "step": state.global_step, **train, "val": val}
        improved = end_epoch(state, record)  # as every launcher (engine.loop)
        _report_epoch(cfg, job, raw_model, optimizer, state, record, improved, ctx, run_log)
    test = _test_best(cfg, job, raw_model, ctx)
    if ctx.is_chief:
        history = run_history(cfg.run_dir, state, test, ctx.world, world_baselines(cfg.data))
        storage.write_json(history, storage.join(cfg.run_dir, "history.json"), **job.storage_options)
        run_log.close()


def run_history(run_dir: str, state: TrainState, test: dict, world: int,
                baseline: dict | None = None) -> dict:
    """``history.json`` of a finished run, in the shape train-local writes (the curriculum
    reads both): epochs, best validation, the best model's test summaries (split -> summary),
    their shuffled-text control on its own (split -> {acc, per_type}) and, on the synthetic
    world, the random-object baseline (split -> {acc, per_type, total})."""
    return {"run_dir": run_dir, "epochs": state.history, "best_acc": state.best_acc,
            "best_epoch": state.best_epoch, "test": test, "test_shuffled_text": shuffled_text_table(test),
            "random_object_baseline": baseline or {}, "world_size": world}


def worker_threads(scaling: ScalingConfig) -> int:
    """torch intra-op threads of a Ray Train worker: ``scaling.threads_per_worker``, else
    ``max(1, int(scaling.cpus_per_worker))``; the in-trial launcher uses the same. Set explicitly
    because Ray exports ``OMP_NUM_THREADS`` = the worker's CPU reservation (1 for 0.5 or 1 CPU):
    left alone, a worker on a 2-core machine trains on one thread while ``train-local`` uses two."""
    if scaling.threads_per_worker is not None:
        return scaling.threads_per_worker
    return max(1, int(scaling.cpus_per_worker))


def _context() -> Ctx:
    tc = ray.train.get_context()
    return Ctx(tc.get_world_rank(), tc.get_world_size(), ray.train.torch.get_device())


def _configure_data() -> None:
    data_ctx = ray.data.DataContext.get_current()
    data_ctx.execution_options.preserve_order = True  # same batches for the same (seed, epoch)
    data_ctx.enable_progress_bars = False  # one bar per worker epoch would drown the log
    data_ctx.print_on_execution_start = False


def _build(cfg: Config, ctx: Ctx):
    raw_model, optimizer = build_training(cfg, ctx.device)  # as every launcher (train.precision)
    model = ray.train.torch.prepare_model(raw_model) if ctx.world > 1 else raw_model
    return model, raw_model, optimizer


def complete_checkpoints(run_dir: str, **storage_options) -> list[str]:
    """Names of the run's complete checkpoint folders (those with ``COMPLETE_MARKER``), oldest
    first; [] when there are none."""
    fs, path = storage.filesystem(run_dir, **storage_options)
    fs.invalidate_cache(path)  # s3fs caches listings; another process wrote the checkpoints
    if not fs.exists(path):
        return []
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return [n for n in names if n.startswith(CHECKPOINT_PREFIX) and fs.exists(f"{path}/{n}/{COMPLETE_MARKER}")]


def latest_checkpoint(run_dir: str, **storage_options) -> str | None:
    """The run's newest complete checkpoint (one with ``COMPLETE_MARKER``), or None.

    Read from storage rather than from ``ray.train.get_checkpoint()``: Ray records a checkpoint
    only after the upload, so a worker, node or driver lost in between would otherwise restart
    one epoch early (or from scratch)."""
    done = complete_checkpoints(run_dir, **storage_options)
    return storage.join(run_dir, done[-1]) if done else None


def _restore(raw_model, optimizer, ctx: Ctx, job: WorkerJob) -> TrainState:
    where = latest_checkpoint(job.cfg.run_dir, **job.storage_options)
    if where is None:
        return TrainState(data_position={"epoch": 0, "step_in_epoch": 0})
    fs, path = storage.pyarrow_filesystem(where, **job.storage_options)
    with ray.train.Checkpoint(path, filesystem=fs).as_directory() as folder:
        state = load_training_state(folder, raw_model, optimizer)
    if ctx.is_chief:
        print(f"resuming from {where}: epoch {state.epoch} done, step {state.global_step}, "
              f"best val Acc@0.5 {state.best_acc:.4f} (epoch {state.best_epoch})", flush=True)
    return state


def _open_log(cfg: Config, job: WorkerJob, ctx: Ctx, state: TrainState):
    if not ctx.is_chief:
        return None

    resumed = state.epoch > 0
    return RunLog(cfg.run_dir, tempfile.mkdtemp(prefix="clipvg-log-"), job.storage_options,
                  resume_step=state.global_step if resumed else None,
                  resume_epoch=state.epoch if resumed else None)


def _rank_plan(job: WorkerJob, split: str, ctx: Ctx, *, seed: int, epoch: int,
               train: bool) -> tuple[StreamPlan, list[int]]:
    """This rank's images of ``split`` for ``epoch`` and every rank's sample count."""
    plan = job.plans[split]
    if split not in job.counts:  # per worker process, once per run
        job.counts[split] = plan.samples_per_input()
    positions, per_rank = rank_images(job.counts[split], ctx.world, ctx.rank, seed=seed, epoch=epoch,
                                      shuffle=train)
    return dataclasses.replace(plan, inputs=plan.inputs.take(positions)), per_rank


def _stream(cfg: Config, job: WorkerJob, split: str, ctx: Ctx, *, epoch: int, train: bool,
            report: StreamReport, keep_ids: bool = False):
    plan, per_rank = _rank_plan(job, split, ctx, seed=cfg.train.seed, epoch=epoch, train=train)
    spec = FanOutSpec.from_config(cfg, train=train, epoch=epoch)
    batches = iter(())
    if plan.inputs.num_rows:
        ds = build_dataset(plan, spec, int_truncation=cfg.data.box_int_truncation,
                           num_cpus=cfg.scaling.data_cpus, resources=cfg.scaling.data_resources)
        batch_size = cfg.train.batch_size if train else cfg.train.eval_batch_size
        batches = iter_model_batches(
            ds, job.plans[split].index(), batch_size=batch_size, normalize=cfg.data.augment.normalize,
            device=ctx.device, drop_last=train, shuffle_buffer=4 * batch_size if train else None,
            seed=hash((cfg.train.seed, epoch, ctx.rank)) % 2**31, report=report, keep_ids=keep_ids)
    return batches, per_rank


def _all_have(has_batch: bool, ctx: Ctx) -> bool:
    """True while every rank still has a batch: DDP needs the same number of steps everywhere
    (a rank whose images failed to decode may run out first)."""
    if ctx.world == 1:
        return has_batch
    flag = torch.tensor([1 if has_batch else 0], device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _train_epoch(model, optimizer, job: WorkerJob, ctx: Ctx, epoch: int, state: TrainState, run_log) -> dict:
    cfg = job.cfg
    report = StreamReport()
    batches, per_rank = _stream(cfg, job, cfg.data.train_split, ctx, epoch=epoch, train=True, report=report)
    steps = min(per_rank) // cfg.train.batch_size
    if cfg.train.max_steps_per_epoch is not None:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    bar = _progress(ctx, steps, f"epoch {epoch + 1}/{cfg.train.epochs}")
    t0, seen, loss_sum, step_in_epoch, flops = time.perf_counter(), 0, 0.0, 0, None
    t_first = None  # first batch in hand: the step loop's clock starts (epoch_rate)
    reader = StepLosses(cfg.train.sync_every)  # losses read every train.sync_every steps

    def read(records: list[dict]) -> None:
        nonlocal loss_sum
        for r in records:
            loss_sum += r["loss"] * r.pop("n")
            if bar is not None:
                bar.set_description(f"epoch {epoch + 1}/{cfg.train.epochs} loss {r['loss']:.3f} "
                                    f"{r['samples_per_s']:.0f} samples/s")
            if run_log is not None and r["step"] % cfg.train.log_every == 0:
                run_log.step(r)

    while step_in_epoch < steps:
        batch = next(batches, None)
        if not _all_have(batch is not None, ctx):
            break
        lr = cfg.train.lr * lr_factor(state.global_step, epoch, cfg.train.epochs, steps,
                                      cfg.train.schedule, cfg.train.warmup_steps)
        set_lr(optimizer, lr)
        if flops is None:
            flops = _flops_per_sample(model, batch, ctx)
        if t_first is None:
            t_first = time.perf_counter()
        losses = train_step(model, batch, optimizer, cfg.train.clip_grad_norm, cfg.train.map_loss,
                            sync=reader.sync)
        n = len(batch["sample_id"]) * ctx.world  # global batch
        seen = seen + n
        state.global_step, state.samples_seen, step_in_epoch = state.global_step + 1, state.samples_seen + n, step_in_epoch + 1
        rate = seen / (time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
        read(reader.add(losses, step=state.global_step, epoch=epoch, lr=lr, samples_per_s=rate,
                        mfu=_mfu(rate, flops, ctx), n=n))
    read(reader.read())
    if bar is not None:
        bar.close()
    end = time.perf_counter()
    if report.failed and ctx.is_chief:
        print(f"epoch {epoch + 1}: {report.summary()}", flush=True)
    return {"train_loss": loss_sum / max(seen, 1), **epoch_rate(seen, t0, t_first, end),
            "steps": step_in_epoch, "elapsed_s": end - t0, "skipped_samples": len(report.failed),
            "torch_threads": torch.get_num_threads()}


def _progress(ctx: Ctx, total: int, desc: str):
    """A progress bar in the driver's log (Ray's tqdm forwards worker bars to the driver)."""
    if not ctx.is_chief:
        return None

    return tqdm(total=total, desc=desc)


def _flops_per_sample(model, batch: dict, ctx: Ctx) -> float:
    """Training FLOPs per sample, measured once on GPU (MFU); 0 on CPU, where MFU is not logged."""
    if ctx.device.type != "cuda":
        return 0.0

    if peak_flops(ctx.device) is None:
        return 0.0
    module = getattr(model, "module", model)
    flops = train_flops_per_sample(module, batch)
    module.zero_grad(set_to_none=True)
    return flops


def _mfu(samples_per_s: float, flops: float | None, ctx: Ctx) -> float | None:
    if not flops:
        return None

    return mfu(samples_per_s / ctx.world, flops, peak_flops(ctx.device))


def _evaluate(raw_model, job: WorkerJob, split: str, ctx: Ctx) -> dict:
    """Acc@0.5 over ``split``: every rank evaluates its images, counts are merged, and every
    sample must have been seen exactly once (or reported as unreadable). With the
    shuffled-text control (each rank shows its samples texts of its other images)."""
    report = StreamReport()
    batches, _ = _stream(job.cfg, job, split, ctx, epoch=0, train=False, report=report, keep_ids=True)
    result = evaluate(raw_model, batches, ctx.device)
    mine = {"meter": result.meter.state(), "ids": report.sample_ids or [], "failed": report.failed,
            "loss_sum": result.loss * result.total if result.total else 0.0,
            "shuffled": result.shuffled.state(), "shuffled_skipped": result.shuffled_skipped}
    parts = [mine]
    if ctx.world > 1:
        parts = [None] * ctx.world
        dist.all_gather_object(parts, mine)
    return _merge_eval(parts, job.plans[split], result.seconds)


def _merge_eval(parts: list[dict], plan: StreamPlan, seconds: float) -> dict:
    """One summary (the keys of EvalResult.summary, plus ``unreadable``) of every rank's part."""
    meter, shuffled = AccuracyMeter(), AccuracyMeter()
    for part in parts:
        meter.merge(part["meter"])
        shuffled.merge(part["shuffled"])
    seen = [i for p in parts for i in p["ids"]] + [f[0] for p in parts for f in p["failed"]]
    if len(seen) != plan.num_samples or len(set(seen)) != plan.num_samples:
        raise RuntimeError(f"evaluation of split {plan.split!r} saw {len(seen)} rows "
                           f"({len(set(seen))} distinct) of {plan.num_samples}")
    failed = sum(len(p["failed"]) for p in parts)
    return {"acc": meter.accuracy, "total": meter.total, "unreadable": failed,
            "loss": sum(p["loss_sum"] for p in parts) / max(meter.total, 1),
            "per_type": meter.group_accuracy(), "seconds": round(seconds, 2),
            "shuffled_text": control_summary(shuffled, sum(p["shuffled_skipped"] for p in parts))}


def _report_epoch(cfg: Config, job: WorkerJob, raw_model, optimizer, state: TrainState, record: dict,
                  improved: bool, ctx: Ctx, run_log) -> None:
    metrics = {"epoch": record["epoch"], "train_loss": record["train_loss"], "val_acc": record["val"]["acc"],
               # the checkpoint Ray keeps as "best": the latest epoch that strictly improved
               # validation accuracy (the official rule; ties go to the earlier epoch)
               "improved_at_epoch": record["epoch"] if improved else 0,
               "best_acc": state.best_acc, "best_epoch": state.best_epoch, "global_step": state.global_step}
    if not ctx.is_chief:
        ray.train.report(metrics)
        return
    print(f"epoch {record['epoch']}/{cfg.train.epochs}: train loss {record['train_loss']:.4f}, "
          f"val Acc@0.5 {record['val']['acc']:.4f} (shuffled text {fmt_acc(record['val']['shuffled_text']['acc'])}) "
          f"({record['train_samples_per_s']:.1f} samples/s)", flush=True)
    run_log.epoch(record)
    run_log.sync()
    with tempfile.TemporaryDirectory(prefix="clipvg-ckpt-") as folder:
        save_training_state(folder, raw_model, optimizer, state, cfg)
        if improved:
            _publish_best(folder, cfg.run_dir, job.storage_options)
        name = f"{CHECKPOINT_PREFIX}{record['epoch']:04d}"
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=name,  # SYNC: returns once the upload is done
                         checkpoint_upload_mode=ray.train.CheckpointUploadMode.SYNC)
    storage.write_bytes(b"", storage.join(cfg.run_dir, name, COMPLETE_MARKER), **job.storage_options)


def _publish_best(folder: str, run_dir: str, storage_options: dict) -> None:
    """Copy the model files of a checkpoint folder to ``<run>/best/`` (a model folder)."""
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        data = (Path(folder) / name).read_bytes()
        storage.write_bytes(data, storage.join(run_dir, BEST, name), **storage_options)


def _test_best(cfg: Config, job: WorkerJob, raw_model, ctx: Ctx) -> dict:
    """Held-out accuracy of the best checkpoint on every test split."""
    data = storage.read_bytes(storage.join(cfg.run_dir, BEST, WEIGHTS_FILE), **job.storage_options)
    raw_model.load_state_dict({k: v.to(ctx.device) for k, v in load(data).items()}, strict=True)
    return {split: _evaluate(raw_model, job, split, ctx) for split in cfg.data.test_splits}
