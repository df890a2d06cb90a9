"""The tower pre-training loop: fresh scenes every step, a fixed probe set for the curve.

Outputs in the output folder: ``open_clip_model.safetensors`` (a complete open_clip CLIP
state_dict: what ``model.weights`` loads), ``pretrain.json`` (the config, the towers' arch and
the final probe metrics), ``metrics.jsonl`` and ``curve.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from clipvg.config import ModelConfig, SynthConfig
from clipvg.data.text import tokenize
from clipvg.data.transforms import NORM_STATS
from clipvg.model.backbone import build_clip
from clipvg.model.clipvg import offline_config
from clipvg.pretrain.objective import TowerPretrainer
from clipvg.pretrain.scenes import Scene, make_scene

WEIGHTS_FILE = "open_clip_model.safetensors"


@dataclass
class PretrainConfig:
    """Hyper-parameters of :func:`pretrain_towers` (all recorded next to the weights).

    ``stages``: ``[start fraction of the steps, min objects, max objects]``, easy to hard.
    """

    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    seed: int = 1_000_003  # the scene stream; the demo world uses small seeds and other splits
    stages: list = field(default_factory=lambda: [[0.0, 1, 3], [0.15, 2, 6], [0.4, 3, 6]])
    probe_images: int = 256
    eval_every: int = 250
    normalize: str = "imagenet"  # must match data.augment.normalize of the runs using the towers
    phrase_context: int = 16
    loss_weights: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("steps", "batch_size", "warmup_steps", "probe_images", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"pretrain {name} must be >= 1, got {getattr(self, name)}")
        starts = [s[0] for s in self.stages]
        if not self.stages or starts[0] != 0 or starts != sorted(starts) or any(
                not 1 <= lo <= hi for _, lo, hi in self.stages):
            raise ValueError(f"pretrain stages must start at 0.0, be sorted and have "
                             f"1 <= min <= max objects, got {self.stages}")


def _objects_at(cfg: PretrainConfig, step: int) -> tuple[int, int]:
    lo, hi = cfg.stages[0][1:]
    for start, a, b in cfg.stages:
        if step >= start * cfg.steps:
            lo, hi = a, b
    return int(lo), int(hi)


def collate_scenes(scenes: list[Scene], normalize: str, phrase_context: int,
                   context_length: int = 77) -> dict:
    """Stack scenes into the batch :class:`TowerPretrainer` takes.

    Captions longer than the towers' ``context_length`` are cut (their last objects go);
    phrases are tokenized to ``min(phrase_context, context_length)``.
    """
    mean, std = (np.asarray(v, dtype=np.float32).reshape(1, 3, 1, 1) for v in NORM_STATS[normalize])
    pixels = np.stack([s.pixels for s in scenes]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    phrases = [p or "a" for s in scenes for p in s.phrases]  # "" pads; masked by phrase_valid
    captions = tokenize([s.caption for s in scenes], context_length=context_length).tokens
    captions = captions[:, : int(captions.ne(0).sum(1).max())]
    return {
        "image": torch.from_numpy((pixels - mean) / std),
        "phrase_tokens": tokenize(phrases, context_length=min(phrase_context, context_length)).tokens,
        "phrase_valid": torch.tensor([[p != "" for p in s.phrases] for s in scenes]),
        "phrase_targets": torch.from_numpy(np.stack([s.phrase_targets for s in scenes])),
        "cell_color": torch.from_numpy(np.stack([s.cell_color for s in scenes])),
        "cell_shape": torch.from_numpy(np.stack([s.cell_shape for s in scenes])),
        "cell_size": torch.from_numpy(np.stack([s.cell_size for s in scenes])),
        "cell_box": torch.from_numpy(np.stack([s.cell_box for s in scenes])),
        "caption_tokens": captions,
    }


def _scene_config(model_cfg: ModelConfig, lo: int, hi: int) -> SynthConfig:
    return SynthConfig(image_size=model_cfg.image_size, min_objects=lo, max_objects=hi)


@torch.no_grad()
def _probe(pretrainer: TowerPretrainer, probe: list[dict]) -> dict[str, float]:
    pretrainer.eval()
    sums: dict[str, float] = {}
    for batch in probe:
        for k, v in pretrainer(batch).items():
            sums[k] = sums.get(k, 0.0) + float(v) / len(probe)
    pretrainer.train()
    return sums


def _step(pretrainer: TowerPretrainer, optimizer, batch: dict, lr: float, step: int) -> dict:
    """One optimisation step at learning rate ``lr`` (gradients clipped to norm 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses = pretrainer(batch)
    if not torch.isfinite(losses["loss"]):
        raise FloatingPointError(f"non-finite pre-training loss at step {step}")
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(pretrainer.parameters(), 1.0)
    optimizer.step()
    return losses


def pretrain_towers(cfg: PretrainConfig, model_cfg: ModelConfig, out: str | Path,
                    progress: bool = True) -> dict:
    """Pre-train ``model_cfg``'s towers from random init; write them to ``out``; return the
    final probe metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    clip = build_clip(offline_config(model_cfg))
    patch = clip.visual.conv1.kernel_size[0]
    pretrainer = TowerPretrainer(clip, cfg.loss_weights)
    optimizer = torch.optim.AdamW(pretrainer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    probe_cfg = _scene_config(model_cfg, *cfg.stages[-1][1:])
    probe_scenes = [make_scene(cfg.seed + 1, i, probe_cfg, patch) for i in range(cfg.probe_images)]
    context = model_cfg.context_length
    probe = [collate_scenes(probe_scenes[i: i + 128], cfg.normalize, cfg.phrase_context, context)
             for i in range(0, len(probe_scenes), 128)]

    curve, metrics_file = [], (out / "metrics.jsonl").open("w")
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="pretrain-towers", disable=None if progress else True)
    for step in bar:
        scene_cfg = _scene_config(model_cfg, *_objects_at(cfg, step))
        scenes = [make_scene(cfg.seed, step * cfg.batch_size + i, scene_cfg, patch)
                  for i in range(cfg.batch_size)]
        batch = collate_scenes(scenes, cfg.normalize, cfg.phrase_context, context)
        factor = min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        losses = _step(pretrainer, optimizer, batch, cfg.lr * factor, step)
        bar.set_postfix(loss=f"{losses['loss'].item():.3f}", top1=f"{losses['phrase_top1'].item():.2f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            record = {"step": step + 1, "images": (step + 1) * cfg.batch_size,
                      "elapsed_s": round(time.perf_counter() - t0, 1), "lr": cfg.lr * factor,
                      "probe": _probe(pretrainer, probe)}
            curve.append(record)
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
    metrics_file.close()
    state = {k: v.detach().contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt", "producer": "clipvg pretrain-towers"})
    summary = {"config": dataclasses.asdict(cfg), "arch": model_cfg.arch,
               "image_size": model_cfg.image_size, "context_length": model_cfg.context_length,
               "final_probe": curve[-1]["probe"], "elapsed_s": round(time.perf_counter() - t0, 1),
               "threads": torch.get_num_threads()}
    (out / "pretrain.json").write_text(json.dumps(summary, indent=2))
    return summary
