"""Ray Data: stream a split of a dataset at a URI into model batches, decoding each image once.

Plan (driver, :func:`plan_split`): read the split's sample rows and the images table *without*
its ``bytes`` column (Parquet reads only the columns asked for), and decide one input row per
*group*: an image with all of its expressions (fan-out, the default) or, for the benchmark's
comparison with the official loader, one sample (``per_sample``).

Dataset (workers, :func:`build_dataset`): input rows -> ``map_batches`` that fetches each
group's image (a file under the dataset root / any URI, or the ``bytes`` column of packed
Parquet shards, read by Ray Data's Parquet reader), decodes it once, and turns it into *canvas
rows* with :mod:`clipvg.data.fanout`: for evaluation one uint8 canvas per image with a slot per
expression (the pixels cross the object store once, not once per expression, and 4x smaller
than float32); for training one canvas per sample (each has its own augmentation). The samples
of the split reach the workers once, as one object in the object store, not once per task.

Batches (consumer, :func:`iter_model_batches`): ``iter_torch_batches`` of canvas rows ->
normalise each canvas once on the consumer's device -> fan the slots out into the batch dict of
:mod:`clipvg.engine.steps`, exactly ``batch_size`` samples per batch (the last may be smaller).
Slots whose image could not be read (object deleted, network error after the client's retries,
corrupt bytes) arrive marked failed: they are left out of the batches and counted in a
:class:`StreamReport` with their ids, never raised from inside a worker.

Evaluation must see every row once: with several consumers use :func:`split_for_consumers`
(``streaming_split(equal=False)``; ``equal=True`` drops tail rows) and check the reports with
:func:`check_complete`.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data.expressions
from ray.data.collate_fn import NumpyBatchCollateFn
import torch

from clipvg.data import storage
from clipvg.data.augment import AugmentParams
from clipvg.data.augment_torch import apply_batch
from clipvg.data.fanout import (FanOutSpec, concat_rows, decode, fan_out, group_samples, image_rows,
                                padding_mask, tokenize_texts)
from clipvg.data.schema import SAMPLES, validate_table
from clipvg.data.transforms import normalize_images

SAMPLE_COLUMNS = ("sample_id", "image_id", "text", "box", "box_trunc", "expr_type")


@dataclass
class StreamPlan:
    """What a split streams: its samples and one input row per group (see module doc)."""

    root: str
    split: str
    samples: pa.Table  # the split's sample rows (SAMPLE_COLUMNS present in the table)
    inputs: pa.Table  # image_id, uri (null: packed or unknown) [, sample_id when per_sample]
    packed_parts: list[str]  # Parquet parts holding image bytes (empty when images are files)
    per_sample: bool
    unknown_images: list[str] = field(default_factory=list)  # referenced, not in the images table
    text_key: tuple = ()  # (context length, prompt template, overflow) the texts were tokenized with
    image_columns: tuple = ("image_id",)  # columns of the images table a worker reads (+ bytes)
    storage_options: dict = field(default_factory=dict)
    _samples_ref: Any = field(default=None, repr=False)
    _index: Any = field(default=None, repr=False)  # SampleIndex, built on first use

    def samples_ref(self) -> "ray.ObjectRef":
        """The samples in the object store, put once per plan: every epoch's dataset shares
        it, so workers group the rows once per run, not once per epoch."""
        if self._samples_ref is None:
            self._samples_ref = ray.put(self.samples)
        return self._samples_ref

    @property
    def num_samples(self) -> int:
        return self.samples.num_rows

    @property
    def num_images(self) -> int:
        return len(set(self.samples.column("image_id").to_pylist()))

    @property
    def max_per_image(self) -> int:
        """The most samples one image has in this split (the slots of an eval canvas row)."""
        counts = pc.value_counts(self.samples.column("image_id")).field("counts")
        return max(1, pc.max(counts).as_py() or 1)

    def index(self) -> "SampleIndex":
        """What a consumer needs to name the slots it receives (small; ship it to workers).
        Built once per plan: a trainer asks for it every epoch and every evaluation."""
        if self._index is None:
            types = (self.samples.column("expr_type").to_pylist() if "expr_type" in self.samples.column_names
                     else [None] * self.num_samples)
            self._index = SampleIndex(self.samples.column("sample_id").to_pylist(),
                                      [t or "unknown" for t in types])
        return self._index

    def samples_per_input(self) -> np.ndarray:
        """How many samples of the split each input row (image) carries, in ``inputs`` order."""
        counts = pc.value_counts(self.samples.column("image_id")).flatten()
        by_image = dict(zip(*(c.to_pylist() for c in counts)))
        return np.array([by_image.get(i, 0) for i in self.inputs.column("image_id").to_pylist()])


@dataclass(frozen=True)
class SampleIndex:
    """sample_id and expression type of every row of a split (slots carry row numbers)."""

    sample_ids: list[str]
    expr_types: list[str]


def plan_split(root: str, split: str, spec: FanOutSpec | None = None, *, per_sample: bool = False,
               samples: pa.Table | None = None, **storage_options: Any) -> StreamPlan:
    """Read the sample rows of ``split`` and the image locations (driver side, no image bytes),
    and tokenize the split's texts once for the whole run (``spec``'s context length, prompt
    template and overflow policy; default :class:`FanOutSpec`). Build the plan once and stream
    it for every epoch. ``samples``: stream these rows (e.g. a curriculum's training pool, whose
    images are the dataset's) instead of the split's rows of ``<root>/samples``."""
    spec = spec or FanOutSpec()
    where = storage.join(root, "samples")
    if samples is None:
        samples = storage.read_table(where, filter=pc.field("split") == split, **storage_options)
    else:
        where = f"the samples given for {split!r}"
    validate_table(samples, SAMPLES, where=where)
    if samples.num_rows == 0:
        raise KeyError(f"split {split!r} has no samples in {where}")
    samples = samples.select([c for c in SAMPLE_COLUMNS if c in samples.column_names])
    tokens, text_errors = tokenize_texts(samples.column("text").to_pylist(), spec)
    samples = samples.append_column("tokens", pa.FixedSizeListArray.from_arrays(
        pa.array(tokens.reshape(-1)), spec.context_length))
    samples = samples.append_column("text_error", pa.array(text_errors, pa.string()))
    images_uri = storage.join(root, "images")
    schema = storage.table_schema(images_uri, **storage_options)
    columns = ["image_id"] + (["uri"] if "uri" in schema.names else [])
    images = storage.read_table(images_uri, columns=columns, **storage_options)
    uri_of = dict(zip(images.column("image_id").to_pylist(),
                      images.column("uri").to_pylist() if "uri" in columns else [None] * images.num_rows))
    packed = (storage.list_parts(images_uri, **storage_options)
              if storage.has_values(images_uri, "bytes", **storage_options) else [])
    if packed and per_sample:
        raise ValueError("per-sample decoding reads image files; this dataset packs its images")
    image_ids = samples.column("image_id").to_pylist()
    if not per_sample:
        image_ids = list(dict.fromkeys(image_ids))  # one input row per distinct image
    inputs = pa.table({"image_id": pa.array(image_ids, pa.string()),
                       "uri": pa.array([uri_of.get(i) for i in image_ids], pa.string())})
    if per_sample:
        inputs = inputs.append_column("sample_id", samples.column("sample_id"))
    unknown = sorted({i for i in image_ids if i not in uri_of})
    return StreamPlan(root, split, samples, inputs, packed, per_sample, unknown_images=unknown,
                      text_key=_text_key(spec), image_columns=tuple(columns),
                      storage_options=dict(storage_options))


def _text_key(spec: FanOutSpec) -> tuple:
    return (spec.context_length, spec.prompt_template, spec.text_overflow)


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------

_GROUPS: dict[str, dict] = {}  # per worker process: samples object id -> grouped rows
_GROUPS_LOCK = threading.Lock()


def _groups(ref_box: list, key: str, int_truncation: bool) -> dict:
    """The grouped sample rows, fetched from the object store once per worker process."""
    ref = ref_box[0]  # boxed in a list so Ray hands the ref over instead of resolving it per task
    cache_key = f"{ref.hex()}:{key}:{int_truncation}"
    with _GROUPS_LOCK:
        if cache_key not in _GROUPS:
            _GROUPS.clear()  # one split at a time per worker keeps memory flat
            _GROUPS[cache_key] = group_samples(ray.get(ref), key, int_truncation)
        return _GROUPS[cache_key]


def _fetch(root: str, uri: str | None, data: bytes | None, options: dict) -> bytes:
    if data is not None:
        return data
    if uri is None:
        raise LookupError("no uri and no bytes: image_id missing from the images table?")
    return storage.read_bytes(storage.resolve(root, uri), **options)


def _decode_batch(batch: dict[str, np.ndarray], *, spec: FanOutSpec, samples: list, key: str,
                  int_truncation: bool, root: str, storage_options: dict) -> dict[str, np.ndarray]:
    """map_batches UDF: input group rows -> canvas rows (see clipvg.data.fanout)."""
    groups = _groups(samples, key, int_truncation)
    n = len(batch["image_id"])
    column = lambda name: batch[name] if name in batch else [None] * n  # noqa: E731
    parts = []
    for group, image_id, uri, data in zip(batch[key], batch["image_id"], column("uri"),
                                          column("bytes")):
        rows = groups.get(group)
        if rows is None:  # a packed shard holds images of other splits too
            continue
        try:
            image = decode(_fetch(root, uri, data, storage_options))
        except Exception as exc:  # noqa: BLE001 - any read/decode failure becomes error rows
            where = storage.resolve(root, uri) if uri else f"image {image_id}"
            parts.append(fan_out(None, rows, spec, image_id, f"{where}: {type(exc).__name__}: {exc}"))
            continue
        parts.append(fan_out(image, rows, spec, image_id))
    return concat_rows(parts, spec)


def build_dataset(plan: StreamPlan, spec: FanOutSpec, *, int_truncation: bool = True,
                  canvases_per_block: int = 128, groups_per_block: int | None = None,
                  groups_per_call: int | None = None, num_cpus: float = 1.0,
                  concurrency: int | None = None, resources: dict | None = None) -> "ray.data.Dataset":
    """The Ray Dataset of canvas rows for ``plan`` (see module doc); consume it with
    :func:`iter_model_batches` and ``plan.index()``.

    Training shuffles the groups (images) with (seed, epoch) before streaming; consumers add a
    local shuffle buffer so one image's expressions spread over several batches. A group is an
    image (or a sample with ``per_sample``); a block of groups is one Ray task, sized to about
    ``canvases_per_block`` canvas rows (128 at 224 px = 19 MB) unless ``groups_per_block`` is
    given, and decoded a quarter block (``groups_per_call``) at a time. Small blocks cost: tasks
    of 8 images streamed at ~60% of the rate of tasks of 64 (measured, 1 CPU).
    """
    if _text_key(spec) != plan.text_key:
        raise ValueError(f"the plan tokenized its texts for (context, template, overflow) = "
                         f"{plan.text_key}, the spec asks for {_text_key(spec)}: plan with the same spec")
    key = "sample_id" if plan.per_sample else "image_id"
    # image rows (device-backend training) carry a slot per expression, as eval canvas rows
    slots = 1 if ((spec.train and not image_rows(spec)) or plan.per_sample) else plan.max_per_image
    canvases_per_group = (plan.num_samples / plan.num_images
                          if (spec.train and not image_rows(spec) and not plan.per_sample) else 1)
    groups_per_block = groups_per_block or max(1, round(canvases_per_block / canvases_per_group))
    groups_per_call = groups_per_call or max(1, groups_per_block // 4)
    spec = dataclasses.replace(spec, slots=slots)
    inputs = plan.inputs
    if spec.train:
        order = np.random.default_rng([spec.seed, spec.epoch]).permutation(inputs.num_rows)
        inputs = inputs.take(pa.array(order))
    remote = task_resources(resources)
    if plan.packed_parts:
        ds = _packed_inputs(plan, inputs, num_cpus, remote)
    else:
        blocks = [inputs.slice(i, groups_per_block) for i in range(0, inputs.num_rows, groups_per_block)]
        # from_blocks computes block metadata here; from_arrow runs a 1-CPU task per block,
        # which never schedules next to a fractional-CPU train worker on a 1-CPU node
        ds = ray.data.from_blocks(blocks)
    return ds.map_batches(
        _decode_batch, batch_size=groups_per_call, num_cpus=num_cpus, concurrency=concurrency,
        batch_format="numpy", zero_copy_batch=True, **remote,
        fn_kwargs=dict(spec=spec, samples=[plan.samples_ref()], key=key, int_truncation=int_truncation,
                       root=plan.root, storage_options=plan.storage_options),
    )


def task_resources(resources: dict | None) -> dict:
    """Ray remote arguments that ask for ``resources`` (custom resources such as
    ``{clipvg_data: 1}``; see ``scaling.data_resources``), or none."""
    return {"resources": dict(resources)} if resources else {}


def _packed_inputs(plan: StreamPlan, inputs: pa.Table, num_cpus: float, remote: dict) -> "ray.data.Dataset":
    """Packed images: Ray Data reads the shards (only this split's rows); images the table
    lacks become inputs of their own so their samples are reported, not lost."""
    fs, _ = storage.pyarrow_filesystem(plan.root, **plan.storage_options)
    columns = [*plan.image_columns, "bytes"]
    wanted = inputs.column("image_id").to_pylist()
    ds = ray.data.read_parquet(plan.packed_parts, filesystem=fs, num_cpus=num_cpus, ray_remote_args=remote)
    ds = ds.select_columns(columns).filter(expr=ray.data.expressions.col("image_id").is_in(wanted),
                                           num_cpus=num_cpus, **remote)
    unknown = plan.unknown_images
    if unknown:  # same columns as the shards, so blocks concatenate
        ds = ds.union(ray.data.from_blocks([pa.table(
            {c: pa.array(unknown if c == "image_id" else [None] * len(unknown),
                         pa.binary() if c == "bytes" else pa.string()) for c in columns})]))
    return ds


# --------------------------------------------------------------------------------------------
# Consumers
# --------------------------------------------------------------------------------------------


@dataclass
class StreamReport:
    """What a consumer received: good samples, and the samples that had no data, with why."""

    rows: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (sample_id, image_id, error)
    sample_ids: list[str] | None = None  # every good sample's id, when asked for (evaluation)

    def summary(self) -> str:
        if not self.failed:
            return f"{self.rows} samples streamed"
        images = sorted({image for _, image, _ in self.failed})
        first = self.failed[0]
        return (f"{self.rows} samples streamed; {len(self.failed)} skipped from {len(images)} "
                f"image(s) that could not be read, e.g. {first[0]} ({first[2]})")


class CanvasBatches(NumpyBatchCollateFn):
    """iter_torch_batches collate_fn for canvas rows: numeric columns -> tensors, string
    columns -> lists (what :func:`iter_model_batches` fans out).

    Ray hands out read-only zero-copy arrays; the tensors are only read (normalisation and
    slot selection make new ones), so torch's non-writable warning is silenced, not a copy made.
    """

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return {k: (torch.from_numpy(np.ascontiguousarray(v)) if v.dtype != object else v.tolist())
                    for k, v in batch.items()}


def _record_failures(raw: dict, index: SampleIndex, report: StreamReport) -> None:
    for r, lines in enumerate(raw["error"]):
        for line in filter(None, lines.split("\n")):
            slot, why = line.split("\t", 1)
            row = int(raw["sample_row"][r, int(slot)])
            report.failed.append((index.sample_ids[row], raw["image_id"][r], why))


def _apply_slots(raw: dict, index: SampleIndex, normalize: str, device) -> dict | None:
    """Image rows (device backend) -> per-sample tensors: each slot's drawn augmentation applied
    on ``device`` to its row's pixels (shipped once per image)."""
    row, slot = raw["ok"].nonzero(as_tuple=True)
    if row.numel() == 0:
        return None
    params = [AugmentParams.from_vector(v) for v in raw["params"][row, slot].tolist()]
    with warnings.catch_warnings():  # Ray's zero-copy arrays are read-only; they are only read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        pixels = [torch.as_tensor(p) for p in raw["pixels"]]
    out = apply_batch(pixels, params, device, image_index=row.tolist(), normalize=normalize)
    rows = raw["sample_row"][row, slot].tolist()
    tokens = raw["tokens"][row, slot].to(device)
    return dict(
        image=out["image"], pixel_mask=out["pixel_mask"].to(torch.int64),
        tokens=tokens, token_mask=(tokens > 0).to(torch.int64),
        target=raw["target"][row, slot].to(device),
        sample_id=[index.sample_ids[r] for r in rows], expr_type=[index.expr_types[r] for r in rows],
        image_id=[raw["image_id"][c] for c in row.tolist()],
    )


def _fan_out_slots(raw: dict, index: SampleIndex, normalize: str, device) -> dict | None:
    """Canvas rows -> per-sample tensors: each canvas normalised once, then gathered per slot."""
    if "pixels" in raw:
        return _apply_slots(raw, index, normalize, device)
    canvas, slot = raw["ok"].nonzero(as_tuple=True)
    if canvas.numel() == 0:
        return None
    mask = padding_mask(raw["placed"].to(device, non_blocking=True), raw["image"].shape[-1])
    images = normalize_images(raw["image"].to(device, non_blocking=True), mask, normalize)
    rows = raw["sample_row"][canvas, slot].tolist()
    at = canvas.to(device)
    tokens = raw["tokens"][canvas, slot].to(device)
    return dict(
        image=images.index_select(0, at), pixel_mask=mask.index_select(0, at).to(torch.int64),
        tokens=tokens, token_mask=(tokens > 0).to(torch.int64),  # official rule: id > 0
        target=raw["target"][canvas, slot].to(device),
        sample_id=[index.sample_ids[r] for r in rows], expr_type=[index.expr_types[r] for r in rows],
        image_id=[raw["image_id"][c] for c in canvas.tolist()],  # the shuffled-text control needs it
    )


def _cat(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return {k: torch.cat([a[k], b[k]]) if torch.is_tensor(b[k]) else a[k] + b[k] for k in b}


def _take(batch: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in batch.items()}


def iter_model_batches(source: Any, index: SampleIndex, *, batch_size: int,
                       normalize: str = "imagenet", device: torch.device | str = "cpu",
                       drop_last: bool = False, shuffle_buffer: int | None = None,
                       seed: int | None = None, report: StreamReport | None = None,
                       keep_ids: bool = False, canvases_per_fetch: int | None = None) -> Iterator[dict]:
    """Model batches (see :mod:`clipvg.engine.steps`) from a Dataset or DataIterator shard of
    canvas rows: exactly ``batch_size`` samples each, except a smaller last one (dropped with
    ``drop_last``). Failed slots are left out and recorded in ``report``; ``keep_ids`` also
    records every good sample's id (exactly-once checks). ``index``: :meth:`StreamPlan.index`.
    """
    report = report if report is not None else StreamReport()
    if keep_ids and report.sample_ids is None:
        report.sample_ids = []
    carry = None
    fetch = canvases_per_fetch or batch_size
    for raw in source.iter_torch_batches(batch_size=fetch, collate_fn=CanvasBatches(),
                                         local_shuffle_buffer_size=shuffle_buffer,
                                         local_shuffle_seed=seed):
        _record_failures(raw, index, report)
        samples = _fan_out_slots(raw, index, normalize, device)
        if samples is None:
            continue
        carry = _cat(carry, samples)
        while len(carry["sample_id"]) >= batch_size:
            yield _account(_take(carry, 0, batch_size), report, keep_ids)
            carry = _take(carry, batch_size, len(carry["sample_id"]))
    if carry is not None and len(carry["sample_id"]) and not drop_last:
        yield _account(carry, report, keep_ids)


def _account(batch: dict, report: StreamReport, keep_ids: bool) -> dict:
    report.rows += len(batch["sample_id"])
    if keep_ids:
        report.sample_ids.extend(batch["sample_id"])
    return batch


def split_for_consumers(ds: "ray.data.Dataset", n: int) -> list:
    """``n`` iterators that together yield every row exactly once (no tail rows dropped)."""
    return ds.streaming_split(n, equal=False)


def check_complete(plan: StreamPlan, reports: Iterable[StreamReport]) -> None:
    """Raise if the consumers did not see every sample of ``plan`` exactly once."""
    reports = list(reports)
    seen = [sid for r in reports for sid in (r.sample_ids or [])] + [f[0] for r in reports for f in r.failed]
    expected = plan.samples.column("sample_id").to_pylist()
    if len(seen) != len(expected) or set(seen) != set(expected):
        missing = sorted(set(expected) - set(seen))[:5]
        dupes = len(seen) - len(set(seen))
        raise RuntimeError(f"split {plan.split!r} of {plan.root}: expected {len(expected)} rows, "
                           f"consumers saw {len(seen)} ({dupes} duplicate(s); missing e.g. {missing})")
