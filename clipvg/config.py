"""One typed, validated run configuration for every clipvg entry point.

A config is a tree of dataclasses (sections ``data``, ``model``, ``train``, ``curriculum``,
``scaling``, ``storage``). It is loaded from YAML and then patched with dotted command-line
overrides such as ``train.epochs=3`` or ``model.fusion.layers=2``. Unknown keys and values of the
wrong type are errors that name the offending key, so a typo never silently falls back to a
default. The resolved config is written next to every output (:func:`save_config`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or holds an invalid value."""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """Training augmentation switches (method doc §1.5). Defaults = the official scripts."""

    scale: bool = True  # long side drawn from [224, 192, ..., 32] (scaled to the canvas)
    crop: bool = True  # resize-crop-resize with p=0.5, disabled by spatial words
    translate: bool = True  # random placement on the padded canvas instead of centring
    color: bool = True  # brightness/contrast/saturation jitter with p=0.8
    blur: bool = False  # Gaussian blur p=0.5 (off in every official script)
    normalize: Literal["imagenet", "clip"] = "imagenet"  # official: ImageNet statistics


@dataclass
class SynthConfig:
    """Shape of the synthetic grounding world (see :mod:`clipvg.data.synthetic`)."""

    image_size: int = 224  # side of the generated square images, in pixels
    min_objects: int = 3
    max_objects: int = 6
    train_images: int = 2000
    val_images: int = 200
    test_images: int = 200


@dataclass
class DataConfig:
    """Where samples come from and how they are turned into model inputs."""

    uri: str | None = None  # dataset root; None = the synthetic world under storage.root
    seed: int = 0  # seed of the synthetic world
    train_split: str = "train"
    val_split: str = "val"
    test_splits: list[str] = field(default_factory=lambda: ["test"])
    text_overflow: Literal["truncate", "error"] = "truncate"  # expressions > 75 BPE tokens
    prompt_template: str = "{}"  # official default: the expression itself
    box_int_truncation: bool = True  # official loader truncates raw boxes to integers
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    loader_workers: int = 0  # torch DataLoader workers in the local engine


@dataclass
class FusionConfig:
    """The vision-language transformer (DETR post-norm encoder) and its [REG] token."""

    d_model: int | None = None  # None = the towers' embed_dim (official: the text width)
    layers: int = 6
    heads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    layernorm_eps: float = 1e-5


@dataclass
class ModelConfig:
    """CLIP-VG on open_clip towers.

    ``arch`` is an open_clip model name ("ViT-B-16") or an inline open_clip model config dict
    ``{embed_dim, vision_cfg, text_cfg}`` (tests and the demo use tiny towers this way).
    """

    arch: Union[str, dict] = "ViT-B-16"
    quick_gelu: bool = True  # OpenAI CLIP, hence official CLIP-VG, uses QuickGELU
    pretrained: str | None = None  # open_clip pretrained tag, e.g. "openai" (needs the hub)
    weights: str | None = None  # local CLIP tower weights file, for clusters without internet
    image_size: int = 224
    context_length: int = 77
    taps: list[int] | None = None  # visual blocks to tap; None = per-backbone default
    fusion: FusionConfig = field(default_factory=FusionConfig)
    freeze: Literal["official", "all", "none"] = "official"
    patch_mask: Literal["official", "antialias"] = "official"


@dataclass
class TrainConfig:
    """The optimisation recipe (method doc §3). Defaults = the official recipe."""

    epochs: int = 110
    batch_size: int = 64  # per worker
    eval_batch_size: int = 128
    lr: float = 2.5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 0  # official: none
    schedule: Literal["cosine_epoch", "cosine_step", "constant"] = "cosine_epoch"
    clip_grad_norm: float = 0.0  # official: no clipping
    seed: int = 13
    log_every: int = 10  # steps
    max_steps_per_epoch: int | None = None  # cap an epoch (smoke runs)
    resume: bool = False


@dataclass
class CurriculumConfig:
    """Self-paced curriculum search (SSA / MSA). Used by the curriculum pipeline."""

    thresholds: list[float] = field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(10)]
    )
    h0: float = 0.5  # MSA's fixed threshold for measurer selection [UNVERIFIED in the paper]
    sources: list[str] = field(default_factory=lambda: ["template", "relation", "caption"])
    source_order: Literal["search", "greedy", "given"] = "given"
    histogram_bins: int = 1000


@dataclass
class ScalingConfig:
    """How many Ray Train workers and what each one gets."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0


@dataclass
class StorageConfig:
    """Where outputs go: a local path or an object-store URI."""

    root: str = "runs"
    run_name: str = "default"
    endpoint_url: str | None = None  # S3-compatible endpoint (MinIO, Ceph, moto)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    @property
    def run_dir(self) -> str:
        """``storage.root/storage.run_name``: the folder that holds this run's outputs."""
        return f"{self.storage.root.rstrip('/')}/{self.storage.run_name}"
