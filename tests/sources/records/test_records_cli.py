"""`clipvg records`' contract: an existing record table is refused (nothing on storage changes)
unless --overwrite; bad input ends with one line naming the file, the row and the key (exit 2)
and writes nothing; records of images not in the dataset are dropped, none matching is an error."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from clipvg import cli
from clipvg.data import storage

IMG_A = "COCO_train2014_000000000839.jpg"
IMG_B = "COCO_train2014_000000000036.jpg"
INSTANCES = {"images": [{"id": 839, "file_name": IMG_A}, {"id": 36, "file_name": IMG_B},
                        {"id": 5, "file_name": "elsewhere.jpg"}],
             "categories": [{"id": 1, "name": "person"}]}


def coco(tmp_path, results, name="dets.json") -> list[str]:
    (tmp_path / name).write_text(json.dumps(results))
    (tmp_path / "instances.json").write_text(json.dumps(INSTANCES))
    return ["--format", "coco-detections", "--input", str(tmp_path / name),
            "--annotations", str(tmp_path / "instances.json")]


def run(dataset, *args) -> int:
    return cli.main(["records", "--dataset", dataset, *args])


def files(root) -> dict[str, str]:
    """Every file under root (manifest and Parquet parts included) -> its content hash."""
    out = {}
    for folder, _, names in os.walk(root):
        for n in names:
            path = os.path.join(folder, n)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


ONE = [{"image_id": 839, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.9}]
TWO = [{"image_id": 36, "category_id": 1, "bbox": [5, 5, 50, 50], "score": 0.4},
       {"image_id": 36, "category_id": 1, "bbox": [60, 5, 50, 50], "score": 0.3}]


def test_an_existing_record_table_is_refused_unless_overwrite(dataset, tmp_path, capsys):
    assert run(dataset, *coco(tmp_path, ONE)) == 0
    before = files(dataset)
    assert "detections/part-00000.parquet" in before
    assert run(dataset, *coco(tmp_path, TWO, "other.json")) == 2
    line = one_line(capsys.readouterr().err)
    assert line == (f"clipvg records: {dataset}/detections already exists; pass --overwrite to "
                    "replace it (nothing was changed)")
    assert files(dataset) == before  # same files, same bytes
    # a table listed in the manifest counts even when its folder is gone
    storage.remove_tree(storage.join(dataset, "detections"))
    assert run(dataset, *coco(tmp_path, TWO, "other.json")) == 2
    capsys.readouterr()
    assert run(dataset, *coco(tmp_path, TWO, "other.json"), "--overwrite") == 0
    rows = storage.read_table(storage.join(dataset, "detections")).to_pylist()
    assert [(r["det_id"], r["box"]) for r in rows] == [(f"{IMG_B}#d0", [5, 5, 55, 55]),
                                                       (f"{IMG_B}#d1", [60, 5, 110, 55])]
    manifest = storage.read_json(storage.join(dataset, "manifest.json"))
    assert manifest["tables"].count("detections") == 1
    assert manifest["records"]["detections"]["inputs"] == [str(tmp_path / "other.json")]
    assert manifest["counts"] == {"train": {"images": 2, "samples": 2}}  # the rest kept


@pytest.mark.parametrize("results, expected", [
    ([ONE[0], dict(ONE[0], score=1.5)], "dets.json: row 1 'score': must be in [0, 1], got 1.5"),
    ([{"image_id": 839, "category_id": 1, "bbox": [0, 0, 10, 10]}],
     "dets.json: row 0: missing key 'score'"),
    ([dict(ONE[0], bbox=[0, 0, -4, 10])], "dets.json: row 0 'bbox': negative width or height"),
    ([dict(ONE[0], bbox=[0, 0, 10])], "dets.json: row 0 'bbox': expected 4 numbers"),
    ([dict(ONE[0], bbox=[0, 0, float("nan"), 10])],
     "dets.json: row 0 'bbox'[2]: expected a finite number"),
    ([dict(ONE[0], category_id=7)], "dets.json: row 0: category_id 7 is not in the categories"),
    ([dict(ONE[0], image_id=5)], "none of its 1 image name(s) is in the dataset's images table"),
    ({"not": "a list"}, "dets.json: expected a list of detections"),
])
def test_malformed_coco_rows_are_one_line_and_write_nothing(dataset, tmp_path, capsys, results,
                                                            expected):
    before = files(dataset)
    assert run(dataset, *coco(tmp_path, results)) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("clipvg records: ") and expected in line, line
    assert files(dataset) == before


def test_malformed_lines_of_the_jsonl_formats(dataset, tmp_path, capsys):
    good = {"image": IMG_A, "sub_logits": [[0.0] * 152], "obj_logits": [[0.0] * 152],
            "rel_logits": [[0.0] * 52], "sub_boxes": [[0.5] * 4], "obj_boxes": [[0.5] * 4]}
    cases = [
        ({k: v for k, v in good.items() if k != "rel_logits"}, "line 2: missing key 'rel_logits'"),
        (dict(good, obj_logits=[[0.0] * 151]), "line 2: 'obj_logits' must be 1 x 152, got shape "
                                               "(1, 151)"),
        (dict(good, sub_boxes=[[0.5, 0.5, -0.1, 0.2]]), "line 2: 'sub_boxes' has a negative"),
    ]
    for bad, expected in cases:
        (tmp_path / "r.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        assert run(dataset, "--format", "reltr", "--input", str(tmp_path / "r.jsonl")) == 2
        line = one_line(capsys.readouterr().err)
        assert f"r.jsonl: {expected}" in line, line
    (tmp_path / "c.jsonl").write_text('{"image": "%s", "caption": "a dog"}\n{"image": ' % IMG_A)
    assert run(dataset, "--format", "captions-jsonl", "--input", str(tmp_path / "c.jsonl")) == 2
    assert "c.jsonl: line 2: not valid JSON" in one_line(capsys.readouterr().err)
    for bad, expected in [({"image": IMG_A, "caption": "a dog", "score": -0.2},
                           "line 1 score: must be in [0, 1], got -0.2"),
                          ({"image": IMG_A}, "line 1: needs exactly one of 'caption'"),
                          ({"caption": "a dog"}, "line 1: missing key 'image'"),
                          ({"image": IMG_A, "caption": " "}, "line 1: the caption must be a "
                                                             "non-empty string")]:
        (tmp_path / "c.jsonl").write_text(json.dumps(bad) + "\n")
        assert run(dataset, "--format", "captions-jsonl", "--input", str(tmp_path / "c.jsonl")) == 2
        line = one_line(capsys.readouterr().err)
        assert f"c.jsonl: {expected}" in line, line
    assert not storage.exists(storage.join(dataset, "triplets"))
    assert not storage.exists(storage.join(dataset, "captions"))


def test_flags_and_missing_dataset_are_one_line(dataset, tmp_path, capsys):
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": IMG_A, "caption": "a dog"}) + "\n")
    c = ["--format", "captions-jsonl", "--input", str(tmp_path / "c.jsonl")]
    assert run(dataset, "--format", "coco-detections", "--input", str(tmp_path / "c.jsonl")) == 2
    assert "needs --annotations" in one_line(capsys.readouterr().err)
    assert run(dataset, *c, "--attributes", "x.pth") == 2
    assert "--attributes is for --format pseudoq-detections" in one_line(capsys.readouterr().err)
    assert run(str(tmp_path / "nowhere"), *c) == 2
    assert "no clipvg dataset there (manifest.json missing)" in one_line(capsys.readouterr().err)
    assert run(dataset, "--format", "captions-jsonl", "--input", str(tmp_path / "none.jsonl")) == 2
    assert "none.jsonl: no such file" in one_line(capsys.readouterr().err)
    assert run("s3:/bucket/ds", *c) == 2  # a mangled URI, refused before any work
    assert "one slash too few" in one_line(capsys.readouterr().err)
    (tmp_path / "empty.jsonl").write_text("\n")
    assert run(dataset, "--format", "captions-jsonl", "--input", str(tmp_path / "empty.jsonl")) == 2
    assert "no records to convert" in one_line(capsys.readouterr().err)
