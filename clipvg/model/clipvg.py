"""CLIP-VG: image + referring expression -> one box (method doc §2).

Boxes are DETR style: ``(cx, cy, w, h)`` after a sigmoid, normalised by the **padded** square
canvas (not the original image), unclamped. Mask polarity: ``pixel_mask`` 1 = padding,
``token_mask`` 1 = real token, every bool key-padding mask True = ignore.

The model knows nothing of devices, DDP or Ray.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipvg.config import ModelConfig
from clipvg.model.backbone import CLIPBackbone, build_backbone
from clipvg.model.fusion import VLFusion, build_fusion
from clipvg.model.similarity import SimilarityPrior, centred_patch_similarity, eot_embeddings


def compute_patch_mask(pixel_mask: Tensor, grid: tuple[int, int], mode: str = "official") -> Tensor:
    """Downsample a pixel padding mask to the patch grid.

    Args:
        pixel_mask: ``(B, S, S)`` int/bool, 1 = padding.
        grid: ``(Gh, Gw)`` patch grid.
        mode: ``"official"`` = bilinear, ``align_corners=False``, no antialias, float32, then
            ``torch.round`` (half to even): a patch is ignored iff >= 3 of its 4 central pixels
            are padding. ``"antialias"`` = the same with antialiasing (newer torchvision).
    Returns:
        ``(B, Gh*Gw)`` bool, True = ignored patch, row-major.
    """
    if mode not in ("official", "antialias"):
        raise ValueError(f"unknown patch_mask mode {mode!r}")
    m = pixel_mask.to(torch.float32).unsqueeze(1)
    m = F.interpolate(m, size=tuple(grid), mode="bilinear", align_corners=False,
                      antialias=(mode == "antialias"))
    return torch.round(m).to(torch.bool).flatten(1)


TEXT_ROUND = 8  # truncated text lengths are multiples of this: few distinct shapes to compile


def truncate_tokens(tokens: Tensor, token_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, L)`` tokens and mask cut to the first ``Lt`` positions, ``Lt`` = one past the last
    real token of any row (mask != 0), rounded up to a multiple of :data:`TEXT_ROUND`, at most
    ``L`` and at least 1. Reads ``Lt`` on the host (one sync)."""
    L = tokens.shape[1]
    positions = torch.arange(1, L + 1, device=token_mask.device)
    longest = int((token_mask.ne(0) * positions).amax())
    keep = min(L, max(1, -(-longest // TEXT_ROUND) * TEXT_ROUND))
    return tokens[:, :keep], token_mask[:, :keep]


class CLIPVG(nn.Module):
    """CLIP towers -> multi-layer visual and per-token text features -> fusion -> box.

    Args:
        backbone: the CLIP towers (:class:`CLIPBackbone`).
        fusion: [REG] token, position table, fusion encoder and box head (:class:`VLFusion`).
        patch_mask: ``"official"`` or ``"antialias"`` (see :func:`compute_patch_mask`).
        similarity_prior: optional :class:`SimilarityPrior` (needs towers that keep CLIP's
            ``ln_post``/``proj``); None = the official architecture.
        truncate_text: run the text tower and the fusion on the first ``Lt`` token positions
            only, ``Lt`` = the batch's longest expression rounded up to a multiple of
            :data:`TEXT_ROUND` (at most the context length). Exact: the text attention mask is
            causal, so real tokens never see the padding, and the fusion masks padded tokens
            as keys and reads position 0 only. Costs one host sync per forward (``Lt`` is a
            shape).
    """

    # Set by clipvg.engine.precision.apply_precision ("bf16-all") and read by the engine's
    # autocast_forward around each call; the model itself never reads it (it knows no devices).
    forward_autocast_dtype: torch.dtype | None = None
    truncate_text: bool = False  # a class default: instances of older pickles lack it

    def __init__(self, backbone: CLIPBackbone, fusion: VLFusion, patch_mask: str = "official",
                 similarity_prior: SimilarityPrior | None = None, truncate_text: bool = False):
        super().__init__()
        d_model = fusion.pos_embed.embedding_dim
        expected = 1 + backbone.context_length + backbone.num_visual_tokens
        if fusion.seq_len != expected:
            raise ValueError(f"fusion expects {fusion.seq_len} tokens, towers give {expected}")
        self.backbone = backbone
        self.ml_visu_proj = nn.Linear(backbone.visual_feature_dim, d_model)
        self.text_proj = nn.Linear(backbone.embed_dim, d_model)
        self.fusion = fusion
        self.patch_mask_mode = patch_mask
        if similarity_prior is not None and not backbone.keeps_aligned_head:
            raise ValueError("the similarity prior needs towers built with keep_aligned_head")
        self.similarity_prior = similarity_prior
        self.truncate_text = truncate_text

    def patch_mask(self, pixel_mask: Tensor) -> Tensor:
        """``(B, S, S)`` pixel mask (1 = padding) -> ``(B, G*G)`` bool, True = ignored patch."""
        return compute_patch_mask(pixel_mask, self.backbone.grid_size, self.patch_mask_mode)

    def forward_intermediates(self, image: Tensor, pixel_mask: Tensor, tokens: Tensor,
                              token_mask: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """The forward pass keeping every stage (for parity checks and debugging).

        Returns a dict with ``taps`` (list of ``(B, 1+G*G, Wv)``), ``visual_multilevel``
        ``(B, 1+G*G, n_taps*Wv)``, ``text_features`` ``(B, L, E)``, ``visu_src``
        ``(B, 1+G*G, D)``, ``text_src`` ``(B, L, D)``, ``patch_mask`` ``(B, G*G)``,
        ``fusion_key_padding_mask`` ``(B, 1+L+1+G*G)``, ``fusion_out`` ``(B, 1+L+1+G*G, D)``
        (L = the context length, or the truncated length with ``truncate_text``),
        ``reg_out`` ``(B, D)``, ``pred_boxes`` ``(B, 4)`` and ``grid_size`` ``(Gh, Gw)``; with the similarity prior also
        ``similarity`` ``(B, 1+G*G)`` (the centred cosine map, 0 for CLS and padding).
        """
        self._check_inputs(image, pixel_mask, tokens, token_mask)
        if self.truncate_text:
            tokens, token_mask = truncate_tokens(tokens, token_mask)
        taps = self.backbone.forward_taps(image)
        multilevel = torch.cat(taps, dim=-1)
        text_features = self.backbone.encode_text_tokens(tokens)
        visu_src = self.ml_visu_proj(multilevel)
        text_src = self.text_proj(text_features)
        text_pad = token_mask.eq(0)
        patch_pad = self.patch_mask(pixel_mask)
        visu_pad = torch.cat([patch_pad.new_zeros(patch_pad.shape[0], 1), patch_pad], dim=1)
        extra = {}
        if self.similarity_prior is not None:
            dense = self.backbone.dense_image_embeddings(taps[-1])
            similarity = centred_patch_similarity(eot_embeddings(text_features, tokens), dense,
                                                  patch_pad)
            visu_src = self.similarity_prior(visu_src, similarity)
            extra["similarity"] = similarity
        boxes, fusion_out = self.fusion(text_src, text_pad, visu_src, visu_pad,
                                        text_rows=self.backbone.context_length)
        kpm = torch.cat([text_pad.new_zeros(text_pad.shape[0], 1), text_pad, visu_pad], dim=1)
        return {
            **extra, "taps": taps, "visual_multilevel": multilevel, "text_features": text_features,
            "visu_src": visu_src, "text_src": text_src, "patch_mask": patch_pad,
            "fusion_key_padding_mask": kpm, "fusion_out": fusion_out,
            "reg_out": fusion_out[:, 0], "pred_boxes": boxes, "grid_size": self.backbone.grid_size,
        }

    def forward(self, image: Tensor, pixel_mask: Tensor, tokens: Tensor, token_mask: Tensor,
                intermediates: bool = False) -> Tensor | dict:
        """Predict one box per (image, expression) pair.

        Args:
            image: ``(B, 3, S, S)`` float, normalised, letter-boxed; padding pixels 0.
            pixel_mask: ``(B, S, S)`` int/bool, 1 = padding.
            tokens: ``(B, L)`` int64 CLIP BPE ids (SOT ... EOT, zero-padded), L = context length.
            token_mask: ``(B, L)`` int/bool, 1 = real token (SOT and EOT included).
        Returns:
            ``(B, 4)`` boxes ``(cx, cy, w, h)`` in ``(0, 1)`` of the padded canvas; with
            ``intermediates`` the dict of :meth:`forward_intermediates` (through ``forward`` so
            that DDP sees the call, e.g. for an auxiliary loss on the similarity map).
        """
        out = self.forward_intermediates(image, pixel_mask, tokens, token_mask)
        return out if intermediates else out["pred_boxes"]

    def _check_inputs(self, image: Tensor, pixel_mask: Tensor, tokens: Tensor,
                      token_mask: Tensor) -> None:
        B, L = image.shape[0], self.backbone.context_length
        size = self.backbone.visual.image_size
        ok = (image.dim() == 4 and tuple(image.shape[1:]) == (3, *size)
              and tuple(pixel_mask.shape) == (B, *size)
              and tuple(tokens.shape) == (B, L) and tuple(token_mask.shape) == (B, L))
        if not ok:
            raise ValueError(
                f"expected image (B,3,{size[0]},{size[1]}), pixel_mask (B,{size[0]},{size[1]}), "
                f"tokens and token_mask (B,{L}); got {tuple(image.shape)}, "
                f"{tuple(pixel_mask.shape)}, {tuple(tokens.shape)}, {tuple(token_mask.shape)}")


def build_model(cfg: ModelConfig) -> CLIPVG:
    """Build CLIP-VG from a :class:`~clipvg.config.ModelConfig`.

    The fusion width defaults to the towers' ``embed_dim`` (official: the text width); the
    position table covers ``1 + context_length + 1 + G*G`` tokens.
    """
    backbone = build_backbone(cfg)
    d_model = cfg.fusion.d_model or backbone.embed_dim
    seq_len = 1 + backbone.context_length + backbone.num_visual_tokens
    fusion = build_fusion(cfg.fusion, d_model, seq_len)
    conditioning = cfg.text_conditioning
    prior = (SimilarityPrior(d_model, conditioning.similarity_scale_init)
             if conditioning.similarity_prior else None)
    model = CLIPVG(backbone, fusion, cfg.patch_mask, prior, truncate_text=cfg.truncate_text)
    tuned = backbone.unfreeze_last_blocks(conditioning.tune_tower_blocks)
    ids = {id(p) for p in tuned}
    # parameter name -> lr multiplier (read by engine.steps.build_optimizer)
    model.lr_scales = {name: conditioning.tower_lr_scale for name, p in model.named_parameters()
                       if id(p) in ids}
    model.config = cfg  # what load_model/export_model and predict need to rebuild or preprocess
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` element counts over distinct parameter tensors."""
    params = list(model.parameters())  # nn.Module.parameters() already de-duplicates
    return (sum(p.numel() for p in params),
            sum(p.numel() for p in params if p.requires_grad))


def offline_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` without weight sources (for building a model whose weights come from elsewhere)."""
    return dataclasses.replace(cfg, pretrained=None, weights=None)
