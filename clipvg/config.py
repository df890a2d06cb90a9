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
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from clipvg.errors import UserError


class ConfigError(UserError, ValueError):
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
    # where the drawn augmentation is applied (clipvg.data.augment): "cpu" = PIL per sample (the
    # reference); "device" = torch on the consumer's device, from images decoded once (opt-in)
    backend: Literal["cpu", "device"] = "cpu"


@dataclass
class SynthConfig:
    """Shape of the synthetic grounding world (see :mod:`clipvg.sources.synthetic.scenes`)."""

    image_size: int = 224  # side of the generated square images, in pixels
    min_objects: int = 3
    max_objects: int = 6
    train_images: int = 2000
    val_images: int = 200
    test_images: int = 200


@dataclass
class PoolEntry:
    """One part of a training pool: a samples table, kept whole or filtered by reliability.

    A curriculum's subsets are *derived* from a scores table at train time, never copied:
    ``{samples: <run>/pseudo/template, scores: <run>/scores/template-by-template, threshold: 0.3}``
    trains on the template pseudo-labels whose reliability is > 0.3 (strict, as the official
    ``*_refine_0_3`` files)."""

    samples: str  # URI of a samples table (Parquet folder, samples schema)
    scores: str | None = None  # URI of a scores table (sample_id, reliability); None = keep all
    threshold: float | None = None  # keep reliability > threshold; needs scores


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
    # Synthetic world only: train on freshly generated images of the same world (a new stream
    # every epoch, as many samples as the fixed train split) instead of its fixed train split.
    fresh_train_images: bool = False
    # With fresh_train_images: an easy-to-hard stream. Epoch e < N draws scenes of at most
    # 2 + (max_objects - 2) * e / N objects (rounded, at least min(2, min_objects)), then the
    # world's own counts; 0 = the world's counts from the start.
    easy_to_hard_epochs: int = 0
    # Train on these samples (pseudo-label sources, reliability-filtered) instead of the
    # dataset's train split; images still come from the dataset at ``uri``. Empty = the split.
    train_pool: list[PoolEntry] = field(default_factory=list)


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
class TextConditioningConfig:
    """Options that make reading the expression learnable in few samples (docs/pretraining.md).

    All off = the official CLIP-VG architecture, which must relearn text-to-patch matching from
    randomly initialised projections and needs millions of samples to start doing so.
    """

    # Keep the towers' frozen ``ln_post``/``proj`` (CLIP's aligned space, which CLIP-VG
    # discards) and add to every patch token ``scale * s_j * direction``, where ``s_j`` is the
    # cosine between the expression's EOT embedding and the patch's dense CLIP embedding,
    # centred over the image's patches (0 for CLS and padding). ``scale`` starts at
    # ``similarity_scale_init`` and, like ``direction``, is learned.
    similarity_prior: bool = False
    similarity_scale_init: float = 10.0
    # The last ``tune_tower_blocks`` blocks of each tower (and ln_final / text_projection of the
    # text tower) train too, at ``train.lr * tower_lr_scale``; 0 = the freeze policy alone.
    tune_tower_blocks: int = 0
    tower_lr_scale: float = 0.1


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
    text_conditioning: TextConditioningConfig = field(default_factory=TextConditioningConfig)
    # Run the text tower and the fusion only up to the batch's longest expression (rounded up
    # to a multiple of 8) instead of all context_length positions. Exact: the text mask is
    # causal and the fusion masks padded tokens. Costs one host sync per forward.
    truncate_text: bool = False


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
    # An epoch draws this many training samples (reshuffled passes over the pool) instead of one
    # pass: every model then gets the same number of updates whatever its pool's size, so a
    # curriculum's smaller, cleaner subsets are compared at equal compute. Single-process engine
    # only (train-local, curriculum.launcher=in_trial); None = the official one pass per epoch.
    samples_per_epoch: int | None = None
    # true = continue the run storage.root/run_name from its last checkpoint (an error if it has
    # none); a rerun of the same run name continues from its last checkpoint either way
    resume: bool = False
    # Compute dtype of the frozen towers: "auto" = bf16 autocast on GPU, fp32 on CPU;
    # "fp16-frozen" = the official policy (frozen tower weights stored fp16). Trainable parts
    # always stay fp32.
    # "bf16-all": the whole forward (towers, projections, fusion, head) under bf16 autocast,
    # fp32 master weights and loss (clipvg.engine.precision).
    precision: Literal["auto", "fp32", "bf16", "bf16-all", "fp16-frozen"] = "auto"
    # torch.compile the model for training and evaluation steps (every launcher)
    compile: bool = False
    # Read the step losses (and check they are finite) every sync_every steps instead of every
    # step: fewer host syncs. A non-finite loss still raises, naming the steps read together.
    sync_every: int = 1
    max_failures: int = 3  # Ray Train restarts of the worker group (from the last checkpoint)
    # Weight of an auxiliary loss on the similarity prior's map (engine.loss.similarity_map_loss;
    # needs model.text_conditioning.similarity_prior). 0 = the official loss alone.
    map_loss: float = 0.0


@dataclass
class ScoringConfig:
    """Reliability scoring as batch inference: an actor pool of measurer replicas."""

    actors: int = 1  # model replicas (Ray Data actor pool size)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0  # > 0: each replica on a GPU (fractions share one)
    batch_size: int = 64  # canvases per model call
    threads_per_actor: int = 1  # torch intra-op threads of a CPU replica
    # bf16 autocast over the whole forward of every replica (fusion and box head too, not only
    # the towers of train.precision). Measured on an H200 (docs/benchmarks.md): 1.85x the
    # samples/s, reliabilities moved by at most 0.0033. Off = scores computed with the numerics
    # of the measurer's own validation.
    full_bf16: bool = False  # = train.precision "bf16-all" for the replicas
    compile: bool = False  # torch.compile every replica's model


# Options of the pseudo-label generators (clipvg.pseudo), typed so that a typo or a wrong type
# fails when the config is loaded, not inside a Ray Data task. Defaults = each generator's own
# (clipvg.pseudo.<source>.DEFAULTS; tests/test_config.py checks that they agree).
@dataclass
class TemplateOptions:
    top_n: int = 3  # expressions per kept detection
    max_per_image: int = 6
    min_area_frac: float = 1 / 64  # Pseudo-Q: boxes under 1/64 of the image are dropped
    dup_iou: float = 0.4  # of two boxes overlapping with IoU > dup_iou the less confident goes


@dataclass
class RelationOptions:
    min_score: float = 0.2  # every score of a triplet must exceed it
    top_k: int = 10  # triplets kept per image, best product first


@dataclass
class CaptionOptions:
    max_per_image: int = 6
    min_area_frac: float = 1 / 64
    dup_iou: float = 0.4


# source name -> its options; the known pseudo-label sources (clipvg.pseudo.generate.GENERATORS)
GENERATOR_OPTIONS: dict[str, type] = {"template": TemplateOptions, "relation": RelationOptions,
                                      "caption": CaptionOptions}


@dataclass
class CurriculumConfig:
    """Self-paced curriculum (SSA / MSA) and its Ray Tune searches. Choices the paper left
    unpublished ([UNVERIFIED] in the method doc) are options here; see docs/curriculum.md."""

    sources: list[str] = field(default_factory=lambda: ["template", "relation", "caption"])
    # pseudo-label generator options per source, e.g. {template: {top_n: 3, max_per_image: 6}};
    # keys and types checked against GENERATOR_OPTIONS, only the options given are kept
    generators: dict[str, dict] = field(default_factory=dict)
    thresholds: list[float] = field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(10)]
    )
    # "grid": every threshold; "refine": the grid, then a finer grid (step/refine_steps)
    # around the best one (coarse-to-fine)
    search: Literal["grid", "refine"] = "grid"
    refine_steps: int = 4
    h0: float = 0.5  # MSA's fixed threshold for measurer selection [UNVERIFIED in the paper]
    # "search": at each MSA step every measurer's subset at h0 is tried (SR and CR);
    # "own": each source is scored by its own measurer (SR only; fewer trainings)
    measurer_selection: Literal["search", "own"] = "search"
    # "search": every order of the sources is a Tune trial; "greedy": at each step, the source
    # whose best subset helps the pool most; "given": the order of ``sources``
    source_order: Literal["search", "greedy", "given"] = "search"
    histogram_bins: int = 1000
    # How a search trial trains: "ray_train" = a TorchTrainer inside the Tune trial (scaling.*
    # workers, GPUs, DDP: clusters); "in_trial" = the trial process trains on CPU itself with
    # the single-process engine (laptops and tiny models, where starting a TorchTrainer's
    # controller and worker processes costs more than the training); "in_process" = no Tune:
    # the pipeline's own process trains every candidate with that engine, one after another
    # (tiny models and tests, where starting a Tune run, ~20-30 s a search, costs more still)
    launcher: Literal["ray_train", "in_trial", "in_process"] = "ray_train"
    max_concurrent_trials: int = 2
    cpus_per_trial: float = 0.1  # the Tune trial itself (ray_train: its TorchTrainer asks for the
                                 # workers; in_trial: scaling.cpus_per_worker is added)
    early_stopping: Literal["none", "asha"] = "none"  # asha: ray_train only (per-epoch reports)
    asha_grace_epochs: int = 2
    trial_epochs: int | None = None  # epochs of every search trial; None = train.epochs
    # in_trial launcher only: train.samples_per_epoch of every training of the pipeline (every
    # model gets the same number of updates whatever its pool's size; see docs/curriculum.md)
    samples_per_epoch: int | None = None
    final_epochs: int | None = None  # epochs of the final / baseline models; None = train.epochs
    measurer_epochs: int | None = None  # epochs of the reliability measurers; None = final_epochs
    scoring: ScoringConfig = field(default_factory=ScoringConfig)


@dataclass
class ScalingConfig:
    """How many Ray Train workers and what each one gets."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    data_cpus: float = 1.0  # CPUs per Ray Data decode task (fractional on small machines)
    # torch intra-op threads of each Ray Train worker and in-trial training; None = max(1, int(cpus_per_worker)).
    # Ray sets OMP_NUM_THREADS from the reservation (1 for 0.5 or 1 CPU), so without this a
    # worker's torch runs one thread whatever the node has (clipvg.distributed.worker).
    threads_per_worker: int | None = None
    # Placement on a cluster (docs/cluster.md): extra Ray resources asked for by every model
    # replica (Ray Train worker, scoring actor, in-trial training), e.g. {clipvg_model: 1}, and
    # by every Ray Data read/decode/generate task, e.g. {clipvg_data: 1}. Nodes that advertise
    # the resource take the work; the autoscaler starts such nodes. Empty = anywhere.
    model_resources: dict[str, float] = field(default_factory=dict)
    data_resources: dict[str, float] = field(default_factory=dict)


@dataclass
class StorageConfig:
    """Where outputs go: a local path or an object-store URI.

    Every command resolves these the same way (:func:`clipvg.data.storage.options_from_config`;
    a command's ``--endpoint-url`` flag takes the place of ``endpoint_url``) and checks the
    endpoint before any work (:func:`clipvg.data.storage.check_access`)."""

    root: str = "runs"
    run_name: str = "default"
    endpoint_url: str | None = None  # S3-compatible endpoint (MinIO, Ceph, moto)
    region: str | None = None  # S3 region; None = AWS_DEFAULT_REGION / the bucket's own
    profile: str | None = None  # named AWS profile (~/.aws); never put keys in a config


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


# --------------------------------------------------------------------------------------------
# Loading, overriding, validating
# --------------------------------------------------------------------------------------------


PACKAGE_DIR = Path(__file__).resolve().parent
CONFIGS_DIR = PACKAGE_DIR / "configs"  # the run configs shipped in the package (configs/ links here)


def packaged_configs() -> list[str]:
    """Names of the run configs shipped with clipvg (``--config demo``)."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """The file ``--config`` names: a bare name (no folder, no ``.yaml`` / ``.yml``: ``demo``) is a
    config shipped in the package; anything else is a path, as given."""
    text = str(path)
    bare = isinstance(path, str) and "/" not in text and os.sep not in text and \
        Path(text).suffix not in (".yaml", ".yml")
    if bare:
        found = CONFIGS_DIR / f"{text}.yaml"
        if not found.is_file():
            raise ConfigError(f"no packaged config named {text!r} (packaged: "
                              f"{', '.join(packaged_configs()) or 'none'}); give a path to a "
                              "YAML file to use your own")
        return found
    path = Path(path).expanduser()
    if not path.is_file():
        hint = f"; packaged configs: {', '.join(packaged_configs())} (e.g. --config demo)" \
            if packaged_configs() else ""
        what = "is a folder, not a YAML file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {what}{hint}")
    return path


def _yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with a syntax error as a one-line ConfigError naming line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        detail = getattr(e, "problem", None) or str(e).splitlines()[0]
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and start is not None and (mark is None or start.line != mark.line):
            detail += f" ({context} started at line {start.line + 1}, column {start.column + 1})"
        elif context:
            detail += f" ({context})"
        raise ConfigError(f"{where}: invalid YAML{at}: {detail}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                launcher: str | None = None) -> Config:
    """Read a YAML config (or start from the defaults) and apply dotted ``key=value`` overrides.

    ``path``: a YAML file, or the bare name of a config shipped with clipvg (``"demo"``, see
    :func:`resolve_config_path`). Values of overrides are parsed as YAML scalars/lists
    (``train.epochs=3``, ``model.taps=[0,3,7,11]``, ``data.uri=null``). A relative
    ``model.weights`` that does not exist from the working directory but does inside the
    installed package (``clipvg/assets/...``) is made absolute, so the packaged configs run
    outside a checkout. ``launcher`` (one of :data:`LAUNCHERS`): also reject what that launcher
    cannot honour (:func:`check_launcher`). Every problem is a :class:`ConfigError` naming the
    file or the key.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
        raw = _yaml(text, str(path))
        if raw is None:  # an empty file would silently mean the full official recipe
            raise ConfigError(f"config file {path} is empty: leave out --config to run with the "
                              "built-in defaults (the official recipe), or put sections in it")
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        _set_dotted(raw, key.strip(), _yaml(value, f"override {item!r}") if value.strip() else None)
    cfg = _packaged_weights(from_dict(Config, raw))
    if launcher is not None:
        check_launcher(cfg, launcher)
    return cfg


def _packaged_weights(cfg: Config) -> Config:
    """``model.weights`` relative to the package's parent when it is not found from here."""
    weights = cfg.model.weights
    if not weights or "://" in weights or Path(weights).is_absolute() or Path(weights).exists():
        return cfg
    inside = PACKAGE_DIR.parent / weights
    if Path(weights).parts[:1] == (PACKAGE_DIR.name,) and inside.is_file():
        cfg.model.weights = str(inside)
    return cfg


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type, raw: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping, checking every key and type."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {_join(where, unknown[0])!r}; {where or 'config'} accepts: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(hints[k], v, _join(where, k)) for k, v in raw.items()}
    obj = cls(**kwargs)
    _check_values(obj, where)
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (allowing int -> float); return the value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        non_null = [o for o in options if o is not type(None)]
        if len(non_null) == 1:  # Optional[X]: X's own error is the most specific
            return _coerce(non_null[0], value, key)
        for option in non_null:
            try:
                return _coerce(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # PyYAML follows YAML 1.1, where "1e-3" (no dot) is a string, not a float
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # a bug in this file, not user input


def _type_name(tp: Any) -> str:
    return " | ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(tp))


_CUSTOM_RESOURCES = "must map custom resource names to amounts > 0 (CPU, GPU and memory have keys of their own)"


def _custom_resources(v: dict) -> bool:
    return all(isinstance(k, str) and k and k not in ("CPU", "GPU", "memory", "object_store_memory")
               and isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0 for k, a in v.items())


# Value ranges that types alone cannot express: (section class, field) -> (check, message)
_RULES: dict[tuple[type, str], tuple[Any, str]] = {
    (SynthConfig, "min_objects"): (lambda v: v >= 1, "must be >= 1"),
    (SynthConfig, "train_images"): (lambda v: v >= 1, "must be >= 1"),
    (SynthConfig, "val_images"): (lambda v: v >= 1, "must be >= 1 (model selection needs the val split)"),
    (SynthConfig, "test_images"): (lambda v: v >= 1, "must be >= 1"),
    (SynthConfig, "image_size"): (lambda v: v >= 32, "must be >= 32"),
    (TrainConfig, "epochs"): (lambda v: v >= 1, "must be >= 1"),
    (TrainConfig, "batch_size"): (lambda v: v >= 1, "must be >= 1"),
    (TrainConfig, "eval_batch_size"): (lambda v: v >= 1, "must be >= 1"),
    (TrainConfig, "lr"): (lambda v: v > 0, "must be > 0"),
    (TrainConfig, "weight_decay"): (lambda v: v >= 0, "must be >= 0"),
    (TrainConfig, "warmup_steps"): (lambda v: v >= 0, "must be >= 0"),
    (TrainConfig, "samples_per_epoch"): (lambda v: v is None or v >= 1, "must be >= 1 or null"),
    (CurriculumConfig, "samples_per_epoch"): (lambda v: v is None or v >= 1, "must be >= 1 or null"),
    (FusionConfig, "layers"): (lambda v: v >= 1, "must be >= 1"),
    (FusionConfig, "dropout"): (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    (ModelConfig, "image_size"): (lambda v: v >= 32, "must be >= 32"),
    (ModelConfig, "context_length"): (lambda v: v >= 3, "must be >= 3"),
    (DataConfig, "easy_to_hard_epochs"): (lambda v: v >= 0, "must be >= 0"),
    (TextConditioningConfig, "tune_tower_blocks"): (lambda v: v >= 0, "must be >= 0"),
    (TextConditioningConfig, "tower_lr_scale"): (lambda v: v > 0, "must be > 0"),
    (ScalingConfig, "num_workers"): (lambda v: v >= 1, "must be >= 1"),
    (ScalingConfig, "cpus_per_worker"): (lambda v: v > 0, "must be > 0"),
    (ScalingConfig, "data_cpus"): (lambda v: v > 0, "must be > 0"),
    (ScalingConfig, "threads_per_worker"): (lambda v: v is None or v >= 1, "must be >= 1 or null"),
    (ScalingConfig, "model_resources"): (lambda v: _custom_resources(v), _CUSTOM_RESOURCES),
    (ScalingConfig, "data_resources"): (lambda v: _custom_resources(v), _CUSTOM_RESOURCES),
    (TrainConfig, "map_loss"): (lambda v: v >= 0, "must be >= 0"),
    (TrainConfig, "sync_every"): (lambda v: v >= 1, "must be >= 1"),
    (TrainConfig, "max_failures"): (lambda v: v >= -1, "must be >= -1 (-1 = retry forever)"),
    (CurriculumConfig, "h0"): (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    (CurriculumConfig, "max_concurrent_trials"): (lambda v: v >= 1, "must be >= 1"),
    (CurriculumConfig, "cpus_per_trial"): (lambda v: v > 0, "must be > 0 (Ray Tune rejects 0)"),
    (CurriculumConfig, "refine_steps"): (lambda v: v >= 2, "must be >= 2"),
    (CurriculumConfig, "sources"): (lambda v: bool(v) and len(set(v)) == len(v), "must be non-empty and distinct"),
    (ScoringConfig, "actors"): (lambda v: v >= 1, "must be >= 1"),
    (ScoringConfig, "batch_size"): (lambda v: v >= 1, "must be >= 1"),
    (PoolEntry, "threshold"): (lambda v: v is None or 0 <= v < 1, "must be in [0, 1) or null"),
    (CurriculumConfig, "thresholds"): (lambda v: bool(v) and all(0 <= h < 1 for h in v), "must be non-empty, each in [0, 1)"),
    (TemplateOptions, "top_n"): (lambda v: v >= 1, "must be >= 1"),
    (TemplateOptions, "max_per_image"): (lambda v: v >= 1, "must be >= 1"),
    (TemplateOptions, "min_area_frac"): (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    (TemplateOptions, "dup_iou"): (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    (RelationOptions, "top_k"): (lambda v: v >= 1, "must be >= 1"),
    (CaptionOptions, "max_per_image"): (lambda v: v >= 1, "must be >= 1"),
    (CaptionOptions, "min_area_frac"): (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    (CaptionOptions, "dup_iou"): (lambda v: 0 < v <= 1, "must be in (0, 1]"),
}


def _check_sources(c: CurriculumConfig, where: str) -> None:
    """Every source a known pseudo-label generator; every generator's options known and typed
    (``curriculum.generators`` keeps only the options given, with their checked values)."""
    known = ", ".join(sorted(GENERATOR_OPTIONS))
    for i, source in enumerate(c.sources):
        if source not in GENERATOR_OPTIONS:
            raise ConfigError(f"{_join(where, 'sources')}[{i}]: unknown source {source!r} (known: {known})")
    generators = {}
    for name, options in c.generators.items():
        key = _join(_join(where, "generators"), str(name))
        if name not in GENERATOR_OPTIONS:
            raise ConfigError(f"{key}: unknown source {name!r} (known: {known})")
        options = {} if options is None else options
        typed = from_dict(GENERATOR_OPTIONS[name], options, key)
        generators[name] = {k: getattr(typed, k) for k in options}
    c.generators = generators


# Keys a launcher cannot honour: (launcher, what is wrong with cfg or None). Launchers:
# "train-local" (clipvg train-local, clipvg demo), "ray_train" (clipvg train: Ray Train workers),
# "pipeline" (clipvg pipeline; its trainings run with curriculum.launcher).
LAUNCHERS = ("train-local", "ray_train", "pipeline")


def check_launcher(cfg: Config, launcher: str) -> None:
    """Reject at load time what ``launcher`` would fail on or silently ignore (ConfigError naming
    the key). :func:`load_config` runs it when given ``launcher``; the launchers run it too, for
    configs built in code."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; expected one of {', '.join(LAUNCHERS)}")
    trains_with = cfg.curriculum.launcher if launcher == "pipeline" else launcher
    if cfg.data.fresh_train_images and cfg.data.uri is not None:
        raise ConfigError("data.fresh_train_images: needs the synthetic world (data.uri: null), "
                          f"data.uri is {cfg.data.uri!r}")
    if cfg.data.fresh_train_images and launcher != "train-local":
        what = ("Ray Train streams the fixed train split" if launcher == "ray_train" else
                "the pipeline trains on the pseudo-label pools of its world")
        raise ConfigError(f"data.fresh_train_images: supported by clipvg train-local only ({what})")
    if cfg.train.samples_per_epoch is not None and trains_with == "ray_train":
        where = "clipvg train" if launcher == "ray_train" else "curriculum.launcher=ray_train"
        raise ConfigError(f"train.samples_per_epoch: supported by the single-process engine only "
                          f"(clipvg train-local, curriculum.launcher=in_trial); {where} runs Ray "
                          f"Train, one pass over the data per epoch")


def vision_depth(arch: Any) -> int | None:
    """Blocks of the visual tower of ``model.arch`` (an inline open_clip config, or a name whose
    open_clip JSON is read without importing open_clip); None when it cannot be told here."""
    if isinstance(arch, str):
        import importlib.util  # deferred: only for named architectures (find_spec, no import)

        spec = importlib.util.find_spec("open_clip")
        folders = list(spec.submodule_search_locations or []) if spec else []
        for folder in folders:
            f = Path(folder) / "model_configs" / f"{arch}.json"
            if f.is_file():
                try:
                    arch = json.loads(f.read_text())
                except (OSError, ValueError):
                    return None
                break
        else:
            return None
    vision = arch.get("vision_cfg", {}) if isinstance(arch, dict) else None
    if not isinstance(vision, dict):
        return None
    layers = vision.get("layers", 12)  # open_clip's CLIPVisionCfg default
    return layers if isinstance(layers, int) and not isinstance(layers, bool) else None


def _check_taps(model: ModelConfig, where: str) -> None:
    """Taps are distinct block indices of the visual tower: checked here, before any work."""
    taps, key = model.taps, _join(where, "taps")
    if taps is None:
        return
    if not taps or len(set(taps)) != len(taps) or min(taps) < 0:
        raise ConfigError(f"{key}: {taps!r} must be distinct, non-negative visual block indices")
    depth = vision_depth(model.arch)
    if depth is not None and max(taps) >= depth:
        raise ConfigError(f"{key}: {taps!r} taps block {max(taps)}, but the visual tower of "
                          f"{_join(where, 'arch')} has {depth} blocks (indices 0..{depth - 1})")


def _check_values(obj: Any, where: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):  # .inf passes "> 0"
            raise ConfigError(f"{_join(where, f.name)}: {value!r} must be a finite number")
        rule = _RULES.get((type(obj), f.name))
        if rule and not rule[0](getattr(obj, f.name)):
            raise ConfigError(f"{_join(where, f.name)}: {getattr(obj, f.name)!r} {rule[1]}")
    if isinstance(obj, CurriculumConfig) and obj.samples_per_epoch is not None and obj.launcher == "ray_train":
        raise ConfigError(f"{_join(where, 'samples_per_epoch')}: needs curriculum.launcher=in_trial or in_process "
                          "(Ray Train runs one pass over the pool per epoch)")
    if isinstance(obj, CurriculumConfig) and obj.early_stopping == "asha" and obj.launcher != "ray_train":
        raise ConfigError(f"{_join(where, 'early_stopping')}: asha needs curriculum.launcher=ray_train "
                          f"(an {obj.launcher} trial reports once, at its end: nothing to stop early)")
    if isinstance(obj, CurriculumConfig):
        _check_sources(obj, where)
    if isinstance(obj, PoolEntry) and obj.threshold is not None and obj.scores is None:
        raise ConfigError(f"{_join(where, 'threshold')}: a threshold needs a scores table (scores: URI)")
    if isinstance(obj, Config) and obj.train.map_loss and not obj.model.text_conditioning.similarity_prior:
        raise ConfigError("train.map_loss: needs model.text_conditioning.similarity_prior=true "
                          "(the loss is on the prior's map)")
    if isinstance(obj, DataConfig) and obj.fresh_train_images and obj.uri is not None:
        raise ConfigError(f"{_join(where, 'fresh_train_images')}: needs the synthetic world (data.uri: null), "
                          f"data.uri is {obj.uri!r}")
    if isinstance(obj, DataConfig) and obj.easy_to_hard_epochs and not obj.fresh_train_images:
        raise ConfigError(f"{_join(where, 'easy_to_hard_epochs')}: needs data.fresh_train_images=true "
                          "(the fixed train split cannot change its scenes)")
    if isinstance(obj, ModelConfig):
        _check_taps(obj, where)
        if obj.pretrained and not isinstance(obj.arch, str):
            raise ConfigError(f"{_join(where, 'pretrained')}: {obj.pretrained!r} needs {_join(where, 'arch')} "
                              "to be an open_clip model name (an inline tower config has no hub weights)")
        depth = vision_depth(obj.arch)
        if obj.text_conditioning.similarity_prior and obj.taps is not None and depth is not None \
                and max(obj.taps) != depth - 1:
            raise ConfigError(f"{_join(where, 'taps')}: {obj.taps!r}: the similarity prior "
                              f"(text_conditioning.similarity_prior) needs the last tap to be the visual "
                              f"tower's last block ({depth - 1})")
    if isinstance(obj, FusionConfig) and obj.d_model is not None and obj.d_model % obj.heads:
        raise ConfigError(f"{_join(where, 'd_model')}: {obj.d_model} is not divisible by "
                          f"{_join(where, 'heads')} {obj.heads}")
    if isinstance(obj, SynthConfig) and obj.max_objects < obj.min_objects:
        raise ConfigError(f"{_join(where, 'max_objects')}: {obj.max_objects} < min_objects {obj.min_objects}")


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (YAML/JSON ready)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path, **storage_options: Any) -> None:
    """Write the resolved config as YAML (``.yaml``/``.yml``) or JSON next to an output.

    ``path``: a local path, or a storage URI (``s3://...``), which is written through
    :mod:`clipvg.data.storage` with ``storage_options`` (default: the config's own
    ``storage.*``) - never turned into a local folder name."""
    text = str(path)
    suffix = os.path.splitext(text)[1]
    body = (yaml.safe_dump(to_dict(cfg), sort_keys=False) if suffix in (".yaml", ".yml")
            else json.dumps(to_dict(cfg), indent=2))
    if "://" in text and not text.startswith("file://"):
        # deferred: loads fsspec, which the config (read by every command) does not otherwise need
        from clipvg.data import storage

        options = storage_options or storage.options_from_config(cfg.storage)
        storage.write_bytes(body.encode("utf-8"), text, **options)
        return
    path = Path(text.removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
