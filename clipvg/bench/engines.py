"""``clipvg benchmark train``, engines: ``train-local`` and the Ray Train path side by side.

Both engines train the same run config (``configs/demo.yaml`` unless another is given: its model
with random weights, its batch size, augmentation and schedule) on the same small synthetic world
(``images`` training images of the model's canvas size, 20 validation and 20 test images), with
the same torch threads, for ``epochs`` epochs each:

* ``local``: :func:`clipvg.engine.local.train_local` in this process (``torch.set_num_threads``).
* ``ray_train``: :func:`clipvg.distributed.trainer.train` with one worker on the connected Ray
  (``scaling.num_workers=1``, ``scaling.threads_per_worker`` = the same threads; the worker's
  CPU reservation as the config says, e.g. the demo's 0.9, and a whole core per decode task,
  ``scaling.data_cpus=1.0``: on a machine whose cores the trainer's threads already use, more
  decode tasks only take turns with the trainer - docs/benchmarks.md).

Rate: each engine's own epoch record, one definition for both
(:func:`clipvg.engine.loop.epoch_rate`): ``train_samples_per_s`` = samples / the step loop's
wall time from the first batch in hand to the end of the last step (data waits after the
first batch included; start-up and evaluation excluded). An engine's ``samples_per_s`` is its
best epoch after the first (other tenants of a shared machine only ever slow an epoch down);
with one epoch, that epoch. The first is left out because it differs in both engines: Ray
Data's decode tasks run ahead during the worker's start-up (18-39 s here), so the Ray path's
first step loop consumes mostly pre-decoded batches, while ``train-local`` fills its decoded
image cache (512 images) in its first epoch. Every epoch is in the JSON. ``ray_over_local`` =
ray_train / local.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from clipvg.config import Config, load_config

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
ENGINES = ("local", "ray_train")


def engine_config(out: str, config: str | None, *, images: int, epochs: int, batch_size: int | None,
                  threads: int, run_name: str, launcher: str) -> Config:
    """The run both engines train (see module doc); outputs under ``out``."""
    overrides = ["model.weights=null", "model.pretrained=null", f"data.synth.train_images={images}",
                 "data.synth.val_images=8", "data.synth.test_images=8", f"train.epochs={epochs}",
                 "train.log_every=1000000", "train.resume=false", f"storage.root={out}",
                 f"storage.run_name={run_name}", "scaling.num_workers=1",
                 f"scaling.threads_per_worker={threads}",
                 # a whole core per decode task: with the demo's 0.5, two decode tasks ran beside
                 # a trainer whose threads use every core (measured: Ray / local 0.36 -> 0.82)
                 "scaling.data_cpus=1.0"]
    if batch_size:
        overrides.append(f"train.batch_size={batch_size}")
    cfg = load_config(config or (DEMO if DEMO.exists() else None), overrides, launcher=launcher)
    size = cfg.model.image_size  # the world at the canvas size: no resize cost beyond the model's
    return dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, synth=dataclasses.replace(cfg.data.synth, image_size=size)))


def _summary(epochs: list[dict], wall_s: float, threads: int) -> dict:
    rates = [e["train_samples_per_s"] for e in epochs]
    steady = rates[1:] or rates  # the first epoch is not like the others (module doc)
    return dict(samples_per_s=max(steady), epoch_samples_per_s=rates,
                epoch_train_seconds=[e["train_seconds"] for e in epochs],
                epoch_startup_s=[e.get("train_startup_s") for e in epochs],
                samples_per_epoch=epochs[0]["train_samples"], torch_threads=threads, wall_s=wall_s)


def run_local(out: str, config: str | None, **kw) -> dict:
    """``train-local`` on the engines' run; its epochs' rates."""
    import torch  # deferred: the module is imported by the CLI before any measurement

    from clipvg.engine.local import train_local  # deferred: loads the model stack

    cfg = engine_config(out, config, run_name=f"engine-local-{time.time_ns()}", launcher="train-local", **kw)
    before = torch.get_num_threads()
    torch.set_num_threads(kw["threads"])
    try:
        start = time.perf_counter()
        history = train_local(cfg, progress=False)
        return _summary(history.epochs, time.perf_counter() - start, kw["threads"])
    finally:
        torch.set_num_threads(before)


def run_ray_train(out: str, config: str | None, **kw) -> dict:
    """The Ray Train path (one worker) on the engines' run; Ray must be initialised."""
    from clipvg.distributed.trainer import train  # deferred: imports Ray Train

    cfg = engine_config(out, config, run_name=f"engine-ray-{time.time_ns()}", launcher="ray_train", **kw)
    start = time.perf_counter()
    history = train(cfg)
    s = cfg.scaling
    summary = _summary(history["epochs"], time.perf_counter() - start, kw["threads"])
    summary["torch_threads"] = history["epochs"][-1].get("torch_threads")  # as the worker saw it
    return {**summary, "cpus_per_worker": s.cpus_per_worker, "data_cpus": s.data_cpus}


def run_engines(out: str, config: str | None = None, *, engines: tuple[str, ...] = ENGINES,
                images: int = 400, epochs: int = 3, batch_size: int | None = None, threads: int = 1) -> dict:
    """Every engine of ``engines`` on the same run (module doc); the ``engines`` report."""
    out = str(Path(out).resolve())
    kw = dict(images=images, epochs=epochs, batch_size=batch_size, threads=threads)
    runners = {"local": run_local, "ray_train": run_ray_train}
    results, load = {}, [os.getloadavg()[0]]  # other tenants slow a CPU run: say how busy it was
    for name in engines:
        results[name] = runners[name](out, config, **kw)
        print(f"  engine {name:10s} {results[name]['samples_per_s']:8.1f} samples/s (best epoch after the first; "
              f"epochs {', '.join(f'{r:.1f}' for r in results[name]['epoch_samples_per_s'])})", flush=True)
    cfg = engine_config(out, config, run_name="engines", launcher="train-local", **kw)
    report = dict(engines=results, config=str(config or DEMO), images=images, epochs=epochs,
                  batch_size=cfg.train.batch_size, threads=threads, load_avg_1m=[*load, os.getloadavg()[0]],
                  rate="train_samples / train_seconds (first batch in hand -> end of last step), "
                       "best epoch after the first")
    if "local" in results and "ray_train" in results:
        report["ray_over_local"] = results["ray_train"]["samples_per_s"] / results["local"]["samples_per_s"]
    return report


def markdown_line(report: dict, node: str, cores: int) -> str:
    e = report["engines"]
    cells = [f"{name} {r['samples_per_s']:,.1f} samples/s" for name, r in e.items()]
    if "ray_over_local" in report:
        cells.append(f"Ray Train / local = {report['ray_over_local']:.2f}")
    return (f"| {time.strftime('%Y-%m-%d')} | train engines | {node} ({cores} cores, {report['threads']} "
            f"torch threads) | {Path(report['config']).name}, batch {report['batch_size']}, "
            f"{report['images']} train images, {report['epochs']} epochs | {'; '.join(cells)} |")
