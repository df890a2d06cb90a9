"""The CLIP towers of CLIP-VG, built by open_clip and run the CLIP-VG way (method doc §2.1).

open_clip builds the towers (``open_clip.CLIP`` from a model config, never a hand-written ViT).
:class:`CLIPBackbone` then keeps only what CLIP-VG uses and runs it itself:

* image: conv1 -> flatten -> [CLS | patches] -> + positional embedding -> ln_pre -> blocks, keeping
  the raw residual stream after each tapped block; the taps are concatenated along channels
  -> ``(B, 1 + G*G, n_taps * Wv)``. ``ln_post`` and ``proj`` are never applied.
* text: token + positional embedding -> blocks with the causal mask only (no padding mask inside
  CLIP) -> ``ln_final`` on every token -> every token ``@ text_projection`` -> ``(B, L, E)``.

Dead parameters are removed from the module (visual ``ln_post`` and ``proj`` unless the opt-in
similarity prior keeps them frozen, ``logit_scale``, vision blocks after the last tap) so that every trainable tensor gets a gradient, which DDP
without ``find_unused_parameters`` requires. Parameter names are those of an open_clip/OpenAI
CLIP state_dict, so a CLIP weights file loads directly (minus the removed keys).
"""

from __future__ import annotations

import contextlib
import copy
import re
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from clipvg.config import ModelConfig
from clipvg.errors import UserError
from clipvg.model.state_dict import mismatch, strip_module_prefix

# CLIP state_dict entries that CLIP-VG never uses; a weights file may carry them (ignored).
_DEAD_KEYS = ("logit_scale", "logit_bias", "visual.ln_post.weight", "visual.ln_post.bias",
              "visual.proj")
# CLIP's image head: kept (frozen) only for the similarity prior, which reads CLIP's aligned space.
_ALIGNED_HEAD_KEYS = ("visual.ln_post.weight", "visual.ln_post.bias", "visual.proj")
# Attributes OpenAI's TorchScript archives add to their state_dict.
_META_KEYS = ("input_resolution", "context_length", "vocab_size")
_BLOCK_KEY = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.")


class WeightsLoadError(UserError, ValueError):
    """A CLIP weights file cannot be read or does not fit the towers (bad input: one line)."""


def default_taps(num_blocks: int) -> list[int]:
    """Official tap rule ``[0, L/3-1, 2L/3-1, L-1]`` (12 -> 0,3,7,11; 24 -> 0,7,15,23).

    For very shallow towers (tests) indices are clipped at 0 and de-duplicated.
    """
    L = num_blocks
    return sorted({max(0, t) for t in (0, L // 3 - 1, 2 * L // 3 - 1, L - 1)})


def resolve_arch(cfg: ModelConfig) -> dict[str, Any]:
    """The open_clip model config dict ``{embed_dim, vision_cfg, text_cfg, quick_gelu}`` of ``cfg``.

    ``cfg.image_size`` and ``cfg.context_length`` override the arch's own values and
    ``cfg.quick_gelu`` decides the activation.
    """
    if isinstance(cfg.arch, str):
        arch = open_clip.get_model_config(cfg.arch)
        if arch is None:
            vits = [n for n in open_clip.list_models() if n.startswith("ViT-") and "-" in n[4:]]
            raise ValueError(f"unknown open_clip model name {cfg.arch!r} (e.g. "
                             f"{', '.join(vits[:4])}; see open_clip.list_models())")
    elif isinstance(cfg.arch, dict):
        arch = copy.deepcopy(cfg.arch)
    else:
        raise ValueError(f"model.arch must be a name or a dict, got {type(cfg.arch).__name__}")
    missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(arch)
    if missing:
        raise ValueError(f"model.arch lacks {sorted(missing)}")
    vision, text = arch["vision_cfg"], arch["text_cfg"]
    unsupported = [k for k in ("timm_model_name", "attentional_pool") if vision.get(k)]
    unsupported += [k for k in ("hf_model_name",) if text.get(k)]
    unsupported += [k for k in ("custom_text", "multimodal_cfg") if arch.get(k)]
    if not isinstance(vision.get("layers", 12), int):
        unsupported.append("ResNet vision tower")
    if vision.get("patch_dropout", 0):
        unsupported.append("patch_dropout")  # CLIP-VG needs every patch token
    if unsupported:
        raise ValueError(f"CLIP-VG needs a plain ViT CLIP; arch uses {unsupported}")
    arch.pop("custom_text", None)
    vision["image_size"] = cfg.image_size
    text["context_length"] = cfg.context_length
    arch["quick_gelu"] = cfg.quick_gelu
    return arch


def build_clip(cfg: ModelConfig) -> open_clip.CLIP:
    """An ``open_clip.CLIP`` for ``cfg``: random init, or the hub weights of ``cfg.pretrained``."""
    if cfg.pretrained:
        if not isinstance(cfg.arch, str):
            raise ValueError("model.pretrained needs model.arch to be an open_clip model name")
        resolve_arch(cfg)  # same validation as the offline path
        clip = open_clip.create_model(
            cfg.arch, pretrained=cfg.pretrained, force_quick_gelu=cfg.quick_gelu,
            force_image_size=cfg.image_size, force_context_length=cfg.context_length)
        if not isinstance(clip, open_clip.CLIP):
            raise ValueError(f"{cfg.arch!r} does not build a plain open_clip.CLIP")
        return clip
    return open_clip.CLIP(**resolve_arch(cfg))


class CLIPBackbone(nn.Module):
    """Frozen-or-not CLIP image and text towers producing CLIP-VG's token features.

    Attributes mirror an open_clip ``CLIP`` (``visual``, ``transformer``, ``token_embedding``,
    ``positional_embedding``, ``ln_final``, ``text_projection``) so weight files load by name.

    ``autocast_dtype``: None (default) runs the towers in their weights' own dtypes; a dtype runs
    both towers under ``torch.autocast`` of the input's device type (set by
    :func:`clipvg.engine.precision.apply_precision`; the outputs are float32 either way).
    """

    autocast_dtype: torch.dtype | None = None  # a class default: old pickles/instances lack it
    keeps_aligned_head: bool = False

    def __init__(self, clip: open_clip.CLIP, taps: list[int] | None = None,
                 keep_aligned_head: bool = False):
        super().__init__()
        visual = clip.visual
        num_blocks = len(visual.transformer.resblocks)
        taps = default_taps(num_blocks) if taps is None else sorted(taps)
        if len(set(taps)) != len(taps) or not taps or taps[0] < 0 or taps[-1] >= num_blocks:
            raise ValueError(f"taps {taps} must be distinct block indices in [0, {num_blocks})")
        self.taps = taps
        # Remove what CLIP-VG never runs: blocks after the last tap, ln_post, proj, logit_scale.
        visual.transformer.resblocks = visual.transformer.resblocks[: taps[-1] + 1]
        if keep_aligned_head:
            # ln_post/proj map the *final* block's stream into the space shared with the text.
            if taps[-1] != num_blocks - 1 or not isinstance(visual.proj, nn.Parameter):
                raise ValueError(f"the similarity prior needs the last tap ({taps[-1]}) to be the "
                                 f"tower's last block ({num_blocks - 1}) and a visual proj")
            self.keeps_aligned_head = True
        else:
            visual.ln_post = nn.Identity()
            visual.proj = None
        self.visual = visual
        self.transformer = clip.transformer
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.num_blocks_in_arch = num_blocks

    # ---------------------------------------------------------------- sizes
    @property
    def vision_width(self) -> int:
        return self.visual.conv1.out_channels

    @property
    def visual_feature_dim(self) -> int:
        """Channels of the concatenated taps, ``n_taps * Wv``."""
        return len(self.taps) * self.vision_width

    @property
    def num_visual_tokens(self) -> int:
        """``1 + G*G``: CLS plus the patch grid."""
        return self.visual.positional_embedding.shape[0]

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.visual.grid_size)

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @property
    def embed_dim(self) -> int:
        """Width of the per-token text features (the ``text_projection`` output)."""
        p = self.text_projection
        if p is None:
            return self.transformer.width
        return p.out_features if isinstance(p, nn.Linear) else p.shape[1]

    # ---------------------------------------------------------------- forward
    def _autocast(self, x: Tensor):
        """Autocast around one tower when ``autocast_dtype`` is set (the device type comes from
        the input, so the module itself holds no device)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(x.device.type, dtype=self.autocast_dtype)

    def _blocks(self, transformer: nn.Module, x: Tensor, attn_mask: Tensor | None,
                keep: set[int]) -> tuple[Tensor, list[Tensor]]:
        """Run ``transformer.resblocks`` on batch-first ``x``, returning outputs of ``keep``."""
        seq_first = not getattr(transformer, "batch_first", True)
        if seq_first:
            x = x.transpose(0, 1)
        kept = []
        for i, block in enumerate(transformer.resblocks):
            x = block(x, attn_mask=attn_mask)
            if i in keep:
                kept.append(x.transpose(0, 1) if seq_first else x)
        return (x.transpose(0, 1) if seq_first else x), kept

    def forward_taps(self, image: Tensor) -> list[Tensor]:
        """Raw residual stream after each tapped block.

        Args:
            image: ``(B, 3, S, S)`` normalised images.
        Returns:
            ``len(taps)`` tensors ``(B, 1 + G*G, Wv)`` in ascending tap order, tokens
            ``[CLS, patches in raster order]``, float32.
        """
        v = self.visual
        with self._autocast(image):
            x = v.conv1(image.to(v.conv1.weight.dtype))  # (B, Wv, G, G)
            x = x.flatten(2).transpose(1, 2)  # (B, G*G, Wv)
            cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
            x = v.ln_pre(x)
            _, taps = self._blocks(v.transformer, x, None, set(self.taps))
        return [t.float() for t in taps]

    def encode_image_multilevel(self, image: Tensor) -> Tensor:
        """``(B, 3, S, S)`` -> ``(B, 1 + G*G, n_taps * Wv)``: the taps concatenated on channels."""
        return torch.cat(self.forward_taps(image), dim=-1)

    def encode_text_tokens(self, tokens: Tensor) -> Tensor:
        """Per-token projected text features.

        Args:
            tokens: ``(B, L)`` int64 CLIP BPE ids, ``L <= context_length``; padding ids are
                embedded like any other token (CLIP-VG masks them only in the fusion).
        Returns:
            ``(B, L, E)`` float32 = ``ln_final(x) @ text_projection`` for every token.
        """
        L = tokens.shape[1]
        dtype = self.transformer.get_cast_dtype()
        with self._autocast(tokens):
            x = self.token_embedding(tokens).to(dtype) + self.positional_embedding[:L].to(dtype)
            mask = None if self.attn_mask is None else self.attn_mask[:L, :L].to(dtype)
            x, _ = self._blocks(self.transformer, x, mask, set())
            x = self.ln_final(x)
            p = self.text_projection
            if p is not None:
                x = p(x) if isinstance(p, nn.Linear) else x @ p
        return x.float()

    def dense_image_embeddings(self, last_tap: Tensor) -> Tensor:
        """CLIP's aligned embedding of every visual token (MaskCLIP's dense reading).

        Args:
            last_tap: ``(B, 1 + G*G, Wv)`` raw residual stream after the tower's last block.
        Returns:
            ``(B, 1 + G*G, E)`` float32 ``ln_post(x) @ proj``; needs ``keep_aligned_head``.
        """
        if not self.keeps_aligned_head:
            raise RuntimeError("the towers were built without CLIP's ln_post/proj")
        ln = self.visual.ln_post
        x = F.layer_norm(last_tap.float(), ln.normalized_shape, ln.weight.float(),
                         ln.bias.float(), ln.eps)
        return x @ self.visual.proj.float()

    # ---------------------------------------------------------------- policy and weights
    def set_freeze(self, policy: str) -> None:
        """``official``: all frozen but the visual positional embedding; ``all``; ``none``."""
        if policy not in ("official", "all", "none"):
            raise ValueError(f"unknown freeze policy {policy!r}")
        for p in self.parameters():
            p.requires_grad_(policy == "none")
        if policy == "official":
            self.visual.positional_embedding.requires_grad_(True)
        if self.keeps_aligned_head:  # the prior's reference map never moves
            for p in (self.visual.ln_post.weight, self.visual.ln_post.bias, self.visual.proj):
                p.requires_grad_(False)

    def unfreeze_last_blocks(self, n: int) -> list[nn.Parameter]:
        """Make the last ``n`` blocks of both towers trainable, with the text tower's
        ``ln_final`` and ``text_projection``; returns those parameters (for their own lr)."""
        if n <= 0:
            return []
        modules = [*self.visual.transformer.resblocks[-n:], *self.transformer.resblocks[-n:],
                   self.ln_final]
        params = [p for m in modules for p in m.parameters()]
        if isinstance(self.text_projection, nn.Parameter):
            params.append(self.text_projection)
        elif isinstance(self.text_projection, nn.Module):
            params.extend(self.text_projection.parameters())
        for p in params:
            p.requires_grad_(True)
        return params

    def is_removed_key(self, key: str) -> bool:
        """True for CLIP state_dict keys of modules this backbone dropped (dead in CLIP-VG)."""
        if self.keeps_aligned_head and key in _ALIGNED_HEAD_KEYS:
            return False
        if key in _DEAD_KEYS or key in _META_KEYS:
            return True
        m = _BLOCK_KEY.match(key)
        return bool(m) and int(m.group(1)) > self.taps[-1]

    def load_clip_weights(self, path: str | Path) -> None:
        """Load an OpenAI/open_clip CLIP state_dict file (.pt/.pth/.bin or .safetensors).

        Keys of removed dead modules are ignored; any other mismatch raises
        :class:`WeightsLoadError` naming the file and the keys.
        """
        path = Path(path)
        state = _read_state_dict(path)
        state = {k: v for k, v in state.items() if not self.is_removed_key(k)}
        problem = mismatch(self.state_dict(), state)
        if problem:
            raise WeightsLoadError(f"CLIP weights file {path} does not fit the towers of this model: "
                                   f"{problem}. Check model.arch and model.image_size.")
        self.load_state_dict(state, strict=True)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a tensor dict safely (``weights_only``); unwrap ``state_dict`` and ``module.``."""
    if not path.is_file():
        raise WeightsLoadError(f"CLIP weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for bad files
        raise WeightsLoadError(
            f"cannot read CLIP weights file {path} as a tensor state_dict (safe loading only; "
            f"TorchScript archives are not accepted, use open_clip's .bin/.safetensors): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsLoadError(f"CLIP weights file {path} does not hold a {{name: tensor}} dict")
    return strip_module_prefix(state)


def build_backbone(cfg: ModelConfig) -> CLIPBackbone:
    """Towers for ``cfg``: open_clip build, dead modules removed, weights loaded, freeze applied."""
    conditioning = cfg.text_conditioning
    backbone = CLIPBackbone(build_clip(cfg), cfg.taps,
                            keep_aligned_head=conditioning.similarity_prior)
    if cfg.weights:
        backbone.load_clip_weights(cfg.weights)
    backbone.set_freeze(cfg.freeze)
    return backbone
