"""``clipvg benchmark data``: samples/s per CPU core of the streaming pipeline.

The benchmark dataset is RefCOCO-shaped: 640x480 JPEG images (COCO's typical size and format)
with exactly ``per_image`` expressions each (7 = RefCOCO's expressions per image), written with
:func:`clipvg.data.validate.ingest` like any other dataset. Measured, per core (rate / CPUs
given to Ray; one CPU per decode task):

* ``fan_out``    - :mod:`clipvg.distributed.streaming`: each image fetched and decoded once,
                   its expressions fanned out (the default);
* ``per_sample`` - one fetch + decode per sample, as the official loader does;
* ``pil_ceiling``- PIL alone on one core, bytes already in memory: decode + RGB + resize long
                   side to 224, per image; as samples/s it is x ``per_image`` (a decode-once
                   pipeline cannot beat one decode + resize per image).

Training, per augmentation backend (``data.augment.backend``): ``cpu`` augments every sample
with PIL in the decode tasks and ships a uint8 canvas per sample; ``device`` decodes each image
once, draws every sample's parameters there and ships the pixels once per image plus the
params (:mod:`clipvg.data.fanout` image rows): its stream cost is decode + draw + shipping,
and the apply step runs on the consumer's device, measured apart by :func:`apply_rate` (on a
CPU-only machine, on one CPU core).

Both pipelines are timed end to end on the consumer: batches of ``batch_size`` samples, error
rows dropped, images normalised to float32 on the CPU (what a CPU trainer pays; a GPU trainer
normalises on its device). Ray's worker start-up is excluded by a warm-up pass on a subset.
"""

from __future__ import annotations

import dataclasses
import io
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, ImageDraw

from clipvg.config import AugmentConfig
from clipvg.data import storage
from clipvg.data.augment import draw_params
from clipvg.data.augment_torch import apply_batch
from clipvg.data.fanout import FanOutSpec, decode
from clipvg.data.transforms import normalize_images, train_sample
from clipvg.data.validate import ingest
from clipvg.distributed import streaming as st

WORDS = ("red", "blue", "green", "small", "large", "left", "right", "man", "dog", "car", "cup",
         "table", "shirt", "near", "the", "with", "behind", "white", "black", "wooden")


@dataclass(frozen=True)
class BenchWorld:
    images: int = 600
    per_image: int = 7
    width: int = 640
    height: int = 480
    quality: int = 90
    seed: int = 0


def _image(rng: np.random.Generator, w: int, h: int, quality: int) -> bytes:
    """A photo-like JPEG: smooth gradients, noise and a few shapes (JPEG cost ~ content)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(xx / rng.uniform(20, 90) + c) * np.cos(yy / rng.uniform(20, 90))
                     for c in rng.uniform(0, 6, 3)], -1)
    pixels = (127 + 90 * base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(pixels)
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rng.integers(0, max(1, w - 60)), rng.integers(0, max(1, h - 60))
        draw.ellipse([x0, y0, x0 + rng.integers(20, 200), y0 + rng.integers(20, 200)],
                     fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_bench_world(uri: str, world: BenchWorld, **storage_options) -> dict:
    """Write the benchmark dataset (split ``val``) to ``uri``; returns the manifest."""
    rng = np.random.default_rng(world.seed)
    samples, images = [], []
    for i in range(world.images):
        image_id = f"bench-{i:06d}.jpg"
        storage.write_bytes(_image(rng, world.width, world.height, world.quality),
                            storage.join(uri, "files", image_id), **storage_options)
        images.append(dict(image_id=image_id, uri=f"files/{image_id}", width=world.width,
                           height=world.height))
        for k in range(world.per_image):
            x0, y0 = rng.uniform(0, world.width * 0.6), rng.uniform(0, world.height * 0.6)
            box = [x0, y0, x0 + rng.uniform(0.05, 0.4) * world.width,
                   y0 + rng.uniform(0.05, 0.4) * world.height]
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9))))
            samples.append(dict(sample_id=f"{image_id}-{k}", image_id=image_id, text=text,
                                box=box, source="gt", split="val", dataset="bench"))
    box_type = pa.list_(pa.float32(), 4)
    s_table = pa.Table.from_pylist(samples).cast(pa.schema(
        [pa.field(n, box_type if n == "box" else pa.string()) for n in samples[0]]))
    i_table = pa.Table.from_pylist(images).cast(pa.schema(
        [("image_id", pa.string()), ("uri", pa.string()), ("width", pa.int32()), ("height", pa.int32())]))
    ingest(uri, s_table, i_table, manifest=dict(kind="clipvg-dataset", dataset="bench",
                                                bench=asdict(world)), **storage_options)
    return storage.read_json(storage.join(uri, "manifest.json"), **storage_options)


def pil_ceiling(uri: str, size: int = 224, limit: int = 200, repeats: int = 3, **storage_options) -> dict:
    """Images/s of PIL decode + resize (long side to ``size``) on one core, from bytes in
    memory: the same decode (:func:`clipvg.data.fanout.decode`) and resize as the pipeline.
    Best of ``repeats`` passes (the machine's noise only ever slows a pass down)."""
    table = storage.read_table(storage.join(uri, "images"), **storage_options)
    blobs = [storage.read_bytes(storage.resolve(uri, u), **storage_options)
             for u in table.column("uri").to_pylist()[:limit]]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for data in blobs:
            im = decode(data)
            ratio = size / max(im.size)
            im.resize((round(im.width * ratio), round(im.height * ratio)), Image.BILINEAR)
        best = min(best, time.perf_counter() - start)
    return dict(images=len(blobs), seconds=best, images_per_s=len(blobs) / best)


def apply_rate(uri: str, *, limit: int = 40, batch_size: int = 64, repeats: int = 2,
               **storage_options) -> dict:
    """Samples/s of the apply step alone, on this process's threads (the benchmark gives it
    one), from images decoded beforehand (not timed) with every sample's params drawn (not
    timed): ``device`` = :func:`~clipvg.data.augment_torch.apply_batch` on the CPU (a stand-in
    for the accelerator, where it would run), batches of ``batch_size``, normalised float32;
    ``cpu`` = the PIL backend per sample + normalisation, for comparison. Best of ``repeats``."""
    samples = storage.read_table(storage.join(uri, "samples"), **storage_options)
    table = storage.read_table(storage.join(uri, "images"), **storage_options)
    uris = dict(zip(table.column("image_id").to_pylist(), table.column("uri").to_pylist()))
    boxes = np.asarray(samples.column("box").combine_chunks().flatten(), np.float64).reshape(-1, 4)
    images, pixels, params, index = {}, [], [], []
    for k, (image_id, text) in enumerate(zip(samples.column("image_id").to_pylist(),
                                             samples.column("text").to_pylist())):
        if image_id not in images:
            if len(images) == limit:
                continue
            images[image_id] = len(pixels)
            pixels.append(decode(storage.read_bytes(storage.resolve(uri, uris[image_id]), **storage_options)))
        im = pixels[images[image_id]]
        params.append(draw_params(im.size[0], im.size[1], boxes[k], text, AugmentConfig(),
                                  random.Random(k)))
        index.append(images[image_id])
    arrays = [np.array(im, np.uint8) for im in pixels]
    best = {"device": float("inf"), "cpu": float("inf")}
    for _ in range(repeats):
        start = time.perf_counter()
        for b in range(0, len(params), batch_size):
            apply_batch(arrays, params[b:b + batch_size], "cpu", image_index=index[b:b + batch_size])
        best["device"] = min(best["device"], time.perf_counter() - start)
        start = time.perf_counter()
        for b in range(0, len(params), batch_size):
            canvases = [train_sample(pixels[i], p, None) for i, p in zip(index[b:b + batch_size], params[b:b + batch_size])]
            normalize_images(torch.stack([c.image for c in canvases]), torch.stack([c.pixel_mask for c in canvases]))
        best["cpu"] = min(best["cpu"], time.perf_counter() - start)
    return dict(samples=len(params), images=len(pixels), seconds=best,
                samples_per_s={k: len(params) / v for k, v in best.items()})


def stream_rate(uri: str, *, per_sample: bool, train: bool, cpus: int, batch_size: int = 64,
                materialize: bool = True, epochs: int = 3, backend: str = "cpu", **storage_options) -> dict:
    """Samples/s per epoch of the streaming pipeline over split ``val`` of ``uri``: the plan
    (tables read, texts tokenized: once per run) is timed on its own, then ``epochs`` full
    passes; the best pass counts (as for the ceiling: noise only slows a pass down).

    ``materialize``: the consumer normalises and fans out float32 model batches on the CPU
    (:func:`~clipvg.distributed.streaming.iter_model_batches`; the device backend's apply step
    included, on the CPU); otherwise it takes the uint8 canvas (or image) rows as delivered
    (what a GPU trainer does before its device takes over). ``backend``: the training
    augmentation's (``data.augment.backend``).
    """
    spec = FanOutSpec(train=train, augment=AugmentConfig(backend=backend))
    start = time.perf_counter()
    plan = st.plan_split(uri, "val", spec, per_sample=per_sample, **storage_options)
    plan_seconds = time.perf_counter() - start
    image_rows = train and backend == "device"  # one row per image, a slot per expression
    per_group = 1 if (per_sample or (train and not image_rows)) else plan.max_per_image
    canvases = max(1, batch_size // per_group)  # about batch_size samples per fetch
    passes = []
    for epoch in range(epochs):
        report = st.StreamReport()
        start = time.perf_counter()
        ds = st.build_dataset(plan, dataclasses.replace(spec, epoch=epoch), num_cpus=1.0)  # ~19 MB blocks
        if materialize:
            batches = st.iter_model_batches(ds, plan.index(), batch_size=batch_size, report=report,
                                            canvases_per_fetch=canvases)
        else:
            batches = ds.iter_torch_batches(batch_size=canvases, collate_fn=st.CanvasBatches())
        samples = sum(len(b["sample_id"]) if materialize else int(b["ok"].sum()) for b in batches)
        passes.append(time.perf_counter() - start)
        if report.failed or samples != plan.num_samples:
            raise RuntimeError(f"benchmark stream lost rows: {samples} of {plan.num_samples}; "
                               f"{report.summary()}")
    best = min(passes)
    return dict(samples=plan.num_samples, plan_seconds=plan_seconds, pass_seconds=passes,
                samples_per_s=plan.num_samples / best,
                samples_per_s_per_core=plan.num_samples / best / cpus)
