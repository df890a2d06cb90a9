"""The shuffled-text control's text assignment and batch shuffler (clipvg.engine.control)."""

import random

import pytest
import torch

from clipvg.engine.control import (TextShuffler, batch_image_ids, control_summary, foreign_text_assignment,
                                   shuffled_text_table)
from clipvg.engine.metrics import AccuracyMeter


def test_every_sample_gets_a_text_of_another_image():
    for seed in range(20):
        rng = random.Random(seed)
        images = [rng.choice("abcd") for _ in range(rng.randint(1, 12))]
        carry = [rng.choice("abcde") for _ in range(rng.randint(0, 6))]
        pool = images + carry
        picks = foreign_text_assignment(images, carry, random.Random(seed))
        assert len(picks) == len(images)
        for i, j in enumerate(picks):
            if j is None:  # only when the whole pool is this sample's image
                assert set(pool) == {images[i]}
            else:
                assert 0 <= j < len(pool) and pool[j] != images[i]


def test_the_assignment_is_deterministic_per_seed():
    images, carry = list("aabbbcccdd"), list("eeff")
    assert foreign_text_assignment(images, carry, random.Random(3)) == \
        foreign_text_assignment(images, carry, random.Random(3))
    draws = {tuple(foreign_text_assignment(images, carry, random.Random(s))) for s in range(5)}
    assert len(draws) > 1  # the seed matters


def test_texts_are_permuted_when_the_images_allow_it():
    images = list("aaabbbccc")
    for seed in range(10):
        picks = foreign_text_assignment(images, [], random.Random(seed))
        assert None not in picks and sorted(picks) == list(range(len(images)))
    # in general: every text at most once exactly when no image's samples outnumber the
    # pool's texts of other images (Hall's condition for "text of another image")
    for seed in range(300):
        rng = random.Random(seed)
        images = [rng.choice("abcd"[:rng.randint(1, 4)]) for _ in range(rng.randint(1, 10))]
        carry = [rng.choice("abcde") for _ in range(rng.randint(0, 5))]
        pool = images + carry
        possible = all(images.count(g) <= len(pool) - pool.count(g) for g in images)
        picks = foreign_text_assignment(images, carry, random.Random(seed))
        assert (None not in picks and len(set(picks)) == len(picks)) == possible, (images, carry, picks)


def test_a_batch_of_one_image_takes_the_carried_texts():
    picks = foreign_text_assignment(["x"] * 4, ["y", "z", "x"], random.Random(0))
    assert set(picks) <= {4, 5}  # the carry starts at index 4; its "x" text is not foreign
    assert set(picks) == {4, 5}  # both foreign texts given out before one is reused


def test_no_foreign_text_skips_the_sample():
    assert foreign_text_assignment(["x"] * 3, [], random.Random(0)) == [None] * 3
    assert foreign_text_assignment(["x"] * 3, ["x", "x"], random.Random(0)) == [None] * 3
    assert foreign_text_assignment([], ["x"], random.Random(0)) == []


def _batch(image_ids, first_token):
    """A batch whose k-th text is token ``first_token + k`` (which text went where)."""
    n = len(image_ids)
    tokens = torch.zeros(n, 77, dtype=torch.int64)
    tokens[:, 0] = torch.arange(first_token, first_token + n)
    return {"image": torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 4, 4),
            "pixel_mask": torch.zeros(n, 4, 4, dtype=torch.int64), "tokens": tokens,
            "token_mask": (tokens > 0).to(torch.int64), "target": torch.rand(n, 4),
            "sample_id": [f"s{first_token + k}" for k in range(n)], "image_id": list(image_ids),
            "expr_type": ["t"] * n}


def test_the_shuffler_keeps_image_and_target_and_carries_texts_over():
    shuffler = TextShuffler(seed=0)
    first = _batch(["a", "a", "b", "b"], first_token=1)
    out = shuffler(first)
    assert out["sample_id"] == first["sample_id"]
    assert torch.equal(out["image"], first["image"]) and torch.equal(out["target"], first["target"])
    text_image = {1: "a", 2: "a", 3: "b", 4: "b"}
    got = out["tokens"][:, 0].tolist()
    assert [text_image[t] for t in got] == ["b", "b", "a", "a"]
    assert torch.equal(out["token_mask"], (out["tokens"] > 0).to(torch.int64))
    last = _batch(["b"], first_token=10)  # a last batch of one image: texts of batch 1's "a"
    out = shuffler(last)
    assert out["tokens"][0, 0].item() in (1, 2) and shuffler.skipped == 0


def test_the_shuffler_skips_and_counts_samples_without_a_foreign_text():
    shuffler = TextShuffler(seed=0)
    assert shuffler(_batch(["a", "a"], first_token=1)) is None
    assert shuffler(_batch(["a"], first_token=5)) is None
    assert shuffler.skipped == 3


def test_the_control_needs_image_ids():
    batch = _batch(["a", "b"], first_token=1)
    assert batch_image_ids(batch) == ["a", "b"]
    for ids in (None, ["a", None]):
        with pytest.raises(ValueError, match="image_id"):
            batch_image_ids({**batch, "image_id": ids})


def test_summary_and_history_table():
    meter = AccuracyMeter()
    assert control_summary(meter, 3) == {"acc": None, "total": 0, "skipped": 3, "per_type": {}}
    meter.add(torch.tensor([0.9, 0.1]), ["x", "y"])
    summary = control_summary(meter, 0)
    assert summary["acc"] == 0.5 and summary["per_type"] == {"x": 1.0, "y": 0.0}
    test = {"test": {"acc": 0.8, "shuffled_text": summary}, "old": {"acc": 0.7}}
    assert shuffled_text_table(test) == {"test": {"acc": 0.5, "per_type": {"x": 1.0, "y": 0.0}}}
