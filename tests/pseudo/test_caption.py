"""Caption pseudo-labels: the rule-based head noun, the tiny lemmatiser, matching to the most
confident filtered detection, max per image (640 x 640 image; boxes x0, y0, x1, y1)."""

import pytest

from clipvg.pseudo.caption import caption_samples, head_noun, lemma

W = H = 640


@pytest.mark.parametrize("caption, noun", [
    ("a red circle next to a blue square", "circle"),
    ("a picture of a green star", "star"),
    ("Two small red circles near a star.", "circles"),
    ("there are three crosses", "crosses"),
    ("an orange star on a plain background", "star"),
    ("a man riding a horse", "man"),
    ("a tall building next to a tree", "building"),
    ("the", None),
    ("", None),
    ("a picture of", None),
])
def test_head_noun(caption, noun):
    assert head_noun(caption) == noun


@pytest.mark.parametrize("word, singular", [
    ("circles", "circle"), ("boxes", "box"), ("crosses", "cross"), ("berries", "berry"),
    ("people", "person"), ("glass", "glass"), ("bus", "bus"), ("rhombus", "rhombus"),
    ("stars", "star"), ("dishes", "dish"), ("ties", "tie"), ("star", "star"),
])
def test_lemma(word, singular):
    assert lemma(word) == singular


def det(det_id, box, label, score):
    return dict(image_id="img", det_id=det_id, box=list(box), label=label, color=None,
                score=score)


DETS = [
    det("d0", [300, 300, 400, 400], "circle", 0.6),
    det("d1", [0, 0, 100, 100], "circle", 0.9),
    det("d2", [500, 500, 540, 540], "star", 0.95),  # tiny (1600 < 6400): filtered out
    det("d3", [200, 0, 300, 100], "square", 0.7),
]


def cap(cid, text):
    return dict(image_id="img", caption_id=cid, caption=text, score=0.5)


def test_whole_caption_paired_with_the_most_confident_matching_detection():
    captions = [cap("c0", "two circles next to a square"),
                cap("c1", "a picture of a green star"),  # the star is tiny: no match
                cap("c2", "a blue square"),
                cap("c3", "a red diamond")]  # no diamond: nothing
    rows = caption_samples("img", W, H, captions[::-1], DETS, seed=0, dataset="d")
    assert [(r["text"], r["box"]) for r in rows] == [
        ("two circles next to a square", [0, 0, 100, 100]),
        ("a blue square", [200, 0, 300, 100]),
    ]
    assert [r["sample_id"] for r in rows] == ["caption-img-0", "caption-img-1"]
    assert rows[0]["source"] == "caption" and rows[0]["expr_type"] is None


def test_at_most_max_per_image_and_a_swappable_extractor():
    captions = [cap(f"c{i}", f"a circle in room {i}") for i in range(8)]
    rows = caption_samples("img", W, H, captions, DETS, seed=0, dataset="d")
    texts = [r["text"] for r in rows]
    assert len(rows) == 6 and texts == sorted(texts)  # a subset, in caption_id order
    assert rows == caption_samples("img", W, H, captions[::-1], DETS, seed=0, dataset="d")
    three = caption_samples("img", W, H, captions, DETS, seed=0, dataset="d", max_per_image=3)
    assert len(three) == 3
    squares = caption_samples("img", W, H, captions[:2], DETS, seed=0, dataset="d",
                              head_noun=lambda c: "squares")
    assert [r["box"] for r in squares] == [[200, 0, 300, 100]] * 2
    assert caption_samples("img", W, H, captions, [], seed=0, dataset="d") == []
