"""``clipvg benchmark score``: reliability-scoring throughput (samples/s) and actor scaling.

World: the synthetic grounding world (split ``val``, ``--images`` images of the canvas size,
PNG). Measurer: ``configs/demo.yaml``'s architecture (or ``--arch`` / ``--image-size``) with
random weights, written as a model folder with :func:`~clipvg.model.io.export_model`
(throughput depends on shapes, not values).

Measured:

* ``replica`` - one :class:`~clipvg.engine.reliability.ReliabilityScorer` in this process over
  canvas rows decoded beforehand (no Ray, no decode): the ceiling of one replica. CPU: one
  torch thread; CUDA: one GPU under the config's precision (``auto`` = bf16 autocast).
  ``warmup`` untimed batches first, then every batch timed; the best of ``passes`` counts.
* ``actors_1`` / ``actors_2`` (CPU, Ray): :func:`clipvg.distributed.scoring.score_samples`
  end to end with 1 and 2 measurer actors (``cpus_per_actor=1``, one torch thread each; Ray
  Data fuses the decode into the actors). ``end_to_end`` = samples / total seconds (actor
  start-up, i.e. importing torch + open_clip and loading the model, included);
  ``steady`` = the samples after the first output block / the time after it (start-up
  excluded). Scaling efficiency = rate(2) / (2 x rate(1)), on the steady rates.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path

import pyarrow as pa
import torch

from clipvg.bench.train import _cpu_name
from clipvg.config import Config, ModelConfig, SynthConfig, load_config
from clipvg.data import storage
from clipvg.data.fanout import FanOutSpec, concat_rows, decode, fan_out, group_samples, tokenize_texts
from clipvg.distributed.scoring import score_samples
from clipvg.engine.precision import resolve_precision
from clipvg.engine.reliability import ReliabilityScorer
from clipvg.model import build_model
from clipvg.model.io import export_model
from clipvg.sources.synthetic.scenes import write_world

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"  # packaged (configs/ links here)


def bench_config(model: ModelConfig | None, batch_size: int) -> Config:
    """configs/demo.yaml (its model unless ``model`` is given), random weights, one thread."""
    cfg = load_config(DEMO if DEMO.exists() else None, [
        "model.weights=null", "model.pretrained=null", "curriculum.scoring.cpus_per_actor=1",
        "curriculum.scoring.threads_per_actor=1", f"curriculum.scoring.batch_size={batch_size}",
        "scaling.data_cpus=1"])
    if model is not None:
        cfg = dataclasses.replace(cfg, model=model)
    return cfg


def write_measurer(cfg: Config, folder: str) -> str:
    torch.manual_seed(0)
    return str(export_model(build_model(cfg.model), folder))


def write_bench_world(out: str, cfg: Config, images: int) -> tuple[str, pa.Table]:
    """The synthetic world (split val, images of the canvas size) and its samples."""
    size = cfg.model.image_size
    uri = storage.join(out, f"score-world-{size}px-{images}")
    write_world(uri, SynthConfig(image_size=size), seed=0, splits={"val": images})
    return uri, storage.read_table(storage.join(uri, "samples"))


def canvas_batches(uri: str, samples: pa.Table, cfg: Config, canvases: int) -> tuple[list[dict], list[str], dict]:
    """Eval canvas rows of ``samples`` (decoded here, once), in batches of ``canvases``;
    the sample ids and image sizes a scorer needs."""
    spec = FanOutSpec.from_config(cfg, train=False)
    tokens, errors = tokenize_texts(samples.column("text").to_pylist(), spec)
    table = samples.append_column("tokens", pa.FixedSizeListArray.from_arrays(
        pa.array(tokens.reshape(-1)), spec.context_length))
    table = table.append_column("text_error", pa.array(errors, pa.string()))
    groups = group_samples(table, "image_id", cfg.data.box_int_truncation)
    spec = dataclasses.replace(spec, slots=max(len(g.rows) for g in groups.values()))
    images = storage.read_table(storage.join(uri, "images"), columns=["image_id", "uri", "width", "height"])
    rows = images.to_pylist()
    parts = [fan_out(decode(storage.read_bytes(storage.resolve(uri, r["uri"]))), groups[r["image_id"]],
                     spec, r["image_id"]) for r in rows if r["image_id"] in groups]
    batches = [concat_rows(parts[i:i + canvases], spec) for i in range(0, len(parts), canvases)]
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in rows}
    return batches, table.column("sample_id").to_pylist(), sizes


def replica_rate(cfg: Config, model_dir: str, batches: list[dict], sample_ids: list[str], sizes: dict,
                 device: str, passes: int = 3, warmup: int = 2, autocast: bool | None = None,
                 compile: bool | None = None) -> dict:
    """samples/s of one scorer replica in this process (see module doc). ``autocast``: bf16 over
    the whole forward; None = ``curriculum.scoring.full_bf16``, as ``clipvg score`` does.
    ``compile``: torch.compile the replica; None = ``curriculum.scoring.compile``."""
    threads = cfg.curriculum.scoring.threads_per_actor if device == "cpu" else None
    scorer = ReliabilityScorer(model_dir, sample_ids, sizes, size=cfg.model.image_size,
                               normalize=cfg.data.augment.normalize, batch_size=cfg.curriculum.scoring.batch_size,
                               device=device, precision=cfg.train.precision, threads=threads,
                               autocast=cfg.curriculum.scoring.full_bf16 if autocast is None else autocast,
                               compile=cfg.curriculum.scoring.compile if compile is None else compile)
    for batch in batches[:warmup]:
        scorer(batch)
    best, samples = float("inf"), int(sum(b["ok"].sum() for b in batches))
    for _ in range(passes):
        start = time.perf_counter()
        rows = sum(scorer(b).num_rows for b in batches)
        best = min(best, time.perf_counter() - start)
    assert rows == sum(int((b["sample_row"] >= 0).sum()) for b in batches)
    out = dict(samples=samples, seconds=best, samples_per_s=samples / best, device=str(scorer.device),
               precision=resolve_precision(cfg.train.precision, scorer.device),
               torch_threads=torch.get_num_threads(), full_bf16_autocast=scorer.autocast,
               compiled=cfg.curriculum.scoring.compile if compile is None else compile)
    if scorer.device.type == "cuda":
        out.update(device_name=torch.cuda.get_device_name(scorer.device),
                   peak_memory_gib=torch.cuda.max_memory_allocated(scorer.device) / 2**30)
    return out


def actors_rate(cfg: Config, model_dir: str, uri: str, samples: pa.Table, actors: int, passes: int) -> dict:
    """End-to-end and steady samples/s of score_samples with ``actors`` CPU actors (best pass)."""
    cfg = dataclasses.replace(cfg, curriculum=dataclasses.replace(
        cfg.curriculum, scoring=dataclasses.replace(cfg.curriculum.scoring, actors=actors)))
    runs = []
    for _ in range(passes):
        t: dict = {}
        scores = score_samples(model_dir, uri, samples, cfg=cfg, measurer="bench", source="bench",
                               progress=False, timings=t)
        assert scores.num_rows == samples.num_rows and scores.column("reliability").null_count == 0
        steady_s = t["seconds"] - t["first_row_s"]
        runs.append(dict(seconds=t["seconds"], first_row_s=t["first_row_s"], end_to_end=t["samples"] / t["seconds"],
                         steady=(t["samples"] - t["first_rows"]) / steady_s if steady_s > 0 else None))
    best = max(runs, key=lambda r: r["steady"] or 0)
    return dict(actors=actors, samples=samples.num_rows, runs=runs, **{k: best[k] for k in ("end_to_end", "steady")})


def environment() -> dict:
    return dict(node=platform.node(), cpu=_cpu_name(), cpu_cores=os.cpu_count(), torch=torch.__version__,
                cuda=torch.version.cuda, load_avg_1m=os.getloadavg()[0])


def markdown_line(report: dict) -> str:
    env, m = report["environment"], report["model"]
    r = report["replica"]
    cells = [f"one replica in-process ({r['device']}, {r['precision']}): {r['samples_per_s']:,.1f} samples/s"]
    if report.get("replica_full_bf16"):
        cells.append(f"with fusion + head in bf16 too: {report['replica_full_bf16']['samples_per_s']:,.1f} samples/s")
    if report.get("actors"):
        a1, a2 = report["actors"]["actors_1"], report["actors"]["actors_2"]
        cells.append(f"Ray actors 1 / 2: steady {a1['steady']:,.1f} / {a2['steady']:,.1f} samples/s "
                     f"(end to end {a1['end_to_end']:,.1f} / {a2['end_to_end']:,.1f}); "
                     f"scaling efficiency {100 * report['scaling_efficiency']:.0f}%")
    where = f"{env['node']} ({r.get('device_name', env['cpu'])}, {env['cpu_cores']} cores, torch {env['torch']})"
    what = (f"{m['arch']} {m['image_size']}px, random init, batch {report['batch_size']}; "
            f"{report['samples']} samples on {report['images']} images")
    return f"| {time.strftime('%Y-%m-%d')} | score | {where} | {what} | {'; '.join(cells)} |"


def run_benchmark(args, model: ModelConfig | None, device: str, use_ray: bool) -> dict:
    """The whole measurement (see module doc); Ray must be initialised when ``use_ray``."""
    batch = int(args.batch_sizes.split(",")[0]) if args.batch_sizes else (256 if device != "cpu" else 16)
    cfg = bench_config(model, batch)
    out = str(Path(args.out).resolve())
    model_dir = write_measurer(cfg, storage.join(out, "score-measurer"))
    uri, samples = write_bench_world(out, cfg, args.images)
    batches, ids, sizes = canvas_batches(uri, samples, cfg, batch)
    print(f"{samples.num_rows} samples on {args.images} images; replica on {device}", flush=True)
    report = dict(benchmark="score", images=args.images, samples=samples.num_rows, batch_size=batch,
                  model=dict(arch=cfg.model.arch if isinstance(cfg.model.arch, str) else "demo (inline)",
                             image_size=cfg.model.image_size, context_length=cfg.model.context_length),
                  replica=replica_rate(cfg, model_dir, batches, ids, sizes, device, passes=args.epochs),
                  environment=environment())
    print(f"  replica: {report['replica']['samples_per_s']:,.1f} samples/s", flush=True)
    if device != "cpu":  # the opt-in: fusion and box head in bf16 too
        report["replica_full_bf16"] = replica_rate(cfg, model_dir, batches, ids, sizes, device,
                                                   passes=args.epochs, autocast=True)
        print(f"  replica, full bf16: {report['replica_full_bf16']['samples_per_s']:,.1f} samples/s", flush=True)
    if use_ray:
        rates = {f"actors_{n}": actors_rate(cfg, model_dir, uri, samples, n, args.epochs) for n in (1, 2)}
        for name, r in rates.items():
            print(f"  {name}: steady {r['steady']:,.1f}, end to end {r['end_to_end']:,.1f} samples/s", flush=True)
        report["actors"] = rates
        report["scaling_efficiency"] = rates["actors_2"]["steady"] / (2 * rates["actors_1"]["steady"])
    report["markdown"] = markdown_line(report)
    return report
