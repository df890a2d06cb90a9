"""``clipvg train``: CLIP-VG on Ray Train, any number of workers, state on object storage.

    clipvg train --config configs/demo.yaml scaling.num_workers=2
    clipvg train --config configs/demo.yaml storage.root=s3://bucket/runs --address auto

The driver resolves the config, makes sure the dataset exists (the synthetic world by
default), plans the splits once (texts tokenized once per run), and runs a ``TorchTrainer``
whose workers execute :func:`clipvg.distributed.worker.train_loop_per_worker`. Outputs under
``storage.root/storage.run_name`` (local or ``s3://``):

* ``checkpoint_epochNNNN/``: Ray Train checkpoints (model, optimizer, state.json, config.yaml,
  and a ``COMPLETE`` marker written once the upload has returned); the best (by validation
  Acc@0.5) and the latest are kept;
* ``best/``: the best model as ``model.safetensors`` + ``model_config.json`` (``clipvg predict``);
* ``metrics.jsonl`` and ``tensorboard/``: per-step and per-epoch metrics;
* ``history.json``: every epoch and the held-out accuracy of the best model.

A rerun with the same run name continues from the last checkpoint (``train.resume=true`` makes
a missing checkpoint an error); a worker lost mid-epoch restarts the group from the last
checkpoint, up to ``train.max_failures`` times.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from clipvg.config import Config, ConfigError, load_config
from clipvg.data import storage

log = logging.getLogger("clipvg.train")


def resolve_config(cfg: Config) -> Config:
    """Local paths made absolute (Ray Train needs an absolute storage path; workers may run
    elsewhere), and ``data.uri`` set to the dataset the run uses."""
    if cfg.train.samples_per_epoch is not None:
        raise ConfigError("train.samples_per_epoch is supported by the single-process engine only "
                          "(clipvg train-local, curriculum.launcher=in_trial); Ray Train runs one pass per epoch")
    root = cfg.storage.root
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=root))
    from clipvg.data.batching import ensure_dataset

    data_uri = ensure_dataset(cfg)
    if "://" not in data_uri:
        data_uri = str(Path(data_uri).resolve())
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, uri=data_uri))


def plan_splits(cfg: Config) -> dict:
    """Stream plans of the train, validation and test splits (driver side, no image bytes).
    With ``data.train_pool`` the train plan streams the pool's selected samples instead."""
    from clipvg.curriculum.selection import read_pool
    from clipvg.data.fanout import FanOutSpec
    from clipvg.distributed.streaming import plan_split

    options = storage.options_from_config(cfg.storage)
    plans = {}
    for split in dict.fromkeys([cfg.data.train_split, cfg.data.val_split, *cfg.data.test_splits]):
        train = split == cfg.data.train_split
        spec = FanOutSpec.from_config(cfg, train=train)
        rows = read_pool(cfg.data.train_pool, **options) if train and cfg.data.train_pool else None
        plans[split] = plan_split(cfg.data.uri, split, spec, samples=rows, **options)
        plans[split].samples_ref()  # one copy in the object store, shared by every worker
    return plans


def build_trainer(cfg: Config, plans: dict, callbacks: list | None = None):
    """The ``TorchTrainer`` of a resolved config (see :func:`resolve_config`)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from clipvg.distributed.worker import WorkerJob, train_loop_per_worker

    options = storage.options_from_config(cfg.storage)
    fs, path = storage.pyarrow_filesystem(cfg.storage.root, **options)
    s = cfg.scaling
    resources = {**s.model_resources, "CPU": s.cpus_per_worker,
                 **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    run = ray.train.RunConfig(
        name=cfg.storage.run_name, storage_path=path, storage_filesystem=fs, callbacks=callbacks,
        failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
        # keep the best (see worker.improved_at_epoch); Ray Train always keeps the latest too
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="improved_at_epoch", checkpoint_score_order="max"),
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": WorkerJob(cfg=cfg, plans=plans, storage_options=options)},
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker=resources),
        run_config=run,
    )


def train(cfg: Config, callbacks: list | None = None) -> dict:
    """Train on the Ray cluster this process is connected to; returns ``history.json``."""
    # Workers keep the job's working directory (relative paths such as model.weights resolve
    # the same on every node) instead of Ray Train's per-run folder.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    cfg = resolve_config(cfg)
    from clipvg.distributed.worker import latest_checkpoint

    options = storage.options_from_config(cfg.storage)
    last = latest_checkpoint(cfg.run_dir, **options)
    if cfg.train.resume and last is None:
        raise ConfigError(f"train.resume=true but {cfg.run_dir} has no checkpoint to continue from")
    if last is not None:
        print(f"continuing run {cfg.run_dir} from {last} (use a new storage.run_name to start over)")
    plans = plan_splits(cfg)
    for split, plan in plans.items():
        print(f"{split}: {plan.num_samples} expressions on {plan.num_images} images")
    result = build_trainer(cfg, plans, callbacks).fit()
    if result.error is not None:
        raise result.error
    return storage.read_json(storage.join(cfg.run_dir, "history.json"), **options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (default: built-in defaults)")
    from clipvg.distributed.local_ray import add_ray_arguments

    add_ray_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. scaling.num_workers=2")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.config, args.overrides)
    from clipvg.distributed.local_ray import init_ray

    init_ray(args.address, args.num_cpus)
    history = train(cfg)
    print(f"best epoch {history['best_epoch']} of {len(history['epochs'])}: "
          f"val Acc@0.5 {history['best_acc']:.4f}")
    for split, summary in history["test"].items():
        per_type = " ".join(f"{k}={v:.3f}" for k, v in summary["per_type"].items())
        print(f"held-out {split} Acc@0.5 = {summary['acc']:.4f} over {summary['total']} samples {per_type}")
    print(f"outputs: {history['run_dir']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ray_jobs/train.py``: ``clipvg train`` with the same arguments."""
    from clipvg.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])
