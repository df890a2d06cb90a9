"""The similarity prior: CLIP's own text-to-patch map, fed into the fusion as one channel.

CLIP-VG drops the towers' aligned space (visual ``ln_post``/``proj``) and makes the fusion
relearn text-to-patch matching through four randomly initialised matrices (``text_proj``,
``W_q``, ``W_k``, ``ml_visu_proj``); on a CPU budget the fusion never starts to read the text
(docs/pretraining.md). The towers already know which patches an expression describes: the
cosine between the expression's EOT embedding and each patch's dense CLIP embedding
(``ln_post(x_j) @ proj``, as MaskCLIP reads CLIP densely) picks the named object for most
expressions. This module hands that map to the fusion as a learned offset of every visual token:

    visu_src_j += scale * s_j * direction,    s_j = cos(eot, dense_j) - mean over valid patches

``s`` is 0 for the CLS token and for padded patches. ``scale`` (a scalar) and ``direction`` (a
D-vector) are learned; everything the map is computed from stays as the towers give it.
Works for any open_clip ViT tower with a visual ``proj``, including real CLIP weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def eot_embeddings(text_features: Tensor, tokens: Tensor) -> Tensor:
    """``(B, L, E)`` per-token text features -> ``(B, E)`` at each row's EOT token.

    CLIP's rule: the EOT id is the largest id in the vocabulary, so ``argmax`` finds it (the
    tokenizer keeps EOT as the last token when it truncates).
    """
    eot = tokens.argmax(dim=-1)
    return text_features[torch.arange(tokens.shape[0], device=tokens.device), eot]


def centred_patch_similarity(eot: Tensor, dense: Tensor, patch_pad: Tensor) -> Tensor:
    """Cosine of each patch with the expression, centred over the image's valid patches.

    Args:
        eot: ``(B, E)`` text embeddings.
        dense: ``(B, 1 + G*G, E)`` dense visual embeddings ``[CLS, patches]``.
        patch_pad: ``(B, G*G)`` bool, True = padded patch.
    Returns:
        ``(B, 1 + G*G)`` float32: 0 for CLS and padded patches; the valid patches' values sum
        to 0 per row (so an image-wide bias of the cosine carries no signal).
    """
    cos = F.cosine_similarity(dense[:, 1:], eot.unsqueeze(1), dim=-1)  # (B, G*G)
    valid = (~patch_pad).to(cos.dtype)
    mean = (cos * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp(min=1)
    centred = (cos - mean) * valid
    return torch.cat([centred.new_zeros(centred.shape[0], 1), centred], dim=1)


class SimilarityPrior(nn.Module):
    """``visu_src + scale * s * direction`` for a fusion of width ``d_model``.

    ``direction`` starts as a random unit-RMS vector (every channel of a LayerNorm-ed fusion
    sees it) and ``scale`` at ``scale_init``, so the map is visible from the first step.
    """

    def __init__(self, d_model: int, scale_init: float = 10.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.direction = nn.Parameter(torch.randn(d_model))

    def forward(self, visu_src: Tensor, similarity: Tensor) -> Tensor:
        """``visu_src`` ``(B, 1 + G*G, D)``, ``similarity`` ``(B, 1 + G*G)`` -> ``(B, 1 + G*G, D)``."""
        offset = (self.scale * similarity).unsqueeze(-1) * self.direction
        return visu_src + offset.to(visu_src.dtype)
