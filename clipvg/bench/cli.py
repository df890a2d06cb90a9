"""``clipvg benchmark data|train|score``: streaming throughput per CPU core, training-step
throughput of the model on one device, or reliability-scoring throughput and its scaling over
Ray actors (JSON + a Markdown line each).

Example::

    clipvg benchmark data --out runs/bench                 # local disk only
    clipvg benchmark data --s3 moto --images 300           # + S3 (moto on loopback; needs moto,
                                                           #   which only the test extra installs)
    clipvg benchmark train --out runs/bench                # ViT-B-16; CPU: batch 8, fp32
    clipvg benchmark train --batch-sizes 64,128 --precision bf16,fp32 --compile off,on
    clipvg benchmark score --images 200                    # demo arch: 1 replica, 1 and 2 actors
    clipvg benchmark score --arch ViT-B-16 --image-size 224 --device cuda   # samples/s per GPU

``score``: what is measured, :mod:`clipvg.bench.score`; results in
``<out>/benchmark-score.json`` plus one line in ``<out>/benchmarks.md``.

``train`` runs in this process, or in one Ray task (one GPU on a CUDA device) when
``--address`` names a cluster; what it measures: :mod:`clipvg.bench.train`. On a CPU device
without ``--address`` it also trains ``train-local`` and the Ray Train path (one worker, a
private local Ray) side by side on the same run (JSON key ``engines``, ``ray_over_local``;
:mod:`clipvg.bench.engines`): ``clipvg benchmark train --engines-only`` runs only that.
Results go to ``<out>/benchmark-train.json`` plus one line in ``<out>/benchmarks.md``.

What is measured and how: :mod:`clipvg.bench.data`. Ray is started locally on
127.0.0.1 with ``--cpus`` CPUs for the decode tasks (default 1: on a 2-core machine the other
core runs the consumer, as a trainer's host would), unless ``--address`` names a cluster.
Results go to ``<out>/benchmark-data.json`` and one line per run is appended to
``<out>/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import platform
import socket
import sys
import time
from pathlib import Path

import yaml

from clipvg.bench import engines as be
from clipvg.bench.engines import ENGINES
from clipvg.config import ModelConfig
from clipvg.distributed.local_ray import cluster_gpus, init_ray, quiet_data
from clipvg.errors import UserError

# Deferred imports below load torch (bench.score, bench.train, engine.precision): each benchmark
# pays for what it measures, and `clipvg benchmark --help` answers at once.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["data", "train", "score"], help="which benchmark")
    parser.add_argument("--out", default="runs/bench", help="folder for the results")
    parser.add_argument("--images", type=int, default=400, help="images in the benchmark world")
    parser.add_argument("--per-image", type=int, default=7, help="expressions per image (RefCOCO: 7)")
    parser.add_argument("--cpus", type=int, default=1,
                        help="data: CPUs given to Ray's decode tasks; train with --address: "
                             "CPUs (torch threads) of its Ray task")
    parser.add_argument("--epochs", type=int, default=3, help="passes per measurement (best counts)")
    parser.add_argument("--s3", default="none",
                        help="'none' (local disk only), 'moto' (a local S3 server on 127.0.0.1; "
                             "needs moto, from clipvg's test extra), or an s3:// URI")
    parser.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint for --s3 URI")
    parser.add_argument("--address", default=None, help="a running Ray cluster (default: local)")
    train = parser.add_argument_group("train and score")
    train.add_argument("--arch", default=None,
                       help="open_clip model name, or an inline config {embed_dim, vision_cfg, text_cfg} "
                            "(default: train ViT-B-16, score configs/demo.yaml's)")
    train.add_argument("--image-size", type=int, default=None,
                       help="canvas side (default: 224, or vision_cfg.image_size of an inline arch)")
    train.add_argument("--batch-sizes", default=None, help="comma list (default: CPU 8, GPU 64,128)")
    train.add_argument("--precision", default=None,
                       help="comma list of auto/fp32/bf16/fp16-frozen (default: CPU fp32; GPU "
                            "bf16, fp16-frozen, fp32)")
    train.add_argument("--compile", default=None,
                       help="comma list of off/on (default: off; GPU: bf16 also compiled)")
    train.add_argument("--steps", type=int, default=None, help="timed steps per case (CPU 3, GPU 20)")
    train.add_argument("--warmup", type=int, default=None, help="untimed steps first (CPU 1, GPU 5)")
    train.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    train.add_argument("--engines", default="auto",
                       help="train: engines trained end to end side by side (clipvg.bench.engines): "
                            "comma list of local/ray_train, or none; auto = both on a CPU device "
                            "without --address, none otherwise")
    train.add_argument("--engines-only", action="store_true", help="train: skip the step-level cases")
    train.add_argument("--threads", type=int, default=None,
                       help="train engines: torch threads of both engines (default: all cores)")
    train.add_argument("--engine-config", default=None,
                       help="train engines: the run config both train (default: configs/demo.yaml)")
    train.add_argument("--replica-only", action="store_true",
                       help="score: only one replica in this process (no Ray actors)")


def _start_moto():
    """A moto S3 server on a free loopback port (the benchmark's stand-in for object storage).
    moto comes with clipvg's test extra only: imported here, when ``--s3 moto`` asks for it."""
    try:
        # deferred: moto (and boto3) come with the test extra only, see the docstring
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise UserError("--s3 moto needs moto, which clipvg's test extra installs "
                        "(pip install 'clipvg[test]'); or give --s3 none / an s3:// URI") from None

    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        os.environ.setdefault(key, value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint  # Ray workers inherit it (set before ray.init)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="clipvg-bench")
    return server, "s3://clipvg-bench/world", {"endpoint_url": endpoint}


def _init_ray(args) -> None:
    init_ray(args.address, args.cpus, log_to_driver=False)
    quiet_data()


# (name, per_sample, train, materialize[, augmentation backend]); object storage gets the first
# two only. "train_*_stream": the uint8 rows as delivered = the training stream's CPU cost
# (cpu backend: a canvas per sample; device backend: decode + draw, pixels once per image)
CASES = [("fan_out_eval", False, False, False), ("per_sample_eval", True, False, False),
         ("fan_out_eval_cpu_batches", False, False, True),
         ("fan_out_train_cpu_batches", False, True, True),
         ("per_sample_train_cpu_batches", True, True, True),
         ("train_cpu_backend_stream", False, True, False, "cpu"),
         ("train_device_backend_stream", False, True, False, "device")]


def _measure(uri: str, args, options: dict, cases) -> dict:
    # deferred: loads Ray; paid only when this runs, not on import
    from clipvg.bench.data import stream_rate

    out = {}
    for name, per_sample, train, materialize, *backend in cases:
        out[name] = stream_rate(uri, per_sample=per_sample, train=train, cpus=args.cpus,
                                materialize=materialize, epochs=args.epochs,
                                backend=backend[0] if backend else "cpu", **options)
        print(f"  {name:30s} {out[name]['samples_per_s_per_core']:8.1f} samples/s per core", flush=True)
    return out


def run(args: argparse.Namespace) -> int:
    # deferred: loads torch (see the note above add_arguments)
    import torch

    if args.what == "train":
        return run_train(args)
    if args.what == "score":
        return run_score(args)
    # deferred: loads Ray; paid only when this runs, not on import
    from clipvg.bench.data import BenchWorld, pil_ceiling, write_bench_world

    if min(args.images, args.per_image, args.cpus, args.epochs) < 1:
        print("clipvg benchmark: error: --images, --per-image, --cpus, --epochs must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # the consumer gets one core; torch's pool would fight the workers
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = BenchWorld(images=args.images, per_image=args.per_image)
    stores = {"local": (str(out / f"world-{args.images}x{args.per_image}"), {})}
    server = None
    if args.s3 == "moto":
        server, uri, options = _start_moto()
        stores["s3"] = (uri, options)
    elif args.s3 != "none":
        stores["s3"] = (args.s3, {"endpoint_url": args.endpoint_url} if args.endpoint_url else {})
    for uri, options in stores.values():
        write_bench_world(uri, world, **options)
    ceiling = pil_ceiling(stores["local"][0])
    print(f"PIL decode+resize ceiling: {ceiling['images_per_s']:.1f} images/s on one core", flush=True)
    _init_ray(args)
    # deferred: loads Ray; paid only when this runs, not on import
    from clipvg.bench.data import stream_rate

    stream_rate(stores["local"][0], per_sample=False, train=False, cpus=args.cpus, epochs=1,
                materialize=False)  # warm-up: starts Ray's workers and their imports
    paired = _paired_ratio(stores["local"][0], args, world.per_image)
    results = {}
    try:
        for store, (uri, options) in stores.items():
            print(f"{store}: {uri}", flush=True)
            results[store] = _measure(uri, args, options, CASES if store == "local" else CASES[:2])
    finally:
        if server is not None:
            server.stop()
    # deferred: loads Ray; paid only when this runs, not on import
    from clipvg.bench.data import apply_rate

    applied = apply_rate(stores["local"][0])  # one thread: torch.set_num_threads(1) above
    print(f"  apply step alone, one CPU core: device backend (torch on CPU) "
          f"{applied['samples_per_s']['device']:.0f}, cpu backend (PIL) "
          f"{applied['samples_per_s']['cpu']:.0f} samples/s", flush=True)
    report = _report(args, world, ceiling, results, paired, applied)
    (out / "benchmark-data.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out / "benchmarks.md", "a") as f:
        f.write(report["markdown"] + "\n")
    print(report["markdown"])
    return 0


def _paired_ratio(uri: str, args, per_image: int, rounds: int = 3) -> list[float]:
    """Fan-out rate / PIL ceiling, measured back to back ``rounds`` times.

    This machine's speed drifts by +-15% over minutes (other tenants), which alone can move a
    ratio of two measurements taken minutes apart by 10 points; pairs taken seconds apart see
    the same machine. The median of the pairs is the reported ratio.
    """
    # deferred: loads Ray; paid only when this runs, not on import
    from clipvg.bench.data import pil_ceiling, stream_rate

    ratios = []
    for _ in range(rounds):
        ceiling = pil_ceiling(uri, repeats=1)["images_per_s"] * per_image
        rate = stream_rate(uri, per_sample=False, train=False, cpus=args.cpus, epochs=1,
                           materialize=False)["samples_per_s_per_core"]
        ratios.append(rate / ceiling)
    print(f"fan-out / ceiling, back to back: {', '.join(f'{r:.2f}' for r in ratios)}", flush=True)
    return ratios


def _report(args, world, ceiling: dict, results: dict, paired: list[float] | None = None,
            applied: dict | None = None) -> dict:
    ceiling_samples = ceiling["images_per_s"] * world.per_image
    local = results["local"]
    fan, per = local["fan_out_eval"]["samples_per_s_per_core"], local["per_sample_eval"]["samples_per_s_per_core"]
    summary = dict(
        fan_out_vs_per_sample=fan / per, fan_out_vs_ceiling=fan / ceiling_samples,
        ceiling_samples_per_s_per_core=ceiling_samples,
    )
    if paired:
        summary["fan_out_vs_ceiling_paired"] = sorted(paired)[len(paired) // 2]
        summary["fan_out_vs_ceiling_pairs"] = paired
    train_line = ""
    if "train_device_backend_stream" in local and "train_cpu_backend_stream" in local:
        dev = local["train_device_backend_stream"]["samples_per_s_per_core"]
        cpu = local["train_cpu_backend_stream"]["samples_per_s_per_core"]
        summary.update(train_stream_per_core={"cpu": cpu, "device": dev}, train_device_vs_cpu=dev / cpu)
        train_line = (f"; train stream (uint8 as delivered) cpu backend {cpu:.0f}, device backend "
                      f"{dev:.0f} samples/s/core ({dev / cpu:.1f}x)")
    if applied:
        summary["apply_one_core_samples_per_s"] = applied["samples_per_s"]
        train_line += (f"; apply alone on 1 CPU core: torch {applied['samples_per_s']['device']:.0f}, "
                       f"PIL {applied['samples_per_s']['cpu']:.0f} samples/s")
    if "s3" in results:
        s3 = results["s3"]
        summary["s3_fan_out_vs_per_sample"] = (s3["fan_out_eval"]["samples_per_s_per_core"]
                                               / s3["per_sample_eval"]["samples_per_s_per_core"])
    line = (f"| {time.strftime('%Y-%m-%d')} | data | {platform.node()} ({os.cpu_count()} cores, "
            f"Ray CPUs {args.cpus}) | {world.images} img x {world.per_image} expr, "
            f"{world.width}x{world.height} JPEG | fan-out {fan:.0f} vs per-sample {per:.0f} samples/s/core "
            f"({summary['fan_out_vs_per_sample']:.1f}x); ceiling {ceiling_samples:.0f} "
            f"({100 * summary['fan_out_vs_ceiling']:.0f}% reached"
            + (f"; back-to-back median {100 * summary['fan_out_vs_ceiling_paired']:.0f}%" if paired else "")
            + ")" + train_line + " |")
    return dict(benchmark="data", world=world.__dict__, cpus=args.cpus, ceiling=ceiling,
                results=results, summary=summary, markdown=line, apply=applied,
                machine=dict(node=platform.node(), cores=os.cpu_count()))


def _csv(value: str | None, cast=str) -> list | None:
    return None if value is None else [cast(v.strip()) for v in value.split(",") if v.strip()]


def _train_setup(args, cuda_available: bool):
    """(ModelConfig, cases, device, steps, warmup) from the ``train`` options; ValueError on bad
    ones. ``--device auto`` is CUDA when ``cuda_available`` (here, or on the Ray cluster)."""
    # deferred: loads torch (see the note above add_arguments)
    import torch

    from clipvg.bench import train as bt
    from clipvg.engine.precision import resolve_precision

    device = _device(args, cuda_available)
    gpu = torch.device(device).type == "cuda"
    cfg = _model_config(args.arch or "ViT-B-16", args.image_size)
    defaults = bt.GPU_DEFAULTS if gpu else bt.CPU_DEFAULTS
    sizes = _csv(args.batch_sizes, int)
    if args.precision is None and args.compile is None:
        cases = bt.default_cases(device, sizes)
    else:
        precisions = [resolve_precision(p, device) for p in _csv(args.precision) or ["auto"]]
        compiles = _csv(args.compile) or ["off"]
        if set(compiles) - {"on", "off"}:
            raise ValueError(f"--compile takes on/off, got {args.compile!r}")
        cases = [bt.TrainCase(b, p, c == "on") for b, p, c in itertools.product(
            sizes or defaults["batch_sizes"], dict.fromkeys(precisions), compiles)]
    steps = defaults["steps"] if args.steps is None else args.steps
    warmup = defaults["warmup"] if args.warmup is None else args.warmup
    if steps < 1 or warmup < 0 or min(c.batch_size for c in cases) < 1:
        raise ValueError("--steps and --batch-sizes must be >= 1, --warmup >= 0")
    return cfg, cases, device, steps, warmup


def _device(args, cuda_available: bool) -> str:
    # deferred: loads torch (see the note above add_arguments)
    import torch

    if args.device == "auto":
        return "cuda" if cuda_available else "cpu"
    return str(torch.device(args.device))  # RuntimeError on a bad name


def _model_config(arch_text: str, image_size: int | None):
    """ModelConfig of ``--arch`` (a name or an inline YAML dict) and ``--image-size``."""
    arch = yaml.safe_load(arch_text) if arch_text.lstrip().startswith("{") else arch_text
    cfg = ModelConfig(arch=arch)
    if isinstance(arch, dict):
        cfg = dataclasses.replace(cfg, image_size=arch.get("vision_cfg", {}).get("image_size", 224),
                                  context_length=arch.get("text_cfg", {}).get("context_length", 77))
    if image_size:
        cfg = dataclasses.replace(cfg, image_size=image_size)
    return cfg


def run_score(args: argparse.Namespace) -> int:
    """``clipvg benchmark score`` (see clipvg.bench.score)."""
    # deferred: loads torch (see the note above add_arguments)
    import torch

    from clipvg.bench import score as bs

    try:
        device = _device(args, torch.cuda.is_available())
        model = _model_config(args.arch, args.image_size) if args.arch else None
    except (ValueError, RuntimeError) as err:
        print(f"clipvg benchmark: error: {err}", file=sys.stderr)
        return 2
    use_ray = device == "cpu" and not args.replica_only  # GPU: samples/s per GPU, one replica
    if use_ray:
        init_ray(args.address, args.cpus if args.cpus > 1 else 3, log_to_driver=False)  # 2 actors + 1
        quiet_data()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = bs.run_benchmark(args, model, device, use_ray)
    (out / "benchmark-score.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out / "benchmarks.md", "a") as f:
        f.write(report["markdown"] + "\n")
    print(report["markdown"])
    return 0


def _engines(args, device: str) -> tuple[str, ...]:
    """The engines ``--engines`` asks for (see its help); ValueError on a bad one."""
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be >= 1")
    if args.engines == "auto":
        return ENGINES if device == "cpu" and not args.address else ()
    names = tuple(_csv(args.engines) or [])
    if names == ("none",):
        return ()
    bad = [n for n in names if n not in ENGINES]
    if bad or not names:
        raise ValueError(f"--engines takes {', '.join(ENGINES)} or none, got {args.engines!r}")
    return names


def _run_engines(args, engines: tuple[str, ...], out: Path) -> dict:
    """The engines' report (clipvg.bench.engines) and its Markdown line."""
    threads = args.threads or os.cpu_count() or 1
    if "ray_train" in engines:
        init_ray(args.address, os.cpu_count(), log_to_driver=False)  # the engines share the machine
        quiet_data()
    print(f"engines {', '.join(engines)}: {threads} torch thread(s) each, {args.images} train images, "
          f"{args.epochs} epochs", flush=True)
    report = be.run_engines(str(out / "engines"), args.engine_config, engines=engines, images=args.images,
                            epochs=args.epochs, threads=threads)
    return {**report, "engines_markdown": be.markdown_line(report, platform.node(), os.cpu_count())}


def run_train(args: argparse.Namespace) -> int:
    # deferred: loads torch (see the note above add_arguments)
    import torch

    from clipvg.bench import train as bt

    cuda = torch.cuda.is_available()
    if args.address:
        init_ray(args.address)
        cuda = cluster_gpus() > 0  # the task runs where the GPUs are
    try:
        cfg, cases, device, steps, warmup = _train_setup(args, cuda)
    except (ValueError, RuntimeError) as err:
        print(f"clipvg benchmark: error: {err}", file=sys.stderr)
        return 2
    try:
        engines = _engines(args, device)
    except ValueError as err:
        print(f"clipvg benchmark: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "train", "results": []}
    if not args.engines_only:
        print(f"train step, {cfg.arch if isinstance(cfg.arch, str) else 'inline arch'} on {device}: "
              f"{len(cases)} case(s), {warmup} warm-up + {steps} timed steps each", flush=True)
        if args.address:
            report = bt.run_on_ray(cfg, cases, device, steps, warmup, cpus=args.cpus)
        else:
            report = bt.run_benchmark(cfg, cases, device, steps, warmup)
        report["markdown"] = bt.markdown_line(report)
    if engines:
        report.update(_run_engines(args, engines, out))
    report["markdown"] = "\n".join(filter(None, [report.get("markdown"), report.get("engines_markdown")]))
    (out / "benchmark-train.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out / "benchmarks.md", "a") as f:
        f.write(report["markdown"] + "\n")
    print(report["markdown"])
    return 0
