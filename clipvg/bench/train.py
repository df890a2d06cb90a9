"""``clipvg benchmark train``: training-step throughput of CLIP-VG on one device.

What is timed is the engine's real step, :func:`clipvg.engine.steps.train_step` (forward,
L1 + GIoU loss, finiteness check, backward, AdamW step from
:func:`~clipvg.engine.steps.build_optimizer`), on a model built by
:func:`clipvg.model.build_model` with random weights (offline) and the official freezing, under
a precision policy (:mod:`clipvg.engine.precision`), optionally ``torch.compile``-d.

Batches are synthetic, already on the device (the data pipeline is benchmarked separately by
``clipvg benchmark data``): ``image`` ``(B, 3, S, S)`` float32 N(0, 1) with the lower quarter
padded to 0, ``pixel_mask`` ``(B, S, S)`` int64 (1 = that padding), ``tokens`` ``(B, L)`` int64
with 4-20 random BPE ids between SOT and EOT (the vocabulary's last two ids, as in CLIP's),
``token_mask`` ``(B, L)`` int64, ``target`` ``(B, 4)`` float32 ``(cx, cy, w, h)`` boxes inside
the canvas. Shapes, not values, decide the cost of a step.

Per case: ``warmup`` untimed steps (torch.compile compiles here), then ``steps`` timed steps,
each bracketed by a device synchronisation; the step time is the median. samples/s = batch
size / median step time. Train FLOPs per sample are counted once per case on the eager model
(:func:`clipvg.engine.flops.train_flops_per_sample`, 2 samples); MFU is against the dense peak of
the precision's matmul dtype (:func:`clipvg.engine.flops.peak_flops`; None on CPUs).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass

import open_clip
import torch

from clipvg.config import ModelConfig
from clipvg.distributed.local_ray import run_as_task
from clipvg.engine.flops import mfu, peak_flops, train_flops_per_sample
from clipvg.engine.precision import apply_precision
from clipvg.engine.steps import build_optimizer, train_step
from clipvg.model import build_model
from clipvg.model.clipvg import build_model, count_parameters

CPU_DEFAULTS = dict(batch_sizes=[8], steps=3, warmup=1)
GPU_DEFAULTS = dict(batch_sizes=[64, 128], steps=20, warmup=5)


@dataclass(frozen=True)
class TrainCase:
    batch_size: int
    precision: str  # fp32, bf16 or fp16-frozen (resolved; "auto" is resolved before)
    compile: bool = False

    @property
    def label(self) -> str:
        return f"b{self.batch_size} {self.precision}{' compiled' if self.compile else ''}"


def default_cases(device: torch.device | str, batch_sizes: list[int] | None = None) -> list[TrainCase]:
    """CPU: fp32 eager at batch 8. GPU, per batch size (64, 128): bf16 eager and compiled,
    fp16-frozen (the official policy) eager, fp32 eager as the reference."""
    if torch.device(device).type != "cuda":
        return [TrainCase(b, "fp32") for b in batch_sizes or CPU_DEFAULTS["batch_sizes"]]
    cases = []
    for b in batch_sizes or GPU_DEFAULTS["batch_sizes"]:
        cases += [TrainCase(b, "bf16"), TrainCase(b, "bf16", True), TrainCase(b, "fp16-frozen"),
                  TrainCase(b, "fp32")]
    return cases


def synthetic_batch(batch_size: int, image_size: int, context_length: int,
                    device: torch.device | str = "cpu", seed: int = 0, vocab_size: int = 49408) -> dict:
    """A random engine batch (see the module docstring for shapes and dtypes)."""
    g = torch.Generator().manual_seed(seed)
    SOT, EOT = vocab_size - 2, vocab_size - 1  # 49406, 49407 for CLIP's BPE
    B, S, L = batch_size, image_size, context_length
    image = torch.randn(B, 3, S, S, generator=g)
    pixel_mask = torch.zeros(B, S, S, dtype=torch.int64)
    pixel_mask[:, 3 * S // 4:] = 1
    image[:, :, 3 * S // 4:] = 0
    tokens = torch.zeros(B, L, dtype=torch.int64)
    lengths = torch.randint(4, min(20, L - 2) + 1, (B,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0], tokens[i, n + 1] = SOT, EOT
        tokens[i, 1:n + 1] = torch.randint(1, SOT, (n,), generator=g)
    cxcy = torch.rand(B, 2, generator=g) * 0.4 + 0.3
    wh = torch.rand(B, 2, generator=g) * 0.3 + 0.1
    batch = {"image": image, "pixel_mask": pixel_mask, "tokens": tokens,
             "token_mask": (tokens > 0).to(torch.int64), "target": torch.cat([cxcy, wh], 1),
             "sample_id": [f"bench-{i}" for i in range(B)]}
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tf32() -> bool:
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)  # torch >= 2.9 spelling
    return precision == "tf32" if precision is not None else bool(matmul.allow_tf32)


def _peak(device: torch.device, precision: str) -> float | None:
    dtype = {"bf16": torch.bfloat16, "fp16-frozen": torch.float16}.get(precision)
    return peak_flops(device, dtype or ("tf32" if _tf32() else torch.float32))


def measure_case(model_cfg: ModelConfig, case: TrainCase, device: torch.device | str,
                 steps: int, warmup: int, lr: float = 2.5e-4, weight_decay: float = 1e-4) -> dict:
    """Build a fresh model for ``case``, warm up, time ``steps`` train steps; see the module doc."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = apply_precision(build_model(model_cfg).to(device), case.precision, device)
    shape = dict(image_size=model.backbone.visual.image_size[0],
                 context_length=model.backbone.context_length,
                 vocab_size=model.backbone.token_embedding.num_embeddings)
    flops = train_flops_per_sample(model, synthetic_batch(2, device=device, seed=1, **shape))
    optimizer = build_optimizer(model, lr=lr, weight_decay=weight_decay)
    step_model = torch.compile(model) if case.compile else model
    batch = synthetic_batch(case.batch_size, device=device, **shape)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(warmup):
        train_step(step_model, batch, optimizer)
    _sync(device)
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        train_step(step_model, batch, optimizer)
        _sync(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    rate = case.batch_size / median
    peak = _peak(device, case.precision)
    result = dict(case=case.label, **dataclasses.asdict(case), steps=steps, warmup=warmup,
                  warmup_s=warmup_s, step_s_median=median, step_s_min=min(times),
                  step_s_max=max(times), samples_per_s=rate, train_flops_per_sample=flops,
                  achieved_tflops=rate * flops / 1e12, peak_tflops=peak / 1e12 if peak else None,
                  mfu=mfu(rate, flops, peak), peak_memory_gib=None)
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str) -> dict:
    """Versions and the device: what a number needs next to it to mean anything."""
    device = torch.device(device)
    env = dict(node=platform.node(), python=platform.python_version(), torch=torch.__version__,
               cuda=torch.version.cuda, open_clip=open_clip.__version__, cpu_cores=os.cpu_count(),
               torch_threads=torch.get_num_threads(), device=str(device), tf32=_tf32(),
               device_name=_cpu_name(),
               load_avg_1m=os.getloadavg()[0])  # at the end, this run included: others slow a CPU run
    if device.type == "cuda":
        env.update(device_name=torch.cuda.get_device_name(device),
                   cudnn=torch.backends.cudnn.version(),
                   device_memory_gib=torch.cuda.get_device_properties(device).total_memory / 2**30)
    return env


def run_benchmark(model_cfg: ModelConfig, cases: list[TrainCase], device: str,
                  steps: int, warmup: int) -> dict:
    """Every case in turn (a fresh model each); a case that runs out of device memory is
    recorded with ``error`` instead of ending the run."""
    device = torch.device(device)
    total, trainable = count_parameters(build_model(model_cfg))
    results = []
    for case in cases:
        try:
            results.append(measure_case(model_cfg, case, device, steps, warmup))
        except torch.OutOfMemoryError as err:
            results.append(dict(case=case.label, **dataclasses.asdict(case),
                                error=f"out of memory: {err}"[:300]))
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"  {results[-1]['case']:24s} {_summary(results[-1])}", flush=True)
    arch = model_cfg.arch if isinstance(model_cfg.arch, str) else "inline"
    model = dict(freeze=model_cfg.freeze, image_size=model_cfg.image_size,
                 context_length=model_cfg.context_length, parameters=total, trainable=trainable)
    return dict(benchmark="train", arch=arch, model=model, environment=environment(device),
                results=results)


def _summary(r: dict) -> str:
    if "error" in r:
        return r["error"]
    mfu = f"  MFU {100 * r['mfu']:.1f}%" if r.get("mfu") is not None else ""
    return f"{r['samples_per_s']:9.2f} samples/s  {1e3 * r['step_s_median']:8.1f} ms/step{mfu}"


def run_on_ray(model_cfg: ModelConfig, cases: list[TrainCase], device: str, steps: int,
               warmup: int, cpus: int = 1) -> dict:
    """:func:`run_benchmark` inside one Ray task (one GPU when ``device`` is CUDA), so a job
    submitted to a cluster measures a worker's accelerator rather than the head node's.
    Ray must already be initialised; the task's torch threads = its ``cpus``."""
    gpus = 1 if torch.device(device).type == "cuda" else 0
    return run_as_task(_remote_benchmark, model_cfg, cases, device, steps, warmup, cpus,
                       num_cpus=cpus, num_gpus=gpus)


def _remote_benchmark(model_cfg, cases, device, steps, warmup, cpus):
    torch.set_num_threads(cpus)
    return run_benchmark(model_cfg, cases, device, steps, warmup)


def markdown_line(report: dict) -> str:
    """One table row for ``benchmarks.md``: date, what, machine, model, per-case numbers."""
    env = report["environment"]
    cells = []
    for r in report["results"]:
        if "error" in r:
            cells.append(f"{r['case']}: {r['error'][:40]}")
            continue
        mfu = f", MFU {100 * r['mfu']:.0f}%" if r.get("mfu") is not None else ""
        mem = f", {r['peak_memory_gib']:.1f} GiB" if r.get("peak_memory_gib") is not None else ""
        rate = r["samples_per_s"]
        rate = f"{rate:,.1f}" if rate >= 10 else f"{rate:.2f}"  # CPU rates are below 1
        cells.append(f"{r['case']}: {rate} samples/s ({1e3 * r['step_s_median']:,.0f} ms/step{mfu}{mem})")
    flops = next((r["train_flops_per_sample"] for r in report["results"] if "error" not in r), None)
    model = report["model"]
    where = (f"{env['node']} ({env['device_name']}, {env['cpu_cores']} cores, torch {env['torch']}"
             + (f", CUDA {env['cuda']}" if str(env["device"]).startswith("cuda") else "") + ")")
    what = (f"{report['arch']} freeze={model['freeze']}, random init, {model['trainable']:,} of "
            f"{model['parameters']:,} params trainable"
            + (f", {flops / 1e9:.1f} GFLOP/sample fwd+bwd" if flops else ""))
    return f"| {time.strftime('%Y-%m-%d')} | train | {where} | {what} | {'; '.join(cells)} |"
