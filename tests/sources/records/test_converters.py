"""`clipvg records`: each real format, written here by hand in the layout of the tool that makes it,
converted into the tiny dataset of conftest.py; the rows are checked against values worked out by
hand in the comments (not computed by the code under test), then fed to the pseudo-label
generators to show that they accept them."""

from __future__ import annotations

import io
import json
import math
import pickle
import zipfile

import numpy as np
import pyarrow as pa
import pytest

from clipvg import cli
from clipvg.data import storage
from clipvg.pseudo.generate import generate_for_images
from clipvg.sources.records import vocab

IMG_A = "COCO_train2014_000000000839.jpg"  # 640 x 480 in the dataset
IMG_B = "COCO_train2014_000000000036.jpg"  # 500 x 375
UNKNOWN = "COCO_train2014_000000000099.jpg"  # not in the dataset


def records(dataset, fmt, path, *extra) -> int:
    return cli.main(["records", "--dataset", dataset, "--format", fmt, "--input", str(path),
                     *extra])


def table(dataset, name) -> list[dict]:
    return storage.read_table(storage.join(dataset, name)).to_pylist()


def images(dataset) -> pa.Table:
    return storage.read_table(storage.join(dataset, "images"))


def approx(values):
    return pytest.approx(values, rel=1e-6, abs=1e-6)


# ------------------------------------------------------------------------------ COCO results


def test_coco_detection_results(dataset, tmp_path, capsys):
    # The COCO results format (cocodataset.org/#format-results) as detectron2's
    # detectron2/evaluation/coco_evaluation.py instances_to_coco_json writes it (bbox x, y, w, h
    # in pixels; extra keys such as "segmentation" may follow), and an instances file.
    results = [
        {"image_id": 839, "category_id": 1, "bbox": [10, 20, 100, 200], "score": 0.9},
        {"image_id": 839, "category_id": 3, "bbox": [300.5, 40, 50, 60.5], "score": 0.5,
         "segmentation": {"size": [480, 640], "counts": "xyz"}},
        {"image_id": 99, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.7},
        {"image_id": 36, "category_id": 62, "bbox": [0, 0, 250, 375], "score": 0.75},
    ]
    instances = {
        "images": [{"id": 839, "file_name": IMG_A, "width": 640, "height": 480},
                   {"id": 36, "file_name": IMG_B, "width": 500, "height": 375},
                   {"id": 99, "file_name": UNKNOWN, "width": 10, "height": 10}],
        "annotations": [],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 3, "name": "car"}, {"id": 62, "name": "chair"}],
    }
    (tmp_path / "dets.json").write_text(json.dumps(results))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    assert records(dataset, "coco-detections", tmp_path / "dets.json",
                   "--annotations", str(tmp_path / "instances.json")) == 0
    out = capsys.readouterr().out
    assert "3 rows for 2 images" in out and f"dropped 1 record(s) of 1 image(s)" in out
    assert UNKNOWN in out
    rows = table(dataset, "detections")
    # x1 = x + w, y1 = y + h: [10, 20, 110, 220]; [300.5, 40, 350.5, 100.5]; [0, 0, 250, 375]
    assert [(r["image_id"], r["det_id"], r["label"], r["color"]) for r in rows] == [
        (IMG_A, f"{IMG_A}#d0", "person", None), (IMG_A, f"{IMG_A}#d1", "car", None),
        (IMG_B, f"{IMG_B}#d0", "chair", None)]
    assert [r["box"] for r in rows] == [[10, 20, 110, 220], [300.5, 40, 350.5, 100.5],
                                        [0, 0, 250, 375]]
    assert [r["score"] for r in rows] == approx([0.9, 0.5, 0.75])
    manifest = storage.read_json(storage.join(dataset, "manifest.json"))
    assert manifest["tables"] == ["samples", "images", "quarantine", "detections"]
    entry = manifest["records"]["detections"]
    assert (entry["format"], entry["rows"], entry["images"], entry["records"],
            entry["dropped_records"], entry["first_dropped"]) == (
        "coco-detections", 3, 2, 4, 1, [UNKNOWN])
    assert entry["annotations"] == str(tmp_path / "instances.json")
    assert entry["inputs"] == [str(tmp_path / "dets.json")]
    # template source: 640 x 480 / 64 = 4800 px minimum; the car (50 x 60.5 = 3025) is tiny; the
    # person and the chair (250 x 375 in a 500 x 375 image) are described, alone in their class
    samples = generate_for_images("template", images(dataset), pa.Table.from_pylist(rows),
                                  seed=0, dataset="handmade").to_pylist()
    assert [(s["image_id"], s["text"], s["box"]) for s in samples] == [
        (IMG_A, "person", [10, 20, 110, 220]), (IMG_B, "chair", [0, 0, 250, 375])]


# ------------------------------------------------------------------------------ Pseudo-Q

GRAY, RED, BLUE, WHITE, BLACK = 0, 4, 6, 7, 11  # lines of Pseudo-Q's attributes_vocab.txt


def attrs(index: int, conf: float) -> np.ndarray:
    """The 400 bottom-up-attention confidences of one box (float32, as Pseudo-Q saves them)."""
    v = np.full(400, 0.001, dtype=np.float32)
    v[index] = conf
    return v


def torch_zip(obj) -> bytes:
    """What torch.save writes: a zip whose <name>/data.pkl is a protocol-2 pickle."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def pseudoq_files(tmp_path):
    # LeapLabTHU/Pseudo-Q data/detection_results/unc/r101_object_detection_results/
    # unc_train_pseudo_split0_detection_results.pth: image file name -> [[class, [x0, y0, x1,
    # y1, conf]], ...] (read by pseudo_sample_generation/pseudo_query_generation.py object_detect)
    objects = {
        IMG_A: [["man", [0.0, 50.0, 200.0, 450.0, 0.92]],  # x0 0 -> 1 (Pseudo-Q's quirk)
                ["shirt", [20.0, 120.0, 180.0, 260.0, 0.81]],
                ["pants", [30.0, 300.0, 170.0, 440.0, 0.77]],
                ["car", [300.0, 200.0, 600.0, 400.0, 0.66]],
                ["car", [350.0, 10.0, 340.0, 100.0, 0.5]]],  # x0 > x1: skipped
        UNKNOWN: [["dog", [0.0, 0.0, 10.0, 10.0, 0.9]]],
    }
    # .../r152_attr_detection_results/unc_train_pseudo_split0_attr_detection_results.pth, as
    # pseudo_sample_generation/get_detection_results.py writes it: a third element per entry,
    # the 400 attribute confidences (numpy float32)
    attributes = {
        IMG_A: [["man", [5.0, 55.0, 195.0, 445.0, 0.9], attrs(GRAY, 0.2)],  # 0.2 <= 0.3: none
                ["shirt", [22.0, 118.0, 178.0, 262.0, 0.85], attrs(WHITE, 0.45)],
                ["pants", [30.0, 300.0, 170.0, 440.0, 0.7], attrs(GRAY, 0.55)],
                ["car", [300.0, 200.0, 600.0, 400.0, 0.6], attrs(RED, 0.31)],
                # "blue car" loses "blue " -> "car"; IoU with the red car 53200 / 60000 > 0.4
                # and less confident: removed before matching, so the car stays red
                ["blue car", [310.0, 205.0, 590.0, 395.0, 0.4], attrs(BLUE, 0.9)],
                # same class as the pants but IoU 2800 / 19600 = 0.14 <= 0.5: no match
                ["pants", [30.0, 420.0, 170.0, 440.0, 0.95], attrs(BLACK, 0.8)]],
    }
    (tmp_path / "det.pth").write_bytes(pickle.dumps(objects, protocol=2))
    (tmp_path / "attr.pth").write_bytes(torch_zip(attributes))
    return tmp_path / "det.pth", tmp_path / "attr.pth"


def test_the_attribute_vocabulary_is_pseudoqs_file():
    # first lines of LeapLabTHU/Pseudo-Q data/statistic/attributes_vocab.txt (first alias)
    assert vocab.BUA_ATTRIBUTES[:12] == ("gray", "multi colored", "double decker", "unmade",
                                         "red", "camouflage", "blue", "white", "green", "pink",
                                         "yellow", "black")
    assert len(vocab.BUA_ATTRIBUTES) == 400 and vocab.BUA_ATTRIBUTES[-1] == "leaning"


def test_pseudoq_detections_with_attributes(dataset, tmp_path, capsys):
    det, attr = pseudoq_files(tmp_path)
    assert records(dataset, "pseudoq-detections", det, "--attributes", str(attr)) == 0
    out = capsys.readouterr().out
    assert "4 rows for 1 images" in out and "skipped 1 entry" in out and UNKNOWN in out
    rows = table(dataset, "detections")
    assert [(r["det_id"], r["label"], r["color"], r["box"]) for r in rows] == [
        # man IoU 74100 / 79600 = 0.93 with its attribute box, but 0.2 <= 0.3: no colour
        (f"{IMG_A}#d0", "man", None, [1, 50, 200, 450]),
        # shirt: IoU 21840 / 23024 = 0.95 > 0.5 -> white
        (f"{IMG_A}#d1", "shirt", "white", [20, 120, 180, 260]),
        (f"{IMG_A}#d2", "pants", "gray", [30, 300, 170, 440]),
        (f"{IMG_A}#d3", "car", "red", [300, 200, 600, 400]),
    ]
    assert [r["score"] for r in rows] == approx([0.92, 0.81, 0.77, 0.66])
    # template source: people (man), clothes (shirt, pants), things (car). Both clothes lie
    # wholly inside the man; the pants' centre y 370 is (450 - 370) / 400 = 0.2 < 0.5 of his
    # height from his feet: attached. Kinds in order shirt, pants; no spatial word (one man,
    # one car); 6 texts = max_per_image: no sampling
    samples = generate_for_images("template", images(dataset), pa.Table.from_pylist(rows),
                                  seed=0, dataset="handmade").to_pylist()
    man, car = [1, 50, 200, 450], [300, 200, 600, 400]
    assert [(s["text"], s["box"]) for s in samples] == [
        ("man", man), ("man white shirt", man), ("white shirt man", man),
        ("man gray pants", man), ("gray pants man", man), ("red car", car)]


def test_pseudoq_attribute_file_alone_colours_its_own_entries(dataset, tmp_path):
    _, attr = pseudoq_files(tmp_path)
    assert records(dataset, "pseudoq-detections", attr) == 0
    rows = table(dataset, "detections")
    # no overlap removal here (the generators filter); "blue car" -> "car" coloured blue
    assert [(r["label"], r["color"]) for r in rows] == [
        ("man", None), ("shirt", "white"), ("pants", "gray"), ("car", "red"), ("car", "blue"),
        ("pants", "black")]
    assert rows[0]["box"] == [5, 55, 195, 445]


def test_pseudoq_json_form_and_a_refused_pickle(dataset, tmp_path, capsys):
    objects = {IMG_B: [["table", [10, 10, 400, 300, 0.8]]]}
    (tmp_path / "det.json").write_text(json.dumps(objects))
    assert records(dataset, "pseudoq-detections", tmp_path / "det.json") == 0
    assert [(r["label"], r["box"]) for r in table(dataset, "detections")] == [
        ("table", [10, 10, 400, 300])]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({IMG_B: [Evil()]}, protocol=2))
    assert records(dataset, "pseudoq-detections", tmp_path / "evil.pth", "--overwrite") == 2
    captured = capsys.readouterr()
    assert "pwned" not in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "builtins.print" in err and "evil.pth" in err


# ------------------------------------------------------------------------------ RelTR

MAN, HORSE, BOY, HELMET, CAR = 78, 64, 20, 62, 26  # indexes in CLIP-VG's RelTR CLASSES
RIDING, WEARING, ON = 38, 48, 31  # indexes in its REL_CLASSES


def logits(width: int, index: int | None, big: float) -> list[float]:
    """Zeros but ``big`` at ``index``: softmax p = e^big / (e^big + width - 1)."""
    row = [0.0] * width
    if index is not None:
        row[index] = math.log(big)
    return row


def test_reltr_outputs(dataset, tmp_path, capsys):
    # yrcong/RelTR models/reltr.py outputs (sub_logits / obj_logits: 151 classes + no-object,
    # rel_logits: 51 predicates + no-relation, boxes cx, cy, w, h normalised) dumped per image
    # as CLIP-VG's inference_gen_pseudo_relation_label.py has them, one line per image.
    # e^ln151 / (151 + 151) = 0.5; ln153 over 52 columns: 153 / 204 = 0.75; ln604: 604/755 = 0.8
    line_a = {"image": IMG_A,
              "sub_logits": [logits(152, MAN, 151), logits(152, BOY, 151), logits(152, None, 1)],
              "obj_logits": [logits(152, HORSE, 604), logits(152, HELMET, 151),
                             logits(152, None, 1)],
              "rel_logits": [logits(52, RIDING, 153), logits(52, WEARING, 153),
                             logits(52, None, 1)],
              "sub_boxes": [[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 0.1, 0.1]],
              "obj_boxes": [[0.25, 0.75, 0.5, 0.5], [0.25, 0.125, 0.25, 0.25],
                            [0.5, 0.5, 0.1, 0.1]]}
    line_b = {"image_file": IMG_B, "sub_logits": [logits(152, MAN, 151)],
              "obj_logits": [logits(152, CAR, 151)], "rel_logits": [logits(52, ON, 153)],
              "sub_boxes": [[0.5, 0.5, 1.0, 1.0]], "obj_boxes": [[0.5, 0.5, 1.0, 1.0]]}
    line_c = dict(line_b, image_file=UNKNOWN)
    path = tmp_path / "reltr.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in (line_a, line_b, line_c)) + "\n")
    assert records(dataset, "reltr", path) == 0
    out = capsys.readouterr().out
    assert "3 rows for 2 images" in out and "skipped 1 query" in out
    rows = table(dataset, "triplets")
    assert [(r["triplet_id"], r["subject"], r["predicate"], r["object"]) for r in rows] == [
        (f"{IMG_A}#t0", "man", "riding", "horse"), (f"{IMG_A}#t1", "boy", "wearing", "helmet"),
        (f"{IMG_B}#t0", "man", "on", "car")]  # query 2 (all zeros: argmax N/A) skipped
    # 640 x 480: (0.5 -/+ 0.25) x 640 = 160 / 480, x 480 = 120 / 360; (0.25 -/+ 0.25) x 640 =
    # 0 / 320, (0.75 -/+ 0.25) x 480 = 240 / 480; (0.125 -/+ 0.125) x 640 = 80 / 240 ...
    assert [r["subject_box"] for r in rows] == [[160, 120, 480, 360], [0, 0, 320, 240],
                                                [0, 0, 500, 375]]
    assert [r["object_box"] for r in rows] == [[0, 240, 320, 480], [80, 0, 240, 120],
                                               [0, 0, 500, 375]]
    assert [(r["subject_score"], r["predicate_score"], r["object_score"]) for r in rows] == [
        approx((0.5, 0.75, 0.8)), approx((0.5, 0.75, 0.5)), approx((0.5, 0.75, 0.5))]
    # relation source: all scores > 0.2; by product 0.3 then 0.1875; subject box
    samples = generate_for_images("relation", images(dataset), None, pa.Table.from_pylist(rows),
                                  seed=0, dataset="handmade").to_pylist()
    assert [(s["image_id"], s["text"], s["box"]) for s in samples] == [
        (IMG_A, "man riding horse", [160, 120, 480, 360]),
        (IMG_A, "boy wearing helmet", [0, 0, 320, 240]), (IMG_B, "man on car", [0, 0, 500, 375])]


def test_reltr_vocabulary_positions():
    # hand-counted in CLIP-VG's CLASSES / REL_CLASSES lists
    assert [vocab.RELTR_CLASSES[i] for i in (0, MAN, HORSE, BOY, HELMET, CAR, 150)] == [
        "N/A", "man", "horse", "boy", "helmet", "car", "zebra"]
    assert [vocab.RELTR_PREDICATES[i] for i in (0, RIDING, WEARING, ON, 50)] == [
        "__background__", "riding", "wearing", "on", "with"]


# ------------------------------------------------------------------------------ captions


def test_captions_jsonl_and_clipvg_caption_data(dataset, tmp_path, capsys):
    lines = [
        {"image": IMG_A, "caption": "a man in a white shirt standing next to a car.",
         "score": 0.61},
        {"image": f"train2014/{IMG_B}", "captions": ["a red car parked on the street",
                                                     "two chairs"], "scores": [0.5, 0.4]},
        {"image": UNKNOWN, "caption": "a dog"},
        {"image": IMG_A, "caption": "  a car  "},  # no score: 1.0
    ]
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert records(dataset, "captions-jsonl", path) == 0
    out = capsys.readouterr().out
    assert "4 rows for 2 images" in out and "1 caption(s) without a score" in out
    rows = table(dataset, "captions")
    assert [(r["caption_id"], r["caption"]) for r in rows] == [
        (f"{IMG_A}#c0", "a man in a white shirt standing next to a car."),
        (f"{IMG_B}#c0", "a red car parked on the street"), (f"{IMG_B}#c1", "two chairs"),
        (f"{IMG_A}#c1", "a car")]
    assert [r["score"] for r in rows] == approx([0.61, 0.5, 0.4, 1.0])
    # caption source with the Pseudo-Q detections of IMG_A: head nouns "man", "car" (the
    # template filter keeps all four boxes: none tiny, IoUs <= 0.28)
    det, attr = pseudoq_files(tmp_path)
    assert records(dataset, "pseudoq-detections", det, "--attributes", str(attr)) == 0
    samples = generate_for_images("caption", images(dataset), pa.Table.from_pylist(
        table(dataset, "detections")), None, pa.Table.from_pylist(rows), seed=0,
        dataset="handmade").to_pylist()
    assert [(s["image_id"], s["text"], s["box"]) for s in samples] == [
        (IMG_A, "a man in a white shirt standing next to a car.", [1, 50, 200, 450]),
        (IMG_A, "a car", [300, 200, 600, 400])]
    # CLIP-VG's clip_prefix_captioning_for_dataset.py saves [{image_id: index, image_file:
    # full path, captions: [text]}] with torch.save: read as it is, matched by base name
    data = [{"image_id": 0, "image_file": f"/data/mscoco/train2014/{IMG_B}",
             "captions": ["A man riding a horse."]}]
    (tmp_path / "unc_caption_data.pth").write_bytes(torch_zip(data))
    assert records(dataset, "captions-jsonl", tmp_path / "unc_caption_data.pth",
                   "--overwrite") == 0
    assert [(r["image_id"], r["caption"], r["score"]) for r in table(dataset, "captions")] == [
        (IMG_B, "A man riding a horse.", 1.0)]


def test_pseudoq_shards_go_into_one_table(dataset, tmp_path, capsys):
    # Pseudo-Q's files come in 16 shards per dataset (split0 ... split15); each object file is
    # paired with its attribute file in order
    for k, (name, label, index) in enumerate([(IMG_A, "dog", RED), (IMG_B, "cat", WHITE)]):
        (tmp_path / f"det{k}.json").write_text(json.dumps(
            {name: [[label, [10.0, 10.0, 200.0, 200.0, 0.8]]]}))
        (tmp_path / f"attr{k}.json").write_text(json.dumps(
            {name: [[label, [10.0, 10.0, 200.0, 200.0, 0.7], attrs(index, 0.9).tolist()]]}))
    shards = [str(tmp_path / "det0.json"), str(tmp_path / "det1.json")]
    attributes = [str(tmp_path / "attr0.json"), str(tmp_path / "attr1.json")]
    assert records(dataset, "pseudoq-detections", *shards, "--attributes", *attributes) == 0
    assert [(r["det_id"], r["label"], r["color"]) for r in table(dataset, "detections")] == [
        (f"{IMG_A}#d0", "dog", "red"), (f"{IMG_B}#d0", "cat", "white")]
    entry = storage.read_json(storage.join(dataset, "manifest.json"))["records"]["detections"]
    assert (entry["inputs"], entry["attributes"]) == (shards, attributes)
    capsys.readouterr()
    assert records(dataset, "pseudoq-detections", *shards, "--attributes", attributes[0],
                   "--overwrite") == 2
    assert "--attributes needs one file per --input file (2, paired in order), got 1" in (
        capsys.readouterr().err)
