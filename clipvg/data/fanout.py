"""Decode an image once, then turn each of its expressions into model-ready arrays.

The streaming pipeline (:mod:`clipvg.distributed.streaming`) calls these functions inside Ray
Data workers, but nothing here knows Ray: a *group* is one image with the sample rows that
refer to it (fan-out, the default), or one sample alone (``per_sample``, the official loader's
behaviour, kept for the benchmark).

A group becomes *canvas rows*. Evaluation letterboxes an image the same way for every one of
its expressions, so an eval group is ONE canvas row with up to K sample slots: the pixels
travel once, and the consumer fans them out (on its device). Training augments every sample on
its own, so each sample is a canvas row of its own (K = 1). Row layout (S = canvas side,
L = context length, K = slots)::

    image        (3, S, S)  uint8    letterboxed pixels, padding 0 (normalised on the consumer:
                                     clipvg.data.transforms.normalize_images)
    placed       (4,)       int32    top, left, height, width of the image pixels on the canvas
                                     (the padding mask is rebuilt from it: :func:`padding_mask`)
    sample_row   (K,)       int64    row of each slot in the split's samples table; -1 = unused
    ok           (K,)       bool     the slot holds data (False: unused, or failed - see error)
    target       (K, 4)     float32  (cx, cy, w, h) / S on the canvas
    tokens       (K, L)     int64    CLIP BPE ids (the token mask is ``tokens > 0``)
    image_id     str
    error        str                 "" or one line per failed slot: "<slot>\t<why>"

Training draws each sample's augmentation from a ``random.Random`` seeded by
(seed, epoch, sample_id), so a sample is augmented the same on any worker, in any order.

With ``augment.backend: device`` a training group is instead ONE *image row* (decode once,
ship once): the decoded pixels and, per slot, the drawn augmentation parameters; the consumer
applies them on its device (:func:`clipvg.data.augment_torch.apply_batch`). Image row layout::

    pixels       (H, W, 3)  uint8    the decoded image (sizes differ between rows: object column)
    params       (K, P)     float64  AugmentParams.to_vector() per slot (P = PARAM_LEN)
    sample_row, ok, target, tokens, image_id, error: as canvas rows
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, UnidentifiedImageError

from clipvg.config import AugmentConfig, Config
from clipvg.data.augment import PARAM_LEN, draw_params
from clipvg.data.text import prepare_text, tokenize
from clipvg.data.transforms import eval_canvas, train_transform


@dataclass(frozen=True)
class FanOutSpec:
    """Everything a worker needs to turn a group into rows (small and picklable)."""

    size: int = 224
    context_length: int = 77
    text_overflow: str = "truncate"
    prompt_template: str = "{}"
    train: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    epoch: int = 0
    slots: int = 1  # K: sample slots per canvas row (eval fan-out: most samples of an image)

    @classmethod
    def from_config(cls, cfg: Config, *, train: bool, epoch: int = 0) -> "FanOutSpec":
        return cls(size=cfg.model.image_size, context_length=cfg.model.context_length,
                   text_overflow=cfg.data.text_overflow, prompt_template=cfg.data.prompt_template,
                   train=train, augment=cfg.data.augment, seed=cfg.train.seed, epoch=epoch)


@dataclass(frozen=True)
class GroupRows:
    """The sample rows of one group (one image, or one sample in per-sample mode)."""

    rows: list[int]  # row indices in the split's samples table
    sample_ids: list[str]
    texts: list[str]
    boxes: np.ndarray  # (N, 4) float32 x0,y0,x1,y1 in original pixels (truncated if configured)
    expr_types: list[str]
    tokens: np.ndarray  # (N, L) int64, from tokenize_texts (the plan tokenizes once per run)
    text_errors: list[str]  # "" or why the text could not be tokenized


def loader_boxes(samples: pa.Table, int_truncation: bool) -> np.ndarray:
    """(N, 4) float32 boxes the transforms get: ``box``, or with the official integer
    truncation (method doc §1.3) ``box_trunc`` where the importer stored it (COCO's
    ``int(x) + int(w)`` differs from ``int(x + w)``), else every coordinate truncated."""
    column = "box_trunc" if int_truncation and "box_trunc" in samples.column_names else "box"
    boxes = np.asarray(samples.column(column).combine_chunks().flatten(), dtype=np.float32)
    boxes = boxes.reshape(-1, 4)
    return np.trunc(boxes) if int_truncation and column == "box" else boxes


def tokenize_texts(texts: list[str], spec: FanOutSpec, chunk: int = 512) -> tuple[np.ndarray, list[str]]:
    """(N, L) int64 token ids of ``texts`` (prompt template + lower-casing applied) and, per
    text, "" or why it cannot be tokenized (empty; too long with ``text_overflow=error``).

    The streaming plan calls this once per split and run, so workers never tokenize and an
    epoch does not pay for it again.
    """
    ids = np.zeros((len(texts), spec.context_length), np.int64)
    errors = [""] * len(texts)
    prepared = [prepare_text(t, spec.prompt_template) for t in texts]
    for start in range(0, len(prepared), chunk):
        part = prepared[start:start + chunk]
        try:
            ids[start:start + len(part)] = tokenize(part, spec.context_length, spec.text_overflow).tokens.numpy()
            continue
        except ValueError:
            pass  # find the bad texts one by one; the others still get their ids
        for k, text in enumerate(part, start):
            try:
                ids[k] = tokenize([text], spec.context_length, spec.text_overflow).tokens[0].numpy()
            except ValueError as exc:
                errors[k] = f"{type(exc).__name__}: {exc}"
    return ids, errors


def group_samples(samples: pa.Table, key: str, int_truncation: bool) -> dict[str, GroupRows]:
    """Group sample rows by ``key`` ("image_id" for fan-out, "sample_id" for per-sample).

    The table needs the columns ``tokens`` (L ints) and ``text_error`` of
    :func:`tokenize_texts` (added by the streaming plan), so workers never tokenize.
    """
    missing = {"tokens", "text_error"} - set(samples.column_names)
    if missing:
        raise ValueError(f"samples lack {sorted(missing)}: tokenize them first (tokenize_texts, "
                         "or clipvg.distributed.streaming.plan_split)")
    boxes = loader_boxes(samples, int_truncation)
    ids = samples.column("sample_id").to_pylist()
    texts = samples.column("text").to_pylist()
    keys = samples.column(key).to_pylist()
    types = (samples.column("expr_type").to_pylist() if "expr_type" in samples.column_names
             else [None] * len(ids))
    tokens = np.asarray(samples.column("tokens").combine_chunks().flatten(), np.int64).reshape(len(ids), -1)
    text_errors = samples.column("text_error").to_pylist()
    members: dict[str, list[int]] = {}
    for row, k in enumerate(keys):
        members.setdefault(k, []).append(row)
    return {
        k: GroupRows(rows, [ids[r] for r in rows], [texts[r] for r in rows], boxes[rows],
                     [types[r] or "unknown" for r in rows], tokens[rows],
                     [text_errors[r] for r in rows])
        for k, rows in members.items()
    }


def decode(data: bytes) -> Image.Image:
    """Encoded bytes -> fully decoded RGB image (a truncated file fails here, not later).

    An image that is RGB already is returned as decoded, without ``convert``'s copy.
    """
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:  # PIL's message names "<_io.BytesIO object at 0x...>"
        raise UnidentifiedImageError(f"not an image format PIL can identify ({len(data)} bytes)") from None
    im.load()
    return im if im.mode == "RGB" else im.convert("RGB")


def image_rows(spec: FanOutSpec) -> bool:
    """True when groups become image rows (device-backend training), else canvas rows."""
    return spec.train and spec.augment.backend == "device"


def _empty(spec: FanOutSpec, n: int) -> dict[str, np.ndarray]:
    """``n`` canvas (or image) rows with every slot unused."""
    s, k, length = spec.size, spec.slots, spec.context_length
    if image_rows(spec):
        pixels = np.empty(n, dtype=object)
        pixels[:] = [np.zeros((0, 0, 3), np.uint8) for _ in range(n)]
        head = dict(pixels=pixels, params=np.zeros((n, k, PARAM_LEN), np.float64))
    else:
        head = dict(image=np.zeros((n, 3, s, s), np.uint8), placed=np.zeros((n, 4), np.int32))
    return dict(
        **head,
        sample_row=np.full((n, k), -1, np.int64), ok=np.zeros((n, k), bool),
        target=np.zeros((n, k, 4), np.float32), tokens=np.zeros((n, k, length), np.int64),
        image_id=np.array([""] * n, dtype=object), error=np.array([""] * n, dtype=object),
    )


def placement(pixel_mask: np.ndarray) -> np.ndarray:
    """(S, S) padding mask (1 = padding) -> [top, left, height, width] of the image pixels:
    4 numbers instead of S*S bytes on the wire (the image is one rectangle on the canvas)."""
    rows, cols = np.flatnonzero(pixel_mask.min(1) == 0), np.flatnonzero(pixel_mask.min(0) == 0)
    return np.array([rows[0], cols[0], rows.size, cols.size], np.int32)


def padding_mask(placed, size: int):
    """Inverse of :func:`placement` for a batch: (B, 4) -> (B, S, S) bool, True = padding.
    Works on numpy arrays and torch tensors (on their device)."""
    top, left, height, width = (placed[:, i, None] for i in range(4))
    pos = np.arange(size) if isinstance(placed, np.ndarray) else torch.arange(size, device=placed.device)
    in_rows = (pos >= top) & (pos < top + height)  # (B, S)
    in_cols = (pos >= left) & (pos < left + width)
    return ~(in_rows[:, :, None] & in_cols[:, None, :])


def _eval_rows(image: Image.Image, rows: GroupRows, spec: FanOutSpec, image_id: str) -> dict:
    """One canvas row for the whole group: letterboxed once, K slots."""
    if len(rows.rows) > spec.slots:
        raise ValueError(f"image {image_id} has {len(rows.rows)} samples, more than {spec.slots} slots")
    out = _empty(spec, 1)
    canvas = eval_canvas(image, spec.size)
    out["image"][0], out["placed"][0] = canvas.image, placement(canvas.pixel_mask)
    out["image_id"][0] = image_id
    n = len(rows.rows)  # all slots at once
    targets, box_ok = canvas.targets(rows.boxes)
    text_ok = np.array([not e for e in rows.text_errors])
    out["sample_row"][0, :n] = rows.rows
    out["target"][0, :n] = targets
    out["tokens"][0, :n] = rows.tokens
    out["ok"][0, :n] = box_ok & text_ok
    out["error"][0] = "\n".join(
        f"{k}\t{rows.text_errors[k] or f'invalid box {rows.boxes[k].tolist()}'}"
        for k in np.flatnonzero(~out["ok"][0, :n]))
    return out


def _train_rows(image: Image.Image, rows: GroupRows, spec: FanOutSpec, image_id: str) -> dict:
    """One canvas row per sample (each has its own augmentation), slot 0."""
    n = len(rows.rows)
    out = _empty(spec, n)
    for r, (row, sid, box, text) in enumerate(zip(rows.rows, rows.sample_ids, rows.boxes, rows.texts)):
        out["image_id"][r] = image_id
        rng = random.Random(f"{spec.seed}:{spec.epoch}:{sid}")  # str seeds are stable across processes
        out["sample_row"][r, 0] = row
        if rows.text_errors[r]:
            out["error"][r] = f"0\t{rows.text_errors[r]}"
            continue
        try:
            sample = train_transform(image, box, prepare_text(text, spec.prompt_template), rng,
                                     spec.augment, size=spec.size, raw=True)
        except ValueError as exc:  # an invalid box
            out["error"][r] = f"0\t{type(exc).__name__}: {exc}"
            continue
        out["image"][r], out["placed"][r] = sample.image.numpy(), placement(sample.pixel_mask.numpy())
        out["target"][r, 0], out["tokens"][r, 0] = sample.box.numpy(), rows.tokens[r]
        out["ok"][r, 0] = True
    return out


def _image_rows(image: Image.Image, rows: GroupRows, spec: FanOutSpec, image_id: str) -> dict:
    """Device backend: ONE row for the group, the decoded pixels once plus each slot's drawn
    augmentation (the same draws as :func:`_train_rows`: same seeds, same order)."""
    n = len(rows.rows)
    if n > spec.slots:
        raise ValueError(f"image {image_id} has {n} samples, more than {spec.slots} slots")
    out = _empty(spec, 1)
    out["pixels"][0] = np.array(image, np.uint8)
    out["image_id"][0] = image_id
    errors = []
    for k, (row, sid, box, text) in enumerate(zip(rows.rows, rows.sample_ids, rows.boxes, rows.texts)):
        out["sample_row"][0, k] = row
        if rows.text_errors[k]:
            errors.append(f"{k}\t{rows.text_errors[k]}")
            continue
        rng = random.Random(f"{spec.seed}:{spec.epoch}:{sid}")  # as _train_rows
        try:
            params = draw_params(image.size[0], image.size[1], box, prepare_text(text, spec.prompt_template),
                                 spec.augment, rng, spec.size)
        except ValueError as exc:  # an invalid box
            errors.append(f"{k}\t{type(exc).__name__}: {exc}")
            continue
        out["params"][0, k], out["target"][0, k] = params.to_vector(), params.target
        out["tokens"][0, k], out["ok"][0, k] = rows.tokens[k], True
    out["error"][0] = "\n".join(errors)
    return out


def fan_out(image: Image.Image | None, rows: GroupRows, spec: FanOutSpec, image_id: str,
            failure: str = "") -> dict[str, np.ndarray]:
    """The canvas (or image) rows of one group; ``image=None`` with ``failure`` gives one row
    whose slots all failed (so every sample of the group is reported, none lost)."""
    if image is not None:
        build = _image_rows if image_rows(spec) else _train_rows if spec.train else _eval_rows
        return build(image, rows, spec, image_id)
    n, k = (len(rows.rows), 1) if spec.slots == 1 else (1, len(rows.rows))
    out = _empty(spec, n)
    out["sample_row"][:, :k] = np.asarray(rows.rows, np.int64).reshape(n, k)
    out["image_id"][:] = image_id
    out["error"][:] = ["\n".join(f"{j}\t{failure}" for j in range(k))] * n
    return out


def concat_rows(parts: list[dict[str, np.ndarray]], spec: FanOutSpec) -> dict[str, np.ndarray]:
    """Stack the canvas rows of several groups (none: zero rows with the right shapes)."""
    if not parts:
        return _empty(spec, 0)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
