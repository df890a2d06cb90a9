"""Decode an image once, then turn each of its expressions into model-ready arrays.

The streaming pipeline (:mod:`clipvg.distributed.streaming`) calls these functions inside Ray
Data workers, but nothing here knows Ray: a *group* is one image with the sample rows that
refer to it (fan-out, the default), or one sample alone (``per_sample``, the official loader's
behaviour, kept for the benchmark).

Output rows (N = samples of the group, S = canvas side, L = context length)::

    image        (N, 3, S, S) uint8   letterboxed pixels, padding 0 (normalised on the consumer:
                                      clipvg.data.transforms.normalize_images)
    pixel_mask   (N, S, S)    uint8   1 = padding
    tokens       (N, L)       int64   CLIP BPE ids;  token_mask (N, L) int64, 1 = real token
    target       (N, 4)       float32 (cx, cy, w, h) / S on the canvas
    sample_id, image_id, expr_type    str
    error        str                  "" when the row is good; otherwise why it has no data
                                      (its arrays are zeros and consumers drop and report it)

Evaluation is deterministic and shared by the group: the image is resized and letterboxed once
(:func:`~clipvg.data.transforms.eval_canvas`) and only the box differs per expression. Training
augments every sample on its own, from a ``random.Random`` seeded by (seed, epoch, sample_id),
so a sample gets the same augmentation on any worker in any order.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image

from clipvg.config import AugmentConfig, Config
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

    @classmethod
    def from_config(cls, cfg: Config, *, train: bool, epoch: int = 0) -> "FanOutSpec":
        return cls(size=cfg.model.image_size, context_length=cfg.model.context_length,
                   text_overflow=cfg.data.text_overflow, prompt_template=cfg.data.prompt_template,
                   train=train, augment=cfg.data.augment, seed=cfg.train.seed, epoch=epoch)


@dataclass(frozen=True)
class GroupRows:
    """The sample rows of one group (one image, or one sample in per-sample mode)."""

    sample_ids: list[str]
    texts: list[str]
    boxes: np.ndarray  # (N, 4) float32 x0,y0,x1,y1 in original pixels (truncated if configured)
    expr_types: list[str]


def loader_boxes(samples: pa.Table, int_truncation: bool) -> np.ndarray:
    """(N, 4) float32 boxes the transforms get: ``box``, or with the official integer
    truncation (method doc §1.3) ``box_trunc`` where the importer stored it (COCO's
    ``int(x) + int(w)`` differs from ``int(x + w)``), else every coordinate truncated."""
    column = "box_trunc" if int_truncation and "box_trunc" in samples.column_names else "box"
    boxes = np.asarray(samples.column(column).combine_chunks().flatten(), dtype=np.float32)
    boxes = boxes.reshape(-1, 4)
    return np.trunc(boxes) if int_truncation and column == "box" else boxes


def group_samples(samples: pa.Table, key: str, int_truncation: bool) -> dict[str, GroupRows]:
    """Group sample rows by ``key`` ("image_id" for fan-out, "sample_id" for per-sample)."""
    boxes = loader_boxes(samples, int_truncation)
    ids = samples.column("sample_id").to_pylist()
    texts = samples.column("text").to_pylist()
    keys = samples.column(key).to_pylist()
    types = (samples.column("expr_type").to_pylist() if "expr_type" in samples.column_names
             else [None] * len(ids))
    members: dict[str, list[int]] = {}
    for row, k in enumerate(keys):
        members.setdefault(k, []).append(row)
    return {
        k: GroupRows([ids[r] for r in rows], [texts[r] for r in rows], boxes[rows],
                     [types[r] or "unknown" for r in rows])
        for k, rows in members.items()
    }


def decode(data: bytes) -> Image.Image:
    """Encoded bytes -> fully decoded RGB image (a truncated file fails here, not later)."""
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def _empty(spec: FanOutSpec, n: int) -> dict[str, np.ndarray]:
    s, length = spec.size, spec.context_length
    return dict(
        image=np.zeros((n, 3, s, s), np.uint8), pixel_mask=np.ones((n, s, s), np.uint8),
        tokens=np.zeros((n, length), np.int64), token_mask=np.zeros((n, length), np.int64),
        target=np.zeros((n, 4), np.float32),
    )


def _tokenize(texts: list[str], spec: FanOutSpec, out: dict, errors: list[str]) -> None:
    """Tokenize into ``out``; a text that fails (empty, or too long with overflow=error)
    marks only its own row."""
    prepared = [prepare_text(t, spec.prompt_template) for t in texts]
    for i, text in enumerate(prepared):
        if errors[i]:
            continue
        try:
            tok = tokenize([text], spec.context_length, spec.text_overflow)
        except ValueError as exc:
            errors[i] = f"text: {exc}"
            continue
        out["tokens"][i], out["token_mask"][i] = tok.tokens[0].numpy(), tok.token_mask[0].numpy()


def _place_eval(image: Image.Image, rows: GroupRows, spec: FanOutSpec, out: dict, errors: list) -> None:
    canvas = eval_canvas(image, spec.size)  # once for the whole group
    for i, box in enumerate(rows.boxes):
        try:
            out["target"][i] = canvas.target(box)
        except ValueError as exc:
            errors[i] = f"box: {exc}"
            continue
        out["image"][i], out["pixel_mask"][i] = canvas.image, canvas.pixel_mask


def _place_train(image: Image.Image, rows: GroupRows, spec: FanOutSpec, out: dict, errors: list) -> None:
    for i, (sid, box, text) in enumerate(zip(rows.sample_ids, rows.boxes, rows.texts)):
        rng = random.Random(f"{spec.seed}:{spec.epoch}:{sid}")  # str seeds are stable across processes
        try:
            sample = train_transform(image, box, prepare_text(text, spec.prompt_template), rng,
                                     spec.augment, size=spec.size, raw=True)
        except ValueError as exc:
            errors[i] = f"box: {exc}"
            continue
        out["image"][i], out["pixel_mask"][i] = sample.image.numpy(), sample.pixel_mask.numpy()
        out["target"][i] = sample.box.numpy()


def fan_out(image: Image.Image | None, rows: GroupRows, spec: FanOutSpec, image_id: str,
            failure: str = "") -> dict[str, np.ndarray]:
    """The output rows of one group; ``image=None`` with ``failure`` gives error rows."""
    n = len(rows.sample_ids)
    out = _empty(spec, n)
    errors = [failure] * n
    if image is not None:
        (_place_train if spec.train else _place_eval)(image, rows, spec, out, errors)
        _tokenize(rows.texts, spec, out, errors)
    out["sample_id"] = np.array(rows.sample_ids, dtype=object)
    out["image_id"] = np.array([image_id] * n, dtype=object)
    out["expr_type"] = np.array(rows.expr_types, dtype=object)
    out["error"] = np.array(errors, dtype=object)
    return out


def concat_rows(parts: list[dict[str, np.ndarray]], spec: FanOutSpec) -> dict[str, np.ndarray]:
    """Stack the rows of several groups (an empty list gives zero rows with the right shapes)."""
    if not parts:
        out = _empty(spec, 0)
        for k in ("sample_id", "image_id", "expr_type", "error"):
            out[k] = np.array([], dtype=object)
        return out
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
