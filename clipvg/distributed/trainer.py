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
checkpoint, up to ``train.max_failures`` times. Results that a rerun cannot continue (those of
``clipvg train-local`` or of a finished in-trial training: ``last/`` or ``history.json`` with no
complete checkpoint) are refused unless ``--overwrite``, which removes the run folder first.

Before anything runs, the storage is checked (:func:`clipvg.data.storage.check_access`: a wrong
endpoint fails at once, naming it) and the run's resource requests are compared with the
cluster (:func:`check_resources`): on a fixed-size cluster, workers x (CPU, GPU, model
resources) plus one Ray Data decode task must fit, else a one-line error says what was asked
and what is there (a run that cannot fit would wait forever). Ctrl-C ends with
:class:`~clipvg.errors.InterruptedRun` naming the checkpoint that was kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import threading
from pathlib import Path

from clipvg.config import Config, ConfigError, check_launcher
from clipvg.curriculum.selection import read_pool
from clipvg.data import storage
from clipvg.errors import InterruptedRun, Terminated, UserError

log = logging.getLogger("clipvg.train")


def absolute_root(cfg: Config) -> Config:
    """``storage.root`` made absolute when it is a local path (a URI stays as it is)."""
    root = cfg.storage.root
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    return dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=root))


def resolve_config(cfg: Config) -> Config:
    """Local paths made absolute (Ray Train needs an absolute storage path; workers may run
    elsewhere), and ``data.uri`` set to the dataset the run uses."""
    check_launcher(cfg, "ray_train")
    cfg = absolute_root(cfg)
    # deferred: loads torch; paid only when this runs, not on import
    from clipvg.engine.batching import ensure_dataset

    data_uri = ensure_dataset(cfg)
    if "://" not in data_uri:
        data_uri = str(Path(data_uri).resolve())
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, uri=data_uri))


def plan_splits(cfg: Config) -> dict:
    """Stream plans of the train, validation and test splits (driver side, no image bytes).
    With ``data.train_pool`` the train plan streams the pool's selected samples instead."""
    # deferred: loads torch and Ray; paid only when this runs, not on import
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
    # deferred: loads Ray; paid only when this runs, not on import
    import ray.train
    from ray.train.torch import TorchTrainer

    # deferred: loads Ray; paid only when this runs, not on import
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


# Results of runs `clipvg train` cannot continue: train-local's training state, a finished run's
# history (a finished Ray Train run always also has a complete checkpoint)
FOREIGN_RESULTS = ("last/model.safetensors", "history.json")


def prepare_run(cfg: Config, overwrite: bool = False) -> str | None:
    """The checkpoint the run continues from (None: a fresh start), decided before anything is
    written: a complete checkpoint is continued; results without one are refused unless
    ``overwrite``, which removes the whole run folder (checkpoints, Ray Train's snapshot, best/,
    metrics) first. ``cfg``: with an absolute ``storage.root``."""
    # deferred: loads Ray; paid only when this runs, not on import
    from clipvg.distributed.worker import latest_checkpoint

    options = storage.options_from_config(cfg.storage)
    if overwrite:
        if cfg.train.resume:
            raise UserError("train.resume=true continues a run and --overwrite starts it over: give one")
        data = cfg.data.uri
        if data and (data.rstrip("/") + "/").startswith(cfg.run_dir.rstrip("/") + "/"):
            raise UserError(f"--overwrite would remove {cfg.run_dir}, which holds the dataset {data}; "
                            f"use another storage.run_name")
        if storage.remove_tree(cfg.run_dir, **options):
            print(f"--overwrite: removed the earlier run {cfg.run_dir}")
        return None
    last = latest_checkpoint(cfg.run_dir, **options)
    if cfg.train.resume and last is None:
        raise ConfigError(f"train.resume=true but {cfg.run_dir} has no checkpoint to continue from")
    if last is None:
        found = [name.split("/")[0] for name in FOREIGN_RESULTS
                 if storage.exists(storage.join(cfg.run_dir, name), **options)]
        if found:
            raise UserError(f"{cfg.run_dir} already holds results ({', '.join(found)}) but no "
                            f"checkpoint clipvg train can continue (a train-local run's?): start "
                            f"another run with a new storage.run_name, or replace it with --overwrite")
    return last


# A node type of Ray's read-only autoscaler (a cluster that cannot add nodes): node_<node id>
_READONLY_NODE_TYPE = re.compile(r"node_[0-9a-f]{16,}")


def cluster_capacity() -> tuple[dict | None, bool]:
    """``(resources, autoscaling)`` of the cluster this process is connected to.

    A cluster whose autoscaler publishes its node types to Ray (autoscaler v2, KubeRay) gets
    the most it can scale to (per resource, at least what it has now). A cluster run by Ray's
    v1 autoscaler with node types that can be launched (``ray up``, ``--autoscaling-config``)
    gets ``None``: its maximum is not published, so nothing can be said. Any other cluster - a
    local Ray, ``ray start`` nodes (the read-only autoscaler) - is what it has now.
    """
    # deferred: loads Ray; paid only when this runs, not on import
    import ray

    now = ray.cluster_resources()
    try:
        # deferred: loads Ray; paid only when this runs, not on import
        from ray._private.state import state

        maxima = state.get_max_resources_from_cluster_config()
    except Exception:  # private API: a Ray without it has no published maxima either
        maxima = None
    if maxima:
        return {k: max(now.get(k, 0), maxima.get(k, 0)) for k in set(now) | set(maxima)}, True
    if autoscaler_can_launch(_autoscaling_status()):
        return None, True
    return now, False


def _autoscaling_status() -> dict | None:
    """The v1 autoscaler's last status report (what ``ray status`` shows), or None."""
    try:
        # deferred: loads Ray; paid only when this runs, not on import
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return json.loads(raw) if raw else None
    except Exception:
        return None


def autoscaler_can_launch(status: dict | None) -> bool:
    """Whether a v1 autoscaler status shows launchable node types: with an autoscaling config
    the nodes carry the config's type names (``ray.head.default``, ``gpu_worker``); the
    read-only autoscaler of a fixed cluster names every node ``node_<id>`` and launches none."""
    report = (status or {}).get("autoscaler_report") or {}
    types = set(report.get("active_nodes") or {}) | set(report.get("idle_nodes") or {})
    types |= set(report.get("pending_launches") or {})
    types |= {p[1] for p in report.get("pending_nodes") or [] if len(p) > 1}
    return any(not _READONLY_NODE_TYPE.fullmatch(str(t)) for t in types)


def _amount(value: float) -> str:
    return f"{value:g}"


def check_resources(cfg: Config) -> None:
    """Fail fast (:class:`UserError`) when the run cannot fit the cluster: on a fixed-size
    cluster every worker's bundle (``scaling.cpus_per_worker``, ``gpus_per_worker`` with
    ``use_gpu``, ``model_resources``) times ``num_workers``, plus one Ray Data decode task
    (``data_cpus``, ``data_resources``) that must run beside them, must fit the cluster's
    totals, and one worker's bundle must fit a single node. On an autoscaling cluster the
    maximum it can scale to is used where Ray publishes it, and nothing is refused where it does
    not (see :func:`cluster_capacity`)."""
    # deferred: loads Ray; paid only when this runs, not on import
    import ray

    if not ray.is_initialized():  # nothing to compare with (fit() would start a local Ray)
        return
    s = cfg.scaling
    worker = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {}),
              **s.model_resources}
    data = {"CPU": s.data_cpus, **s.data_resources}
    asked = {k: worker.get(k, 0) * s.num_workers + data.get(k, 0) for k in {**worker, **data}}
    capacity, autoscaling = cluster_capacity()
    if capacity is None:
        return
    short = [k for k, v in asked.items() if v > capacity.get(k, 0) + 1e-9]
    if short:
        parts = []
        for k in short:
            terms = [f"{s.num_workers} worker(s) x {_amount(worker[k])} {k}"] if worker.get(k) else []
            terms += [f"{_amount(data[k])} {k} for a Ray Data decode task"] if data.get(k) else []
            parts.append(f"{_amount(asked[k])} {k} ({' + '.join(terms)}) but the cluster "
                         f"{'can scale to' if autoscaling else 'has'} {_amount(capacity.get(k, 0))} {k}")
        raise UserError(f"this run cannot fit the cluster, it would wait forever: it asks for "
                        f"{'; '.join(parts)}. Lower scaling.num_workers / scaling.cpus_per_worker / "
                        f"scaling.data_cpus (fractions are fine), or use a bigger cluster (--address; "
                        f"--num-cpus N declares N logical CPUs for the private local Ray)")
    if not autoscaling:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if nodes and not any(all(node.get(k, 0) + 1e-9 >= v for k, v in worker.items()) for node in nodes):
            have = "; ".join(", ".join(f"{_amount(node.get(k, 0))} {k}" for k in worker) for node in nodes)
            raise UserError(f"no node of the cluster can hold one worker ("
                            f"{', '.join(f'{_amount(v)} {k}' for k, v in worker.items())}): its nodes "
                            f"have {have}. Lower scaling.cpus_per_worker / gpus_per_worker / "
                            f"model_resources, or use bigger nodes")


def _interrupted(cfg: Config) -> str:
    # deferred: loads Ray; paid only when this runs, not on import
    from clipvg.distributed.worker import complete_checkpoints

    options = storage.options_from_config(cfg.storage)
    try:
        done = complete_checkpoints(cfg.run_dir, **options)
    except Exception:  # the message must not fail: say less
        done = []
    if not done:
        return f"interrupted; kept: nothing to resume in {cfg.run_dir} (no epoch finished; a rerun starts over)"
    epoch = int(done[-1].removeprefix("checkpoint_epoch"))
    where = (f"during epoch {epoch + 1} of {cfg.train.epochs}" if epoch < cfg.train.epochs
             else "while testing the best model")
    return (f"interrupted {where}; kept: {cfg.run_dir} {done[-1]} from epoch {epoch} (rerun the "
            f"same command to continue from it)")


def _fit(trainer):
    """``trainer.fit()`` where Ctrl-C raises KeyboardInterrupt and SIGTERM (a preemption, a
    scale-down) :class:`~clipvg.errors.Terminated`, each after asking the controller to abort:
    Ray Train's own handler would abort the run and return as if it had ended."""
    main = threading.current_thread() is threading.main_thread()
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in stops} if main else {}

    def register(controller) -> None:
        def on_stop(signum, frame):
            with contextlib.suppress(Exception):
                controller.abort.remote()
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt

        for sig in stops:
            signal.signal(sig, on_stop)

    trainer._register_sigint_handler = register  # called by fit() in the main thread only
    try:
        return trainer.fit()
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


def train(cfg: Config, callbacks: list | None = None, *, overwrite: bool = False) -> dict:
    """Train on the Ray cluster this process is connected to; returns ``history.json``.
    ``overwrite``: remove results already under the run name instead of refusing them."""
    # Workers keep the job's working directory (relative paths such as model.weights resolve
    # the same on every node) instead of Ray Train's per-run folder.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    check_launcher(cfg, "ray_train")
    options = storage.options_from_config(cfg.storage)
    storage.check_access(cfg.storage.root, cfg.data.uri, **options)
    cfg = absolute_root(cfg)
    last = prepare_run(cfg, overwrite)
    check_resources(cfg)
    cfg = resolve_config(cfg)
    if last is not None:
        print(f"continuing run {cfg.run_dir} from {last} (use a new storage.run_name to start over)")
    plans = plan_splits(cfg)
    for split, plan in plans.items():
        print(f"{split}: {plan.num_samples} expressions on {plan.num_images} images")
    try:
        result = _fit(build_trainer(cfg, plans, callbacks))
    except KeyboardInterrupt as stop:
        raise InterruptedRun(_interrupted(cfg), terminated=isinstance(stop, Terminated)) from None
    if result.error is not None:
        raise result.error
    history = storage.read_json(storage.join(cfg.run_dir, "history.json"), **options)
    prune_checkpoints(cfg.run_dir, history["best_epoch"], **options)
    return history


def prune_checkpoints(run_dir: str, best_epoch: int, **options) -> list[str]:
    """Remove a finished run's complete checkpoints other than the best epoch's and the latest;
    returns their names. Ray Train prunes the checkpoints its manager registered, but the
    manager that a lost node restarts never saw the ones written before the loss (seen: the
    node-loss test's checkpoint_epoch0001 stayed behind once a later epoch was the best)."""
    # deferred: loads Ray; paid only when this runs, not on import
    from clipvg.distributed.worker import CHECKPOINT_PREFIX, complete_checkpoints

    done = complete_checkpoints(run_dir, **options)
    keep = {f"{CHECKPOINT_PREFIX}{best_epoch:04d}", *done[-1:]}
    extra = [name for name in done if name not in keep]
    for name in extra:
        storage.remove_tree(storage.join(run_dir, name), **options)
    return extra
