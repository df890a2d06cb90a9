"""Template pseudo-labels: filtering, spatial words, templates, top-N and sampling, on
hand-written detections (640 x 640 image: tiny = area < 6400 = 80 x 80). Boxes x0, y0, x1, y1."""

import random

from clipvg.pseudo.common import filter_detections, iou
from clipvg.pseudo.template import expressions, spatial_words, template_samples

W = H = 640


def det(det_id, box, label, color=None, score=0.5):
    return dict(image_id="img", det_id=det_id, box=list(box), label=label, color=color,
                score=score)


def test_iou_by_hand():
    assert iou([0, 0, 100, 100], [10, 10, 105, 105]) == 8100 / 10925
    assert iou([0, 0, 100, 100], [50, 0, 150, 100]) == 5000 / 15000
    assert iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0


def test_tiny_boxes_and_duplicates_are_dropped():
    dets = [
        det("a", [0, 0, 100, 100], "circle", score=0.9),
        det("b", [10, 10, 105, 105], "circle", score=0.5),  # IoU 0.74 with a: duplicate
        det("c", [300, 300, 379, 380], "square", score=0.99),  # 6320 < 6400: tiny
        det("d", [300, 300, 380, 380], "square", score=0.7),  # exactly 6400: kept
        det("e", [50, 0, 150, 100], "star", score=0.95),  # IoU 1/3 with a: kept
        det("f", [0, 0, 100, 100], "star", score=0.3),  # IoU 1 with a, other class: dropped
    ]
    kept = filter_detections(dets, W, H)
    assert [d["det_id"] for d in kept] == ["e", "a", "d"]  # most confident first
    assert [d["det_id"] for d in filter_detections(dets[::-1], W, H)] == ["e", "a", "d"]
    loose = filter_detections(dets, W, H, min_area_frac=0.0, dup_iou=0.8)
    # no longer tiny, c (0.99) now wins over d (IoU 6320/6400 > 0.8); f: IoU 1 with a
    assert [d["det_id"] for d in loose] == ["c", "e", "a", "b"]


THREE_CIRCLES = [
    det("c1", [0, 0, 100, 100], "circle", "red", 0.9),  # centre (50, 50), area 10000
    det("c2", [200, 300, 320, 420], "circle", "blue", 0.8),  # (260, 360), 14400
    det("s1", [400, 400, 500, 500], "square", "green", 0.7),  # alone in its class
    det("c3", [500, 100, 590, 190], "circle", None, 0.6),  # (545, 145), 8100
]


def test_spatial_words_among_same_class_objects():
    words = spatial_words(THREE_CIRCLES)
    assert words == [["left", "top"], ["middle", "bottom", "bigger"], [], ["right", "smaller"]]


def test_spatial_words_need_a_strict_extreme():
    pair = [det("a", [0, 0, 100, 100], "square"), det("b", [0, 200, 100, 300], "square")]
    assert spatial_words(pair) == [["top"], ["bottom"]]  # same x centre and area: no word
    four = [det(str(i), [100 * i, 0, 100 * i + 90, 90], "star") for i in range(4)]
    assert [w for w in spatial_words(four)] == [["left"], [], [], ["right"]]  # even: no middle


def test_templates_fixed_word_order():
    assert expressions("circle", "red", ["left", "top"]) == [
        "red circle", "circle left", "circle on the left", "left red circle",
        "circle top", "circle at the top", "top red circle"]
    assert expressions("circle", None, ["middle", "bigger"]) == [
        "circle middle", "circle in the middle", "bigger circle"]
    assert expressions("star", None, []) == ["star"]
    assert expressions("star", "pink", []) == ["pink star"]


def test_top_n_objects_are_described_all_texts():
    rows = template_samples("img", W, H, THREE_CIRCLES, seed=0, dataset="d",
                            max_per_image=100)
    texts = [r["text"] for r in rows]
    assert texts == [
        "red circle", "circle left", "circle on the left", "left red circle", "circle top",
        "circle at the top", "top red circle",
        "blue circle", "circle middle", "circle in the middle", "middle blue circle",
        "circle bottom", "circle at the bottom", "bottom blue circle", "bigger circle",
        "bigger blue circle",
        "green square",
    ]  # c3 is 4th by confidence: not described (top_n=3), yet it shaped the circles' words
    boxes = {r["text"]: r["box"] for r in rows}
    assert boxes["red circle"] == [0, 0, 100, 100] and boxes["green square"] == [400, 400, 500, 500]
    assert rows[0]["sample_id"] == "template-img-0" and rows[-1]["sample_id"] == "template-img-16"
    assert {(r["source"], r["split"], r["dataset"], r["expr_type"]) for r in rows} == {
        ("template", "train", "d", None)}
    one = template_samples("img", W, H, THREE_CIRCLES, seed=0, dataset="d", top_n=1,
                           max_per_image=100)
    assert [r["text"] for r in one] == texts[:7]


def test_at_most_max_per_image_random_but_deterministic():
    full = [r["text"] for r in template_samples("img", W, H, THREE_CIRCLES, seed=0,
                                                dataset="d", max_per_image=100)]
    rows = template_samples("img", W, H, THREE_CIRCLES, seed=0, dataset="d")
    texts = [r["text"] for r in rows]
    assert len(texts) == 6 and [r["sample_id"][-1] for r in rows] == list("012345")
    assert texts == [t for t in full if t in texts]  # a subset, in template order
    shuffled = random.Random(1).sample(THREE_CIRCLES, 4)
    again = template_samples("img", W, H, shuffled, seed=0, dataset="d")
    assert again == rows  # input order does not matter
    subsets = {tuple(r["text"] for r in template_samples("img", W, H, THREE_CIRCLES, seed=s,
                                                         dataset="d")) for s in range(5)}
    assert len(subsets) > 1  # the seed picks the subset


def test_a_text_of_two_objects_is_kept_for_the_more_confident():
    dets = [det("a", [0, 0, 100, 100], "circle", "red", 0.9),
            det("b", [300, 0, 400, 100], "circle", "red", 0.8)]  # same y and area
    rows = template_samples("img", W, H, dets, seed=0, dataset="d", max_per_image=100)
    assert [r["text"] for r in rows] == [
        "red circle", "circle left", "circle on the left", "left red circle",
        "circle right", "circle on the right", "right red circle"]
    assert rows[0]["box"] == [0, 0, 100, 100]


def test_no_detections_left_gives_nothing():
    assert template_samples("img", W, H, [], seed=0, dataset="d") == []
    tiny = [det("a", [0, 0, 10, 10], "circle", "red", 0.9)]
    assert template_samples("img", W, H, tiny, seed=0, dataset="d") == []
