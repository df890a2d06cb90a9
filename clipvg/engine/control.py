"""The shuffled-text control: does a grounding model read the expression?

Every evaluation also measures Acc@0.5 with each sample's text (``tokens`` + ``token_mask``)
replaced by the text of a sample of *another image*, keeping the sample's image and target
box. A model that reads the text falls to or below the random-object baseline; a text-blind model
(one that learnt "the salient object") scores what it scores with the real texts.

It works in one pass over any iterable of batches (a Ray Data iterator cannot be iterated
twice): the foreign texts of a batch are drawn from the batch itself plus a carry-over of the
previous batch's texts, so a last batch holding a single image still gets foreign texts. A
sample for which no text of another image exists (a split with one image) is skipped and
counted. The draws come from the control's own ``random.Random``, never the global RNG, so an
evaluation leaves the training randomness (and the golden loss curve) untouched.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Sequence

import torch
from torch import Tensor

from clipvg.engine.metrics import AccuracyMeter


def foreign_text_assignment(image_ids: Sequence[str], carry_image_ids: Sequence[str],
                            rng: random.Random) -> list[int | None]:
    """For each of the ``B`` samples of a batch, which text it is shown in the control.

    The text pool is the batch's own texts (indices ``0 .. B-1``) followed by the ``C`` carried
    texts of the previous batch (indices ``B .. B+C-1``); ``image_ids`` / ``carry_image_ids``
    name each text's image. Sample ``i`` gets a pool index whose image differs from
    ``image_ids[i]``, or None when the pool has no such text. Whenever the images allow it,
    every text is given out at most once (a random maximum matching: the control then sees the
    batch's texts, each once, rather than over-weighting a few); samples left over (one image
    holds most of the pool) reuse a random foreign text rather than being lost.
    Deterministic for a given ``rng`` state.
    """
    pool = [*image_ids, *carry_image_ids]
    foreign = []
    for image in image_ids:
        texts = [j for j, other in enumerate(pool) if other != image]
        rng.shuffle(texts)  # random order = a random matching among the possible ones
        foreign.append(texts)
    assign: list[int | None] = [None] * len(image_ids)
    owner: dict[int, int] = {}  # text -> the sample it is given to
    order = list(range(len(image_ids)))
    rng.shuffle(order)
    for i in order:
        _augment(i, foreign, owner, assign)
    for i in order:  # no text left for them: reuse one
        if assign[i] is None and foreign[i]:
            assign[i] = rng.choice(foreign[i])
    return assign


def _augment(i: int, foreign: list[list[int]], owner: dict[int, int], assign: list[int | None]) -> bool:
    """Give sample ``i`` a free text, moving other samples along an alternating path when
    needed (Kuhn's augmenting path, breadth-first: no recursion depth limit). True if done."""
    reached_from: dict[int, int] = {}  # text -> the sample whose search reached it
    queue = deque([i])
    while queue:
        sample = queue.popleft()
        for text in foreign[sample]:
            if text in reached_from:
                continue
            reached_from[text] = sample
            if text not in owner:  # free: shift every sample on the path to its next text
                while True:
                    sample = reached_from[text]
                    previous = assign[sample]
                    assign[sample], owner[text] = text, sample
                    if sample == i:
                        return True
                    text = previous
            queue.append(owner[text])
    return False


class TextShuffler:
    """Turns each evaluated batch into its control batch (see module doc), keeping the carry.

    Call it on every batch in order: ``shuffler(batch)`` returns the control batch, the samples
    that found a foreign text with (K = samples kept, B = batch size)

    * ``image`` (K, 3, S, S), ``pixel_mask`` (K, S, S), ``target`` (K, 4): the sample's own
    * ``tokens``, ``token_mask`` (K, L): the foreign texts
    * ``sample_id`` and, when the batch has it, ``expr_type``: lists of length K

    or None when every sample was skipped (``skipped`` counts them).
    """

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.skipped = 0
        self._carry: tuple[Tensor, Tensor, list[str]] | None = None  # tokens, token_mask, image ids

    def __call__(self, batch: dict) -> dict | None:
        image_ids = batch_image_ids(batch)
        tokens, token_mask, carry_ids = batch["tokens"], batch["token_mask"], []
        if self._carry is not None:
            carry_tokens, carry_mask, carry_ids = self._carry
            tokens = torch.cat([tokens, carry_tokens.to(tokens.device)])
            token_mask = torch.cat([token_mask, carry_mask.to(token_mask.device)])
        picks = foreign_text_assignment(image_ids, carry_ids, self.rng)
        self._carry = (batch["tokens"], batch["token_mask"], image_ids)
        keep = [i for i, j in enumerate(picks) if j is not None]
        self.skipped += len(picks) - len(keep)
        if not keep:
            return None
        rows = torch.tensor(keep, device=batch["image"].device)
        texts = torch.tensor([picks[i] for i in keep], device=tokens.device)
        out = {"image": batch["image"].index_select(0, rows),
               "pixel_mask": batch["pixel_mask"].index_select(0, rows),
               "target": batch["target"].index_select(0, rows.to(batch["target"].device)),
               "tokens": tokens.index_select(0, texts), "token_mask": token_mask.index_select(0, texts),
               "sample_id": [batch["sample_id"][i] for i in keep]}
        if batch.get("expr_type") is not None:
            out["expr_type"] = [batch["expr_type"][i] for i in keep]
        return out


def batch_image_ids(batch: dict) -> list[str]:
    """The batch's ``image_id`` list; an error when missing or incomplete, because without
    it a sample could be shown a text of its own image and the control would lie."""
    ids = batch.get("image_id")
    if ids is None or any(i is None for i in ids):
        raise ValueError("the shuffled-text control needs every sample's image_id in the batch "
                         "(or evaluate(..., shuffled_text=False))")
    if len(ids) != len(batch["sample_id"]):
        raise ValueError(f"{len(ids)} image ids for {len(batch['sample_id'])} samples")
    return list(ids)


def control_summary(meter: AccuracyMeter, skipped: int) -> dict:
    """The ``shuffled_text`` entry of an evaluation summary; ``acc`` None when no sample could
    be shown a foreign text (JSON has no NaN)."""
    return {"acc": meter.accuracy if meter.total else None, "total": meter.total, "skipped": skipped,
            "per_type": meter.group_accuracy()}


def shuffled_text_table(test: dict) -> dict:
    """``history["test"]`` (split -> summary) -> ``history["test_shuffled_text"]`` (split ->
    ``{"acc", "per_type"}``) for the splits whose summary has the control."""
    return {split: {"acc": s["shuffled_text"]["acc"], "per_type": s["shuffled_text"]["per_type"]}
            for split, s in test.items() if "shuffled_text" in s}


def fmt_acc(value: float | None) -> str:
    """An accuracy for a log line (``n/a`` when the control had no sample)."""
    return "n/a" if value is None else f"{value:.4f}"
