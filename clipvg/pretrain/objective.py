"""The tower pre-training objective: what the towers must know before CLIP-VG adapts them.

Three losses on one ``open_clip.CLIP`` (the towers CLIP-VG later loads) plus heads that exist
only here and are thrown away with the pre-training:

* **phrase-patch alignment** (GLIP / RegionCLIP style): a phrase's CLIP text embedding and each
  patch's dense CLIP embedding (``ln_post(patch) @ proj``, as MaskCLIP reads CLIP densely) score
  ``scale * cos + bias``; a sigmoid loss (SigLIP) says which cells belong to an object the
  phrase describes. This teaches the text tower the words and the image tower where things are.
* **per-patch heads**: colour, shape and size class (background as an extra class) and the
  owning object's box ``(cx, cy, w, h)`` from each patch token, so patch tokens carry what an
  object looks like and where its edges are, which is what a [REG] token later reads.
* **image-caption contrastive** (CLIP's own InfoNCE) on the global embeddings.

Shapes: ``B`` images, ``P`` phrases per image, ``G*G`` patch cells, ``W`` vision width,
``E`` embedding width.
"""

from __future__ import annotations

import math

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipvg.sources.synthetic.text import HUE_RING, SHAPES
from clipvg.pretrain.scenes import SIZE_NAMES


def encode_text_pooled(clip: open_clip.CLIP, tokens: Tensor) -> Tensor:
    """``(N, L)`` token ids (any ``L <= context``) -> ``(N, E)`` CLIP text embeddings at EOT.

    Same as ``clip.encode_text`` on the full context (the mask is causal, so the positions
    before EOT never see the padding), but cheaper on short phrases.
    """
    L = tokens.shape[1]
    x = clip.token_embedding(tokens) + clip.positional_embedding[:L]
    x = clip.transformer(x, attn_mask=clip.attn_mask[:L, :L])
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]  # EOT has the largest id
    return x @ clip.text_projection


def visual_tokens(clip: open_clip.CLIP, image: Tensor) -> Tensor:
    """``(B, 3, S, S)`` -> ``(B, 1 + G*G, W)``: the last block's residual stream, CLS first."""
    v = clip.visual
    x = v.conv1(image).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    return v.transformer(v.ln_pre(x))


def dense_embeddings(clip: open_clip.CLIP, image: Tensor) -> tuple[Tensor, Tensor]:
    """``(tokens (B, 1+G*G, W), dense (B, 1+G*G, E))``: last-block tokens and every token read
    the way CLIP reads its CLS token (``ln_post`` then ``proj``)."""
    tokens = visual_tokens(clip, image)
    return tokens, clip.visual.ln_post(tokens) @ clip.visual.proj


def _phrase_patch_cosine(clip: open_clip.CLIP, dense: Tensor, phrase_tokens: Tensor) -> Tensor:
    """``(B, P, G*G)`` cosines between each image's P phrases and its dense patch embeddings."""
    patches = F.normalize(dense[:, 1:], dim=-1)
    phrases = F.normalize(encode_text_pooled(clip, phrase_tokens), dim=-1)
    return torch.einsum("bpe,bge->bpg", phrases.view(dense.shape[0], -1, phrases.shape[-1]), patches)


def phrase_patch_similarity(clip: open_clip.CLIP, image: Tensor, phrase_tokens: Tensor) -> Tensor:
    """``(B, P, G*G)`` cosine similarity of each image's P phrases (``phrase_tokens`` (B*P, L))
    with its patches: what the towers alone know of where a phrase is."""
    return _phrase_patch_cosine(clip, dense_embeddings(clip, image)[1], phrase_tokens)


class TowerPretrainer(nn.Module):
    """``clip`` plus the pre-training-only heads; ``forward(batch)`` returns the losses."""

    def __init__(self, clip: open_clip.CLIP, weights: dict[str, float] | None = None):
        super().__init__()
        self.clip = clip
        width = clip.visual.conv1.out_channels
        self.color_head = nn.Linear(width, len(HUE_RING) + 1)
        self.shape_head = nn.Linear(width, len(SHAPES) + 1)
        self.size_head = nn.Linear(width, len(SIZE_NAMES) + 1)
        self.box_head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 4))
        self.head_norm = nn.LayerNorm(width)
        self.align_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.align_bias = nn.Parameter(torch.tensor(-5.0))
        self.weights = dict(align=1.0, cells=1.0, box=5.0, contrastive=0.5, **(weights or {}))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Losses (``loss`` = weighted sum) and a few accuracies for the curve.

        ``batch``: ``image`` (B,3,S,S); ``phrase_tokens`` (B*P, Lp); ``phrase_valid`` (B, P)
        bool; ``phrase_targets`` (B, P, G*G) bool; ``cell_color``/``cell_shape``/
        ``cell_size`` (B, G*G) int64; ``cell_box`` (B, G*G, 4); ``caption_tokens`` (B, Lc).
        """
        clip = self.clip
        tokens, dense = dense_embeddings(clip, batch["image"])  # (B, 1+GG, W), (B, 1+GG, E)
        B = dense.shape[0]
        cosine = _phrase_patch_cosine(clip, dense, batch["phrase_tokens"])
        logits = self.align_scale.exp() * cosine + self.align_bias
        valid = batch["phrase_valid"][..., None].expand_as(logits).float()
        align = (F.binary_cross_entropy_with_logits(logits, batch["phrase_targets"].float(), reduction="none")
                 * valid).sum() / valid.sum()

        cells = self.head_norm(tokens[:, 1:])  # (B, GG, W)
        fg = batch["cell_color"] < len(HUE_RING)
        color_logits, shape_logits = self.color_head(cells), self.shape_head(cells)
        cell_loss = (F.cross_entropy(color_logits.flatten(0, 1), batch["cell_color"].flatten())
                     + F.cross_entropy(shape_logits.flatten(0, 1), batch["cell_shape"].flatten())
                     + F.cross_entropy(self.size_head(cells).flatten(0, 1), batch["cell_size"].flatten()))
        box_pred = self.box_head(cells).sigmoid()
        box_loss = F.l1_loss(box_pred[fg], batch["cell_box"][fg]) if fg.any() else box_pred.sum() * 0

        images = F.normalize(dense[:, 0], dim=-1)
        captions = F.normalize(encode_text_pooled(clip, batch["caption_tokens"]), dim=-1)
        sim = clip.logit_scale.exp().clamp(max=100) * images @ captions.T
        labels = torch.arange(B, device=sim.device)
        contrastive = (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)) / 2

        w = self.weights
        loss = (w["align"] * align + w["cells"] * cell_loss + w["box"] * box_loss
                + w["contrastive"] * contrastive)
        with torch.no_grad():
            color_acc = (color_logits.argmax(-1) == batch["cell_color"])[fg].float().mean()
            shape_acc = (shape_logits.argmax(-1) == batch["cell_shape"])[fg].float().mean()
            # a positive phrase "finds" its object when its best-scoring cell is a target cell
            has_pos = batch["phrase_targets"].any(-1) & batch["phrase_valid"]
            top = logits.argmax(-1, keepdim=True)
            hit = batch["phrase_targets"].gather(-1, top).squeeze(-1)
            phrase_acc = hit[has_pos].float().mean()
        return dict(loss=loss, align=align, cells=cell_loss, box=box_loss, contrastive=contrastive,
                    color_acc=color_acc, shape_acc=shape_acc, phrase_top1=phrase_acc)
