"""Pseudo-Q's people / clothing rules in the template source, on hand-written detections (640 x
480 image: tiny = area < 4800). Boxes x0, y0, x1, y1; expected texts worked out by hand from the
rules of LeapLabTHU/Pseudo-Q pseudo_sample_generation/pseudo_query_generation.py."""

from clipvg.pseudo.template import attach_clothes, clothing_expressions, template_samples
from clipvg.sources.records import vocab

W, H = 640, 480


def det(det_id, box, label, color=None, score=0.5):
    return dict(image_id="img", det_id=det_id, box=list(box), label=label, color=color,
                score=score)


def texts(dets, **kw):
    rows = template_samples("img", W, H, dets, seed=0, dataset="d", max_per_image=100, **kw)
    return [(r["text"], r["box"]) for r in rows]


def test_class_lists_are_pseudoqs():
    # data/statistic/detect_{people,hat,shirt,pants,shoes}_classes.txt: 28, 10, 41, 14, 10 lines
    assert [len(x) for x in (vocab.PEOPLE_CLASSES, vocab.HAT_CLASSES, vocab.SHIRT_CLASSES,
                             vocab.PANTS_CLASSES, vocab.SHOES_CLASSES)] == [28, 10, 41, 14, 10]
    people = set(vocab.PEOPLE_CLASSES)
    assert {"man", "woman", "boy", "girl", "person", "she", "policeman"} <= people
    # a class in two lists is the first of hat, shirt, pants, shoes
    assert [vocab.clothing_kind(c) for c in ("cap", "scarf", "jacket", "jeans", "shorts",
                                             "boots", "sneaker", "table")] == [
        "hat", "hat", "shirt", "shirt", "pants", "pants", "shoes", None]


BOY = det("p1", [100, 100, 200, 400], "boy", score=0.9)  # h 300, feet at y 400


def test_clothes_attach_by_containment_hat_top_quarter_pants_lower_half():
    boy2 = det("p2", [400, 80, 500, 400], "boy", score=0.8)  # h 320
    clothes = [
        # inside p1, cy 350: (400 - 350) / 300 = 0.17 < 0.5
        det("c1", [110, 300, 190, 400], "pants", "gray", 0.7),
        det("c2", [110, 120, 190, 200], "shorts", None, 0.69),  # cy 160: 0.8, not the lower half
        det("c3", [120, 250, 180, 290], "hat", "red", 0.65),  # cy 270: 0.43, not the upper quarter
        det("c4", [130, 160, 170, 190], "beanie", None, 0.64),  # cy 175: exactly 0.75, not > 0.75
        det("c5", [170, 100, 210, 200], "jacket", None, 0.63),  # 3000 / 4000 inside: not > 75 %
        det("c6", [175, 100, 205, 200], "vest", None, 0.62),  # 2500 / 3000 = 83 % inside p1
        det("c7", [410, 150, 490, 250], "shirt", None, 0.6),  # inside p2
        det("c8", [420, 82, 480, 110], "cap", None, 0.55),  # p2: cy 96: (400-96)/320 = 0.95
    ]
    worn = attach_clothes([BOY, boy2], clothes)
    # kinds in order hat, shirt, pants, shoes; within a kind in the given order
    assert [[c["det_id"] for c in w] for w in worn] == [["c6", "c1"], ["c8", "c7"]]


def test_clothing_templates_fixed_word_order():
    assert clothing_expressions("boy", ["gray pants"], ["left"]) == [
        "boy gray pants", "gray pants boy",
        "boy gray pants left", "boy left gray pants", "gray pants boy left", "gray pants left boy",
        "left boy gray pants", "left gray pants boy",
        "boy gray pants on the left", "boy on the left gray pants", "gray pants boy on the left"]
    assert clothing_expressions("young man", ["shirt", "cap"], ["bigger"]) == [
        "young man shirt", "shirt young man", "young man cap", "cap young man",
        "bigger young man shirt", "bigger shirt young man", "bigger young man cap",
        "bigger cap young man"]
    assert clothing_expressions("girl", ["hat"], ["top"]) == [
        "girl hat", "hat girl", "girl hat top", "girl top hat", "hat girl top", "hat top girl",
        "top girl hat", "top hat girl"]  # no phrase form for top / bottom (Pseudo-Q has none)
    assert clothing_expressions("girl", ["hat"], ["middle"])[-3:] == [
        "girl hat in the middle", "girl in the middle hat", "hat girl in the middle"]
    assert clothing_expressions("boy", [], ["left"]) == []


def test_people_first_their_clothes_and_no_clothes_alone():
    man = det("p2", [400, 80, 500, 400], "man", "young", 0.8)
    dets = [BOY, man,
            det("c1", [110, 300, 190, 400], "pants", "gray", 0.7),
            det("c7", [410, 150, 490, 250], "shirt", "white", 0.6),
            det("t1", [250, 300, 380, 450], "table", "brown", 0.95)]
    b, m, t = BOY["box"], man["box"], [250, 300, 380, 450]
    # one boy, one man, one table: no spatial word; people first although the table is the
    # most confident; clothes are never described on their own
    assert texts(dets) == [
        ("boy", b), ("boy gray pants", b), ("gray pants boy", b),
        ("young man", m), ("young man white shirt", m), ("white shirt young man", m),
        ("brown table", t)]
    assert texts(dets, top_n=2) == texts(dets)[:6]  # two people fill the top 2


def test_the_figure_3_examples_two_boys():
    boy2 = det("p2", [400, 80, 500, 400], "boy", score=0.8)
    dets = [BOY, boy2, det("c1", [110, 300, 190, 400], "pants", "gray", 0.7),
            det("c7", [410, 150, 490, 250], "shirt", None, 0.6)]
    got = texts(dets)
    b1, b2 = BOY["box"], boy2["box"]
    # boys: x centres 150 / 450 -> left / right; y centres 250 / 240 -> bottom / top; areas
    # 30000 / 32000 -> smaller / bigger. So boy 1: left, bottom, smaller
    first = ["boy left", "boy on the left", "boy bottom", "boy at the bottom", "smaller boy",
             "boy gray pants", "gray pants boy",
             "boy gray pants left", "boy left gray pants", "gray pants boy left",
             "gray pants left boy", "left boy gray pants", "left gray pants boy",
             "boy gray pants on the left", "boy on the left gray pants",
             "gray pants boy on the left",
             "boy gray pants bottom", "boy bottom gray pants", "gray pants boy bottom",
             "gray pants bottom boy", "bottom boy gray pants", "bottom gray pants boy",
             "smaller boy gray pants", "smaller gray pants boy"]
    assert got[:len(first)] == [(t, b1) for t in first]
    rest = dict(got[len(first):])
    assert rest["right shirt boy"] == b2 and rest["boy right shirt"] == b2
    assert rest["top shirt boy"] == b2 and rest["bigger boy shirt"] == b2
    assert len(rest) == 5 + 2 + 9 + 6 + 2  # right, top, bigger; the shirt's pair and templates


def test_groups_are_filtered_apart_small_clothes_stay():
    # a chair overlapping the woman (IoU 0.95) is another group: both kept and described
    woman = det("p", [0, 0, 100, 200], "woman", None, 0.9)
    chair = det("t", [0, 0, 100, 190], "chair", None, 0.8)
    # a 30 x 20 cap (600 < 4800 px) is not dropped as tiny: clothes are not
    cap = det("c", [30, 5, 60, 25], "cap", "red", 0.7)
    assert [t for t, _ in texts([woman, chair, cap])] == [
        "woman", "woman red cap", "red cap woman", "chair"]
    # without people, clothes give nothing; more people than top_n: only people
    assert texts([det("c", [0, 0, 300, 300], "shirt", None, 0.99), chair]) == [
        ("chair", [0, 0, 100, 190])]
    crowd = [det(f"p{i}", [150 * i, 0, 150 * i + 100, 200], "person", None, 0.9 - i / 10)
             for i in range(4)] + [det("t", [0, 300, 200, 480], "table", None, 0.99)]
    # x centres 50, 200, 350, 500 (even count: no middle), same y and area; the 3 most
    # confident people are described, not the table; "person" twice: kept for the first
    assert texts(crowd, top_n=3) == [("person left", [0, 0, 100, 200]),
                                     ("person on the left", [0, 0, 100, 200]),
                                     ("person", [150, 0, 250, 200])]
