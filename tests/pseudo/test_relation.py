"""Relation pseudo-labels: score threshold (strict), top-k by the product, subject box."""

from clipvg.pseudo.relation import relation_samples, select_triplets


def trip(tid, s, p, o, subject="circle", predicate="left of", obj="square"):
    return dict(image_id="img", triplet_id=tid, subject=subject, subject_box=[1, 2, 30, 40],
                predicate=predicate, object=obj, object_box=[50, 60, 70, 80],
                subject_score=s, predicate_score=p, object_score=o)


TRIPLETS = [
    trip("t0", 0.9, 0.9, 0.9),  # product 0.729
    trip("t1", 0.21, 0.9, 0.9),  # 0.1701, just above the threshold
    trip("t2", 0.2, 0.9, 0.9),  # subject score not > 0.2: dropped
    trip("t3", 0.9, 0.1, 0.9),  # predicate too low: dropped
    trip("t4", 0.5, 0.5, 0.5),  # 0.125
    trip("t5", 0.9, 0.8, 0.5),  # 0.36
    trip("t6", 0.9, 0.9, 0.15),  # object too low: dropped
]


def test_threshold_and_ranking_by_product():
    assert [t["triplet_id"] for t in select_triplets(TRIPLETS)] == ["t0", "t5", "t1", "t4"]
    assert [t["triplet_id"] for t in select_triplets(TRIPLETS, top_k=2)] == ["t0", "t5"]
    assert [t["triplet_id"] for t in select_triplets(TRIPLETS, min_score=0.4)] == [
        "t0", "t5", "t4"]
    assert [t["triplet_id"] for t in select_triplets(TRIPLETS[::-1])] == [
        "t0", "t5", "t1", "t4"]  # independent of input order


def test_ties_are_broken_by_triplet_id():
    tied = [trip("b", 0.5, 0.5, 0.8), trip("a", 0.8, 0.5, 0.5), trip("c", 0.5, 0.8, 0.5)]
    assert [t["triplet_id"] for t in select_triplets(tied, top_k=2)] == ["a", "b"]


def test_top_10_text_and_subject_box():
    many = [trip(f"t{i:02d}", 0.5 + i / 100, 0.9, 0.9, subject="cup", predicate="on",
                 obj="dining_table") for i in range(12)]
    rows = relation_samples("img", many, dataset="d", split="val")
    assert len(rows) == 10
    assert rows[0]["text"] == "cup on dining table"
    assert rows[0]["box"] == [1, 2, 30, 40]  # the subject's box, not the object's
    assert [r["sample_id"] for r in rows[:2]] == ["relation-img-0", "relation-img-1"]
    assert rows[0]["source"] == "relation" and rows[0]["split"] == "val"
    assert relation_samples("img", [trip("x", 0.1, 0.1, 0.1)], dataset="d") == []
