"""Referring-expression text -> CLIP BPE token ids (method doc §1.3 step 3, §1.4).

Sequence layout, per text, for context length L (77 for every CLIP model)::

    [SOT=49406, bpe_1, ..., bpe_n, EOT=49407, 0, ..., 0]      (length L)

``token_mask`` is 1 where the id is > 0 (SOT and EOT count as real tokens), 0 on padding. This
reproduces an official quirk on purpose: BPE id 0 is the token "!", so a "!" in a text is masked
like padding, exactly as in the original loader (and in the fixtures' ``token_mask``).

The BPE itself is open_clip's ``SimpleTokenizer`` (ftfy fix, HTML unescape, whitespace
normalisation, lower-casing, OpenAI's ``bpe_simple_vocab_16e6.txt.gz``); nothing is re-implemented
here except the SOT/EOT framing, padding, and what to do with over-long texts. The original
tokenizer rejects texts longer than L-2 BPE tokens; ``overflow="truncate"`` (our default, see
``DataConfig.text_overflow``) keeps the first L-2 ids instead and counts how often that happened.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

SOT_ID = 49406  # "<start_of_text>" in the CLIP vocabulary
EOT_ID = 49407  # "<end_of_text>"
DEFAULT_CONTEXT_LENGTH = 77


class TextTooLongError(ValueError):
    """A text has more BPE tokens than fit between SOT and EOT (overflow="error")."""


class EmptyTextError(ValueError):
    """A text has no BPE token (empty, blank, or nothing the tokenizer keeps)."""


@dataclass(frozen=True)
class TokenizedText:
    """A batch of tokenized texts.

    tokens: (N, L) int64, SOT + BPE ids + EOT, right-padded with 0.
    token_mask: (N, L) int64, 1 where ``tokens > 0``, else 0.
    truncated: how many of the N texts were cut to L-2 BPE tokens.
    dropped: how many BPE tokens the cuts removed, over all N texts.
    """

    tokens: torch.Tensor
    token_mask: torch.Tensor
    truncated: int
    dropped: int = 0


@functools.lru_cache(maxsize=1)
def _bpe_tokenizer():
    """The open_clip CLIP tokenizer; built once per process (it parses the 1.3 MB vocab file)."""
    # deferred: loads open_clip; paid only when this runs, not on import
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    # Guard against a future open_clip changing the special ids under us.
    if (tok.sot_token_id, tok.eot_token_id) != (SOT_ID, EOT_ID):
        raise RuntimeError(
            f"open_clip SimpleTokenizer has SOT/EOT {tok.sot_token_id}/{tok.eot_token_id}, "
            f"expected {SOT_ID}/{EOT_ID}"
        )
    return tok


def bpe_ids(text: str) -> list[int]:
    """BPE ids of one text, without SOT/EOT (after open_clip's cleaning and lower-casing)."""
    return _bpe_tokenizer().encode(text)


def prepare_text(text: str, template: str = "{}") -> str:
    """Apply the prompt template, then lower-case, as the official loader does (§1.3 step 3).

    ``template`` must contain one ``{}`` placeholder (``DataConfig.prompt_template``), e.g.
    ``"find the region that corresponds to the description {}"``.
    """
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{}}' placeholder")
    return template.format(text).lower()


def _snippet(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def tokenize(
    texts: list[str],
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    overflow: Literal["truncate", "error"] = "truncate",
) -> TokenizedText:
    """Tokenize ``texts`` into fixed-length CLIP id sequences.

    Args:
        texts: N strings. A text with no BPE token (empty or whitespace only) is an
            :class:`EmptyTextError`.
        context_length: L, the sequence length including SOT and EOT (CLIP: 77).
        overflow: for texts with more than L-2 BPE tokens: "truncate" keeps the first L-2 ids
            and still ends with EOT; "error" raises :class:`TextTooLongError`.

    Returns:
        :class:`TokenizedText` with ``tokens``/``token_mask`` of shape (N, L), int64.
    """
    if isinstance(texts, str):  # a bare str would otherwise be tokenized per character
        raise TypeError("tokenize() takes a list of strings, not a single str")
    if overflow not in ("truncate", "error"):
        raise ValueError(f"overflow must be 'truncate' or 'error', got {overflow!r}")
    if context_length < 3:
        raise ValueError(f"context_length must be >= 3 (SOT, a token, EOT), got {context_length}")
    room = context_length - 2
    tokens = torch.zeros(len(texts), context_length, dtype=torch.int64)
    truncated = dropped = 0
    for idx, text in enumerate(texts):
        ids = bpe_ids(text)
        if not ids:
            raise EmptyTextError(f"text {idx} is empty (no BPE tokens): {_snippet(text)}")
        if len(ids) > room:
            if overflow == "error":
                raise TextTooLongError(
                    f"text {idx} has {len(ids)} BPE tokens, more than the {room} that fit in "
                    f"context length {context_length}: {_snippet(text)}"
                )
            dropped += len(ids) - room
            ids = ids[:room]
            truncated += 1
        seq = [SOT_ID, *ids, EOT_ID]
        tokens[idx, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
    token_mask = (tokens > 0).to(torch.int64)  # official rule: id > 0 (see module docstring)
    return TokenizedText(tokens=tokens, token_mask=token_mask, truncated=truncated, dropped=dropped)
