"""``model.truncate_text``: the text tower and the fusion run only up to the batch's longest
expression, and compute what the full-length model computes (fp32, within 1e-5)."""

import dataclasses

import pytest
import torch

from clipvg.config import FusionConfig, TextConditioningConfig
from clipvg.model import build_model
from clipvg.model.clipvg import TEXT_ROUND, truncate_tokens

CONTEXT = 40  # longer than the tiny conftest's 16, so that truncation has padding to drop
VOCAB = 500


def mixed_batch(lengths: list[int], size: int, seed: int = 0):
    """Images, pixel masks (some padding), and SOT w1..wn EOT token rows of ``lengths`` words."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    image = torch.randn(B, 3, size, size, generator=g)
    pixel_mask = torch.zeros(B, size, size, dtype=torch.int64)
    pixel_mask[0, :, 40:] = 1
    tokens = torch.zeros(B, CONTEXT, dtype=torch.int64)
    for i, n in enumerate(lengths):
        tokens[i, 0] = VOCAB - 2
        tokens[i, 1:1 + n] = torch.randint(1, VOCAB - 2, (n,), generator=g)
        tokens[i, 1 + n] = VOCAB - 1  # EOT: the largest id
    return image, pixel_mask, tokens, (tokens > 0).to(torch.int64)


def models(make_config, **overrides):
    cfg = make_config(context_length=CONTEXT, freeze="none", **overrides)
    cfg = dataclasses.replace(cfg, arch={**cfg.arch, "text_cfg": {**cfg.arch["text_cfg"], "context_length": CONTEXT}})
    torch.manual_seed(0)
    full = build_model(cfg).eval()
    torch.manual_seed(0)
    cut = build_model(dataclasses.replace(cfg, truncate_text=True)).eval()
    cut.load_state_dict(full.state_dict())
    return full, cut


def test_truncate_tokens_keeps_the_longest_row_rounded_up():
    _, _, tokens, mask = mixed_batch([1, 9, 3], 64)  # longest row: 11 tokens -> 16
    t, m = truncate_tokens(tokens, mask)
    assert t.shape == m.shape == (3, 2 * TEXT_ROUND)
    assert torch.equal(t, tokens[:, :16]) and tokens[:, 16:].eq(0).all()
    full = torch.ones(2, 10, dtype=torch.int64)  # no padding: nothing to cut (and never past L)
    assert truncate_tokens(full, full)[0].shape == (2, 10)


@pytest.mark.parametrize("prior", [False, True])
def test_truncated_model_matches_the_full_one(make_config, prior):
    overrides = {}
    if prior:
        overrides["text_conditioning"] = TextConditioningConfig(similarity_prior=True)
    full, cut = models(make_config, **overrides)
    batch = mixed_batch([2, 13, 5, 1], 64)  # longest: 15 tokens -> 16 of 40 positions
    with torch.no_grad():
        a = full(*batch, intermediates=True)
        b = cut(*batch, intermediates=True)
    assert b["text_features"].shape[1] == 16 and a["text_features"].shape[1] == CONTEXT
    assert b["fusion_out"].shape[1] == a["fusion_out"].shape[1] - (CONTEXT - 16)
    torch.testing.assert_close(b["pred_boxes"], a["pred_boxes"], rtol=0, atol=1e-5)
    torch.testing.assert_close(b["reg_out"], a["reg_out"], rtol=0, atol=1e-5)
    torch.testing.assert_close(b["text_features"], a["text_features"][:, :16], rtol=0, atol=1e-5)
    if prior:
        torch.testing.assert_close(b["similarity"], a["similarity"], rtol=0, atol=1e-5)
    # the kept fusion tokens ([REG], real text, visual) are those of the full model
    keep = torch.cat([torch.ones(1 + 16, dtype=torch.bool), torch.zeros(CONTEXT - 16, dtype=torch.bool),
                      torch.ones(a["fusion_out"].shape[1] - 1 - CONTEXT, dtype=torch.bool)])
    real = ~b["fusion_key_padding_mask"]
    torch.testing.assert_close(b["fusion_out"][real], a["fusion_out"][:, keep][real], rtol=0, atol=1e-5)


def test_truncated_model_has_the_same_gradients(make_config):
    # no dropout (the fusion's attention dropout too): the two models must draw nothing different
    full, cut = models(make_config, fusion=FusionConfig(layers=2, heads=4, dim_feedforward=64, dropout=0.0))
    full.train(), cut.train()
    batch = mixed_batch([3, 6], 64, seed=1)
    full(*batch).sum().backward()
    cut(*batch).sum().backward()
    for (name, p), q in zip(full.named_parameters(), cut.parameters()):
        if p.grad is not None and name != "backbone.positional_embedding":
            torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-5, msg=name)
    # the text positions past the cut get no gradient at all; the real ones the same
    torch.testing.assert_close(cut.backbone.positional_embedding.grad[:8],
                               full.backbone.positional_embedding.grad[:8], rtol=0, atol=1e-5)
    assert cut.backbone.positional_embedding.grad[8:].eq(0).all()
