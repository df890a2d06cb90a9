"""Official CLIP-VG checkpoints -> clipvg (clipvg's own weights format: :mod:`clipvg.model.io`).

* :func:`load_untrusted_checkpoint` reads an official file with torch's ``weights_only``
  unpickler, allowing ``argparse.Namespace`` on top of tensors, containers and primitives; no code
  in the file can run. A refusal becomes :class:`UnsafeCheckpointError`.
* :func:`convert_official_state_dict` maps the official 689-key state_dict (301 aliases, 9 unused
  keys) onto :class:`~clipvg.model.clipvg.CLIPVG` names; :func:`load_official` loads it strictly.
* :func:`model_config_from_official` / :func:`model_config_from_args` give the architecture
  (head counts cannot be recovered from tensor shapes).
* :func:`convert_official`: all of it, written with :func:`clipvg.model.io.export_model`.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from clipvg.config import FusionConfig, ModelConfig
from clipvg.model.io import ConversionError, _first_line, export_model
from clipvg.model.state_dict import short_list, strip_module_prefix

if TYPE_CHECKING:
    from clipvg.model.clipvg import CLIPVG

# open_clip and the model modules are imported inside the functions that build models, so that
# reading (and refusing) a checkpoint stays fast: importing open_clip takes seconds.

# Official alias prefix -> the canonical prefix it shares storage with.
_ALIASES = {"image_encoder_clip_vg.": "clip.visual.", "text_encoder_clip_vg.": "clip."}
# Official prefix -> clipvg prefix (clip.visual.* lands in backbone.visual.*).
_PREFIX_MAP = (
    ("clip.", "backbone."),
    ("ml_visu_proj.", "ml_visu_proj."),
    ("text_proj.", "text_proj."),
    ("reg_token.", "fusion.reg_token."),
    ("vl_pos_embed.", "fusion.pos_embed."),
    ("vl_transformer.encoder.", "fusion.encoder."),
    ("bbox_embed.", "fusion.box_head."),
)
_UNUSED_PREFIXES = ("visu_proj.",)  # defined but never called in the official forward


class UnsafeCheckpointError(ConversionError):
    """The checkpoint needs a pickle global outside the allow-list; nothing was executed."""


@dataclass
class OfficialCheckpoint:
    """What :func:`load_untrusted_checkpoint` found in a file."""

    state_dict: dict[str, Tensor]
    args: argparse.Namespace | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # epoch, val_accu, ...


# ------------------------------------------------------------------------------ safe loading
def load_untrusted_checkpoint(path: str | Path) -> OfficialCheckpoint:
    """Read an official checkpoint (``{model, optimizer, lr_scheduler, epoch, args, val_accu}``)
    or a bare state_dict without running any code from the file."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = found.group(1) if found else "an object outside the allow-list"
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it asks to import {what}, which is not a tensor, "
            f"container, primitive or argparse.Namespace. Loading it could run code from the "
            f"file, so nothing was unpickled. Only open checkpoints you trust with other "
            f"tools.") from None
    except Exception as e:
        raise ConversionError(f"cannot read {path} as a PyTorch checkpoint: "
                              f"{_first_line(e)}") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        extra = {k: v for k, v in obj.items() if k in ("epoch", "val_accu")}
        args = obj.get("args") if isinstance(obj.get("args"), argparse.Namespace) else None
        state = obj["model"]
    else:
        state, args, extra = obj, None, {}
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ConversionError(f"{path} holds neither a state_dict nor a dict with a 'model' "
                              f"state_dict")
    return OfficialCheckpoint(strip_module_prefix(state), args, extra)


# ------------------------------------------------------------------------------ state_dict
def _drop_aliases(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove alias keys after checking each equals its canonical twin."""
    out = {k: v for k, v in official.items() if not k.startswith(tuple(_ALIASES))}
    for key, value in official.items():
        for alias, canonical in _ALIASES.items():
            if not key.startswith(alias):
                continue
            twin = canonical + key[len(alias):]
            if twin not in official:  # only the alias was saved: it is the tensor
                out[twin] = value
            elif official[twin].shape != value.shape or not torch.equal(official[twin], value):
                raise ConversionError(f"alias {key} differs from its canonical twin {twin}")
    return out


def _map_key(key: str) -> str | None:
    for src, dst in _PREFIX_MAP:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def convert_official_state_dict(official: dict[str, Tensor], model: CLIPVG) -> dict[str, Tensor]:
    """Map an official ``ML_CLIP_VG`` state_dict onto ``model``'s parameter names.

    Aliases are dropped (after an equality check), unused tensors (``visu_proj``,
    ``clip.logit_scale``, visual ``ln_post``/``proj``, blocks after the last tap) are dropped,
    ``text_projection`` keeps its right-multiplied orientation, and float tensors become float32.
    Raises :class:`ConversionError` on unknown, missing or mis-shaped keys.
    """
    canonical = _drop_aliases(official)
    own = model.state_dict()
    mapped: dict[str, Tensor] = {}
    unknown = []
    for key, value in canonical.items():
        if key.startswith(_UNUSED_PREFIXES):
            continue
        if key.startswith("clip.") and model.backbone.is_removed_key(key[len("clip."):]):
            continue
        target = _map_key(key)
        if target is None or target not in own:
            unknown.append(key)
            continue
        mapped[target] = value.float() if value.is_floating_point() else value
    missing = sorted(set(own) - set(mapped))
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in mapped.items() if v.shape != own[k].shape]
    if unknown or missing or wrong:
        raise ConversionError(
            "the official state_dict does not fit the model built from the config: "
            f"unknown keys {short_list(sorted(unknown))}, model parameters not filled "
            f"{short_list(missing)}, shape mismatches {short_list(wrong)}. Check the architecture "
            "(--official-config / --arch).")
    return mapped


def load_official(model: CLIPVG, official: dict[str, Tensor]) -> CLIPVG:
    """Convert ``official`` and load it strictly into ``model`` (every parameter filled)."""
    model.load_state_dict(convert_official_state_dict(official, model), strict=True)
    return model


# ------------------------------------------------------------------------------ configs
def model_config_from_official(config_json: dict[str, Any]) -> ModelConfig:
    """ModelConfig from a fixture-style ``config.json`` (format_version 1).

    Head counts come from the JSON: they cannot be recovered from tensor shapes.
    """
    try:
        j, v, t, f = config_json, config_json["vision"], config_json["text"], config_json["fusion"]
        if j.get("format_version") != 1:
            raise ConversionError(f"unsupported config format_version {j.get('format_version')!r}")
        if j.get("bbox_head", {}).get("layers", 3) != 3 or f.get("final_norm", False):
            raise ConversionError("only the 3-layer box head and no final fusion norm exist")
        vision_cfg = {"image_size": j["image_size"], "layers": v["layers"], "width": v["width"],
                      "head_width": v["width"] // v["heads"], "patch_size": v["patch_size"],
                      "mlp_ratio": v["mlp_dim"] / v["width"]}
        text_cfg = {"context_length": t["context_length"], "vocab_size": t["vocab_size"],
                    "width": t["width"], "heads": t["heads"], "layers": t["layers"],
                    "mlp_ratio": t["mlp_dim"] / t["width"]}
        for cfg, part in ((vision_cfg, v), (text_cfg, t)):
            if part.get("layernorm_eps", 1e-5) != 1e-5:  # open_clip's LayerNorm default
                cfg["norm_kwargs"] = {"eps": part["layernorm_eps"]}
        fusion = FusionConfig(d_model=f["d_model"], layers=f["layers"], heads=f["heads"],
                              dim_feedforward=f["dim_feedforward"], dropout=f["dropout"],
                              layernorm_eps=f.get("layernorm_eps", 1e-5))
        antialias = "no antialias" not in j.get("patch_mask", {}).get("method", "no antialias")
        return ModelConfig(
            arch={"embed_dim": j["embed_dim"], "vision_cfg": vision_cfg, "text_cfg": text_cfg},
            quick_gelu=str(v.get("activation", "quick_gelu")).startswith("quick_gelu"),
            image_size=j["image_size"], context_length=j["max_query_len"],
            taps=list(v["tapped_blocks"]), fusion=fusion,
            patch_mask="antialias" if antialias else "official")
    except (KeyError, TypeError, ZeroDivisionError) as e:
        raise ConversionError(f"official config.json is incomplete or malformed: {e!r}") from None


def _with_text_heads(arch: str | dict, heads: int) -> dict:
    # deferred: loads open_clip; paid only when this runs, not on import
    import open_clip

    cfg = open_clip.get_model_config(arch) if isinstance(arch, str) else json.loads(json.dumps(arch))
    if cfg is None:
        raise ConversionError(f"unknown open_clip model name {arch!r}")
    cfg["text_cfg"]["heads"] = heads
    return cfg


def model_config_from_args(args: argparse.Namespace | None, arch: str | None = None,
                           text_heads: int | None = None) -> ModelConfig:
    """ModelConfig for a real official checkpoint from its training ``args``.

    ``args.model`` ("ViT-B/16") gives the open_clip name ("ViT-B-16") unless ``arch`` overrides
    it; ``vl_*``, ``imsize`` and ``max_query_len`` give the fusion and input sizes. Text heads
    default to the open_clip config's (= official ``width // 64`` for OpenAI CLIP models).
    """
    get = (lambda name, default=None: getattr(args, name, default)) if args else (
        lambda name, default=None: default)
    name = arch or (get("model") or "").replace("/", "-")
    if not name:
        raise ConversionError("the checkpoint has no args.model; pass --arch (e.g. ViT-B-16) "
                              "or --official-config")
    fusion = FusionConfig(d_model=get("vl_hidden_dim"), layers=get("vl_enc_layers", 6),
                          heads=get("vl_nheads", 8),
                          dim_feedforward=get("vl_dim_feedforward", 2048),
                          dropout=get("vl_dropout", 0.1))
    return ModelConfig(arch=_with_text_heads(name, text_heads) if text_heads else name,
                       image_size=get("imsize", 224), context_length=get("max_query_len", 77),
                       fusion=fusion)



def convert_official(src: str | Path, out: str | Path, official_config: str | Path | None = None,
                     arch: str | None = None, text_heads: int | None = None
                     ) -> tuple[CLIPVG, ModelConfig]:
    """Read ``src`` safely, build the matching model, load strictly, export to ``out``."""
    ckpt = load_untrusted_checkpoint(src)  # before any slow import: refuse bad input early
    if official_config is not None:
        try:
            cfg = model_config_from_official(json.loads(Path(official_config).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ConversionError(f"cannot read official config {official_config}: {e}") from None
        if arch or text_heads:
            raise ConversionError("--official-config fixes the architecture; drop --arch and "
                                  "--text-heads")
    else:
        cfg = model_config_from_args(ckpt.args, arch, text_heads)
    # deferred: loads open_clip; paid only when this runs, not on import
    from clipvg.model.clipvg import build_model

    try:
        model = build_model(cfg)
    except (ValueError, RuntimeError) as e:
        raise ConversionError(f"cannot build the model: {_first_line(e)}") from None
    load_official(model, ckpt.state_dict)
    export_model(model, out)
    return model, cfg
