"""Samples -> model batches for the local (single-process) engine.

The transforms produce one :class:`~clipvg.data.transforms.GroundingSample` per row; ``collate``
stacks them and tokenizes the texts in one call, giving the batch dict documented in
:mod:`clipvg.engine.steps`. Training batches drop the last partial batch and evaluation keeps it
(official ``drop_last`` policy, method doc §1.7).

With ``data.augment.backend: device`` a training item is a :class:`DrawnSample` instead (the
decoded uint8 pixels and the drawn :class:`~clipvg.data.augment.AugmentParams`), and ``collate``
applies the whole batch at once with :func:`clipvg.data.augment_torch.apply_batch` (on the
CPU, in the loader: the batch keys and dtypes stay those of the CPU backend).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler

from clipvg.config import Config, DataConfig
from clipvg.data.augment import AugmentParams, draw_params
from clipvg.data.augment_torch import apply_batch
from clipvg.data.dataset import GroundingDataset
from clipvg.data.pools import read_pool
from clipvg.data.storage import options_from_config
from clipvg.data.text import prepare_text, tokenize
from clipvg.data.transforms import eval_transform, train_transform
from clipvg.sources.synthetic.fresh import FreshWorld
from clipvg.sources.synthetic.scenes import write_world

log = logging.getLogger("clipvg.data")


class SampleTransform:
    """The per-sample transform of a split: training augmentation or eval preprocessing.

    Training randomness comes from one ``random.Random`` seeded by ``seed``, so a run is
    reproducible with ``loader_workers=0`` (with workers each one gets its own stream).
    """

    def __init__(self, data: DataConfig, size: int, train: bool, seed: int = 0):
        self.data, self.size, self.train = data, size, train
        self.rng = random.Random(seed)

    def __call__(self, image, box, text):
        text = prepare_text(text, self.data.prompt_template)
        if self.data.box_int_truncation:  # the official loader truncates raw boxes (§1.3)
            box = [float(int(v)) for v in box]
        if self.train and self.data.augment.backend == "device":
            image = image if image.mode == "RGB" else image.convert("RGB")
            params = draw_params(*image.size, box, text, self.data.augment, self.rng, self.size)
            return DrawnSample(np.array(image, np.uint8), params)  # writable, for torch
        if self.train:
            return train_transform(image, box, text, self.rng, self.data.augment, size=self.size)
        return eval_transform(image, box, text, size=self.size, normalize=self.data.augment.normalize)


@dataclass(frozen=True)
class DrawnSample:
    """A training sample of the device backend: (H, W, 3) uint8 pixels + its drawn params."""

    pixels: np.ndarray
    params: AugmentParams

    @property
    def text(self) -> str:
        return self.params.text


def _pixels(samples: list, normalize: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image (B,3,S,S) float32, pixel_mask (B,S,S) int32, target (B,4)) of a batch's samples."""
    if isinstance(samples[0], DrawnSample):
        out = apply_batch([s.pixels for s in samples], [s.params for s in samples], "cpu",
                          normalize=normalize)
        target = torch.from_numpy(np.stack([s.params.target for s in samples]))
        return out["image"], out["pixel_mask"], target
    return (torch.stack([s.image for s in samples]), torch.stack([s.pixel_mask for s in samples]),
            torch.stack([s.box for s in samples]))


def collate(items: list[tuple], context_length: int = 77, overflow: str = "truncate",
            expr_types: dict[str, str | None] | None = None,
            image_ids: dict[str, str] | None = None, normalize: str = "imagenet") -> dict:
    """Stack ``(GroundingSample, sample_id)`` items into a batch; tokenize all texts at once.

    ``expr_types`` maps sample ids to their expression type (for per-type accuracy),
    ``image_ids`` to their image (for the shuffled-text control; None where unknown, e.g. the
    fresh training stream, which no evaluation reads). :class:`DrawnSample` items (device
    backend) are applied here, as one batch, and normalised with ``normalize``.
    """
    samples = [sample for sample, _ in items]
    ids = [sample_id for _, sample_id in items]
    expr_types, image_ids = expr_types or {}, image_ids or {}
    tok = tokenize([s.text for s in samples], context_length=context_length, overflow=overflow)
    if tok.truncated:
        log.debug("%d expression(s) truncated to %d tokens", tok.truncated, context_length)
    image, pixel_mask, target = _pixels(samples, normalize)
    return {
        "image": image,
        "pixel_mask": pixel_mask,
        "tokens": tok.tokens,
        "token_mask": tok.token_mask,
        "target": target,
        "sample_id": ids,
        "expr_type": [expr_types.get(i) or "unknown" for i in ids],
        "image_id": [image_ids.get(i) for i in ids],
    }


def build_loader(cfg: Config, uri: str, split: str, train: bool, **storage_options) -> DataLoader:
    """A torch DataLoader over ``split`` of the dataset at ``uri`` (the train split: over
    ``data.train_pool``'s selected samples when the config has a pool)."""
    transform = SampleTransform(cfg.data, cfg.model.image_size, train, seed=cfg.train.seed)
    samples = None
    if train and cfg.data.train_pool:
        samples = read_pool(cfg.data.train_pool, **storage_options)
    dataset = GroundingDataset(uri, split, transform, official_boxes=cfg.data.box_int_truncation,
                               samples=samples, **storage_options)
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {uri} has no samples")
    expr_types = {r.sample_id: r.expr_type for r in dataset.records}
    image_ids = {r.sample_id: r.image_id for r in dataset.records}
    if train and cfg.data.fresh_train_images:  # with data.uri null: checked by clipvg.config

        dataset = FreshWorld(cfg.data.synth, cfg.data.seed, transform, epoch_samples=len(dataset),
                             easy_to_hard_epochs=cfg.data.easy_to_hard_epochs)
        expr_types = image_ids = None
    generator = torch.Generator().manual_seed(cfg.train.seed)
    sampler = None
    if train and cfg.train.samples_per_epoch and not isinstance(dataset, IterableDataset):
        # reshuffled passes over the data, cfg.train.samples_per_epoch samples per epoch
        sampler = RandomSampler(dataset, num_samples=cfg.train.samples_per_epoch, generator=generator)
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size if train else cfg.train.eval_batch_size,
        sampler=sampler,
        shuffle=train and sampler is None and not isinstance(dataset, IterableDataset),
        drop_last=train and (sampler is not None or len(dataset) >= cfg.train.batch_size),
        num_workers=cfg.data.loader_workers,
        collate_fn=partial(collate, context_length=cfg.model.context_length, overflow=cfg.data.text_overflow,
                           expr_types=expr_types, image_ids=image_ids, normalize=cfg.data.augment.normalize),
        generator=generator,
    )


def ensure_dataset(cfg: Config) -> str:
    """The dataset URI of ``cfg``: ``data.uri``, or the synthetic world, generated on first use
    under ``<storage.root>/worlds/seed<seed>-<size>px`` (shared by every run with that world)."""
    if cfg.data.uri is not None:
        return cfg.data.uri

    s = cfg.data.synth
    uri = (f"{cfg.storage.root.rstrip('/')}/worlds/seed{cfg.data.seed}-{s.image_size}px-"
           f"{s.train_images}-{s.val_images}-{s.test_images}-obj{s.min_objects}to{s.max_objects}")
    # write_world returns at once when an identical world (same manifest) is already there;
    # it goes to the run's storage (storage.endpoint_url etc.), like every other output
    write_world(uri, s, seed=cfg.data.seed, **options_from_config(cfg.storage))
    return uri
