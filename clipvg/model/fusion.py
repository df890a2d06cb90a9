"""The vision-language fusion of CLIP-VG: DETR post-norm encoder, [REG] token, box head.

Method doc §2.1 and §2.3. The fusion sequence is ``[REG | text tokens | visual CLS | patches]``;
a learned position table (one row per sequence position) is added to the queries and keys, never
to the values, in every layer; there is no final LayerNorm. The box head reads position 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipvg.config import FusionConfig


class FusionEncoderLayer(nn.Module):
    """DETR post-norm encoder layer.

    ``x = norm1(x + drop(attn(q=x+pos, k=x+pos, v=x)))``;
    ``x = norm2(x + drop(linear2(drop(relu(linear1(x))))))``.
    ``self_attn`` is a ``torch.nn.MultiheadAttention`` (``in_proj_weight`` rows ``[Wq; Wk; Wv]``).
    """

    def __init__(self, d_model: int, heads: int, dim_feedforward: int, dropout: float,
                 layernorm_eps: float = 1e-5):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=layernorm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layernorm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """``x`` (B, L, D), ``pos`` (B or 1, L, D), ``key_padding_mask`` (B, L) True = ignore."""
        qk = x + pos
        attn = self.self_attn(qk, qk, x, key_padding_mask=key_padding_mask,
                              need_weights=False)[0]
        x = self.norm1(x + self.dropout1(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout2(ffn))


class FusionEncoder(nn.Module):
    """A stack of :class:`FusionEncoderLayer`, no final norm, Xavier-initialised (DETR)."""

    def __init__(self, num_layers: int, d_model: int, heads: int, dim_feedforward: int,
                 dropout: float, layernorm_eps: float = 1e-5):
        super().__init__()
        self.layers = nn.ModuleList(
            FusionEncoderLayer(d_model, heads, dim_feedforward, dropout, layernorm_eps)
            for _ in range(num_layers))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # DETR: every matrix Xavier-uniform; MHA biases stay 0 and FFN biases keep the PyTorch
        # default, LayerNorms 1/0.
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: Tensor, pos: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """``(B, L, D)`` -> ``(B, L, D)``: the output of the last layer."""
        for layer in self.layers:
            x = layer(x, pos, key_padding_mask)
        return x


class MLP(nn.Module):
    """``num_layers`` linears with ReLU between them (DETR's box MLP)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class VLFusion(nn.Module):
    """[REG] token + position table + fusion encoder + box head.

    Args:
        d_model: fusion width D.
        seq_len: ``1 + text tokens + visual tokens`` (275 for ViT-B/16 with context 77).
    """

    def __init__(self, d_model: int, seq_len: int, num_layers: int, heads: int,
                 dim_feedforward: int, dropout: float, layernorm_eps: float = 1e-5):
        super().__init__()
        self.reg_token = nn.Embedding(1, d_model)  # N(0, 1) init, as the official Embedding
        self.pos_embed = nn.Embedding(seq_len, d_model)
        self.encoder = FusionEncoder(num_layers, d_model, heads, dim_feedforward, dropout,
                                     layernorm_eps)
        self.box_head = MLP(d_model, d_model, 4, 3)

    @property
    def seq_len(self) -> int:
        return self.pos_embed.num_embeddings

    def forward(self, text_src: Tensor, text_pad: Tensor, visu_src: Tensor,
                visu_pad: Tensor, text_rows: int | None = None) -> tuple[Tensor, Tensor]:
        """Fuse text and visual tokens and regress the box.

        Args:
            text_src: ``(B, Lt, D)`` projected text tokens.
            text_pad: ``(B, Lt)`` bool, True = ignored token.
            visu_src: ``(B, Lv, D)`` projected visual tokens ``[CLS, patches]``.
            visu_pad: ``(B, Lv)`` bool, True = ignored token (CLS must be False).
            text_rows: the text rows of the position table (the context length) when the text
                is truncated to its first ``Lt <= text_rows`` positions (``model.truncate_text``:
                text rows ``Lt..`` are skipped, the visual tokens keep their rows); None = the
                text fills its rows.
        Returns:
            ``boxes`` ``(B, 4)`` sigmoid ``(cx, cy, w, h)``; ``fusion_out`` ``(B, 1+Lt+Lv, D)``.
        """
        B, Lt = text_src.shape[:2]
        rows = Lt if text_rows is None else text_rows
        reg = self.reg_token.weight.unsqueeze(0).expand(B, -1, -1)
        x = torch.cat([reg, text_src, visu_src], dim=1)
        if 1 + rows + visu_src.shape[1] != self.seq_len or Lt > rows:
            raise ValueError(f"fusion sequence has {1 + rows + visu_src.shape[1]} tokens "
                             f"({x.shape[1]} kept), the position table {self.seq_len}")
        pos = self.pos_embed.weight
        if rows != Lt:
            pos = torch.cat([pos[:1 + Lt], pos[1 + rows:]])
        reg_pad = text_pad.new_zeros(B, 1)
        mask = torch.cat([reg_pad, text_pad, visu_pad], dim=1)
        out = self.encoder(x, pos.unsqueeze(0), mask)
        boxes = self.box_head(out[:, 0]).sigmoid()
        return boxes, out


def build_fusion(cfg: FusionConfig, d_model: int, seq_len: int) -> VLFusion:
    """The fusion module for ``cfg`` at width ``d_model`` (``cfg.d_model`` already resolved)."""
    if d_model % cfg.heads:
        raise ValueError(f"fusion d_model {d_model} is not divisible by heads {cfg.heads}")
    return VLFusion(d_model, seq_len, cfg.layers, cfg.heads, cfg.dim_feedforward, cfg.dropout,
                    cfg.layernorm_eps)
