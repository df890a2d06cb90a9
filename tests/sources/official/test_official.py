"""Official CLIP-VG split files <-> clipvg datasets (clipvg.sources.official).

Every split file here is written by the test itself in the three on-disk forms (torch.save zip,
torch.save legacy, plain pickle.dump). Expected values are computed by hand in the comments.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from clipvg.cli import main
from clipvg.data import storage
from clipvg.sources.official.export import export_official, export_split
from clipvg.sources.official.formats import PLACEHOLDER
from clipvg.sources.official.importer import (
    SplitFile, find_split_files, import_official, parse_entries, samples_table,
)
from clipvg.sources.official.unpickler import UnsafePickleError, load_split_file

IMG_A, IMG_B = "COCO_train2014_000000000839.jpg", "COCO_train2014_000000000840.png"
UNC_TRAIN = [  # ground-truth COCO entries: (image, aux_1, [x, y, w, h], expression, aux_2)
    (IMG_A, "482127.pth", [303.58, 69.03, 293.29, 425.79], "guy flopping around on the right",
     [("r1", ["guy"]), ("r2", ["none"])]),
    (IMG_A, "482128.pth", [0.6, 1.7, 0.6, 2.5], "the tiny one", [("r1", ["one"])]),
    (IMG_B, "482129.pth", [10, 20, 30, 40], "left dog", []),
]
UNC_VAL = [(IMG_B, "9.pth", [1.5, 2.5, 3.0, 4.0], "café ünïcode", [("r1", ["café"])])]
UNC_PSEUDO = [(IMG_A, PLACEHOLDER, [5.25, 6.5, 7.0, 8.0], "left man", PLACEHOLDER)]
UNC_TESTA = [  # rows 1-3 are malformed, rows 0 and 4 are fine
    (IMG_A, "1.pth", [1.0, 2.0, 3.0, 4.0], "first", []),
    (IMG_A, "2.pth", [1.0, 2.0, 3.0, 4.0], "four elements"),
    (IMG_A, "3.pth", [1.0, 2.0, 3.0], "three coordinates", []),
    (42, "4.pth", [1.0, 2.0, 3.0, 4.0], "image name is an int", []),
    ("missing_image.jpg", "5.pth", [1.0, 2.0, 3.0, 4.0], "no such file", []),
]
REFERIT_TEST = [("8756.jpg", "8756_2.pth", [1.9, 2.9, 50.5, 60.5], "sky", [])]
FLICKR_TEST = [("1000092795.jpg", [5.7, 6.2, 40.9, 33.1], "two young guys")]


# ------------------------------------------------------------------------------ helpers
def save(obj, path: Path, form: str = "zip") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if form == "zip":
        torch.save(obj, path)
    elif form == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    return path


def write_image(path: Path, size=(8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix == ".jpg" else "PNG"
    Image.new("RGB", size, (200, 30, 30)).save(path, format=fmt)


def f32(*values) -> list[float]:
    return [float(np.float32(v)) for v in values]


def unc_root(tmp_path: Path) -> tuple[Path, Path]:
    """unc split root (train zip, val legacy, train_pseudo pickle, trainval, testA with bad
    rows) and an image root with the two COCO images (missing_image.jpg is absent)."""
    split_root, image_root = tmp_path / "splits", tmp_path / "image_data"
    save(UNC_TRAIN, split_root / "unc" / "unc_train.pth", "zip")
    save(UNC_VAL, split_root / "unc" / "unc_val.pth", "legacy")
    save(UNC_PSEUDO, split_root / "unc" / "unc_train_pseudo.pth", "pickle")
    save(UNC_TRAIN + UNC_VAL, split_root / "unc" / "unc_trainval.pth", "zip")
    save(UNC_TESTA, split_root / "unc" / "unc_testA.pth", "zip")
    coco = image_root / "other/images/mscoco/images/train2014"
    write_image(coco / IMG_A, (640, 480))
    write_image(coco / IMG_B, (32, 24))
    return split_root, image_root


def normalise(value):
    """Tuples -> lists, recursively (aux fields come back as JSON lists)."""
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    return value


# ------------------------------------------------------------------------------ loader
@pytest.mark.parametrize("form", ["zip", "legacy", "pickle"])
def test_load_split_file_reads_every_form(tmp_path, form):
    path = save(UNC_TRAIN, tmp_path / f"unc_{form}.pth", form)
    assert load_split_file(str(path)) == UNC_TRAIN


def test_load_split_file_reads_flickr_3_tuples(tmp_path):
    assert load_split_file(str(save(FLICKR_TEST, tmp_path / "f.pth"))) == FLICKR_TEST


class SystemPayload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class CallPayload:
    def __init__(self, func, code):
        self.func, self.code = func, code

    def __reduce__(self):
        return (self.func, (self.code,))


@pytest.mark.parametrize("form", ["zip", "pickle"])
@pytest.mark.parametrize("kind", ["system", "exec", "eval"])
def test_code_executing_pickle_is_refused_before_running(tmp_path, form, kind):
    marker = tmp_path / "marker"
    payload = {
        "system": SystemPayload(f"touch {marker}"),
        "exec": CallPayload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "eval": CallPayload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
    }[kind]
    path = save([(IMG_A, PLACEHOLDER, [1.0, 2.0, 3.0, 4.0], "x", payload)],
                tmp_path / f"evil_{kind}.pth", form)
    # the file really asks for the callable (so a plain pickle.load would run it)
    raw = path.read_bytes() if form == "pickle" else _zip_pickle(path)
    assert any(op.name in ("GLOBAL", "STACK_GLOBAL") for op, _, _ in pickletools.genops(raw))
    with pytest.raises(UnsafePickleError) as err:
        load_split_file(str(path))
    message = str(err.value)
    assert path.name in message
    assert {"system": "system", "exec": "builtins.exec", "eval": "builtins.eval"}[kind] in message
    assert not marker.exists()


def _zip_pickle(path: Path) -> bytes:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


@pytest.mark.parametrize("form", ["zip", "legacy"])
def test_tensor_in_split_file_is_refused(tmp_path, form):
    path = save([(IMG_A, PLACEHOLDER, torch.tensor([1.0, 2.0, 3.0, 4.0]), "x", PLACEHOLDER)],
                tmp_path / "tensor.pth", form)
    with pytest.raises(UnsafePickleError, match="tensor.pth"):
        load_split_file(str(path))


def test_persistent_id_is_refused(tmp_path):
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", "0") if obj == "external" else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(["external"])
    path = tmp_path / "pid.pth"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match=r"pid\.pth.*persistent id"):
        load_split_file(str(path))


def test_pickle_extension_codes_are_refused(tmp_path, monkeypatch):
    import copyreg

    marker = tmp_path / "marker"
    code = 0x7FFF_FFF0  # an unused extension code, registered only for this test
    monkeypatch.setitem(copyreg._extension_registry, ("builtins", "exec"), code)
    monkeypatch.setitem(copyreg._inverted_registry, code, ("builtins", "exec"))
    monkeypatch.setitem(copyreg._extension_cache, code, builtins.exec)  # bypasses find_class
    path = tmp_path / "ext.pth"
    path.write_bytes(pickle.dumps([CallPayload(builtins.exec, f"open({str(marker)!r}, 'w')")],
                                  protocol=2))
    assert any(op.name == "EXT4" for op, _, _ in pickletools.genops(path.read_bytes()))
    with pytest.raises(UnsafePickleError, match="ext.pth.*extension code"):
        load_split_file(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("obj, what", [([{"a": 1}], "dict"), ({"a": [1]}, "dict"),
                                       ([(1, {2, 3})], "set")])
def test_non_list_types_are_refused_after_loading(tmp_path, obj, what):
    path = save(obj, tmp_path / "typed.pth", "pickle")
    with pytest.raises(UnsafePickleError, match=f"typed.pth.*{what}"):
        load_split_file(str(path))


def test_not_a_list_is_refused(tmp_path):
    with pytest.raises(UnsafePickleError, match="holds a tuple"):
        load_split_file(str(save(("a", "b"), tmp_path / "tuple.pth")))


# ------------------------------------------------------------------------------ parsing
def _parse(entries, key, name="f.pth", split="train", source="gt", prefix=None):
    sf = SplitFile(name, name, split, source, prefix or f"{key}/{split}")
    return parse_entries(entries, key, sf)


def test_coco_boxes_raw_and_truncated():
    rows, rejected = _parse(UNC_TRAIN, "unc")
    assert rejected == []
    t = samples_table(rows)
    # row 0: x1 = 303.58 + 293.29 = 596.87, y1 = 69.03 + 425.79 = 494.82 (float32)
    # row 1: x1 = 0.6 + 0.6 = 1.2, y1 = 1.7 + 2.5 = 4.2; row 2: ints 10+30, 20+40
    assert t.column("box").to_pylist() == [f32(303.58, 69.03, 596.87, 494.82),
                                           f32(0.6, 1.7, 1.2, 4.2), [10.0, 20.0, 40.0, 60.0]]
    # official: truncate first, then add: 303+293=596, 69+425=494; 0+0=0 (int(1.2) would be
    # 1), 1+2=3 (int(4.2) would be 4)
    assert t.column("box_trunc").to_pylist() == [[303.0, 69.0, 596.0, 494.0],
                                                 [0.0, 1.0, 0.0, 3.0], [10.0, 20.0, 40.0, 60.0]]
    assert t.column("box_raw").to_pylist()[0] == [303.58, 69.03, 293.29, 425.79]
    assert t.column("box_format").to_pylist() == ["xywh"] * 3
    assert t.column("sample_id").to_pylist() == ["unc/train/0000000", "unc/train/0000001",
                                                 "unc/train/0000002"]
    assert t.column("text").to_pylist()[0] == b"guy flopping around on the right"
    assert t.schema.field("text").type == pa.binary()
    assert json.loads(t.column("aux").to_pylist()[0]) == ["482127.pth",
                                                          [["r1", ["guy"]], ["r2", ["none"]]]]
    assert t.column("official_row").to_pylist() == [0, 1, 2]
    assert t.column("curriculum_position").to_pylist() == [None] * 3


def test_referit_and_flickr_boxes_are_xyxy():
    ref = samples_table(_parse(REFERIT_TEST, "referit")[0])
    assert ref.column("box").to_pylist() == [f32(1.9, 2.9, 50.5, 60.5)]
    assert ref.column("box_trunc").to_pylist() == [[1.0, 2.0, 50.0, 60.0]]
    assert ref.column("box_format").to_pylist() == ["xyxy"]
    fl = samples_table(_parse(FLICKR_TEST, "flickr")[0])
    assert fl.column("box").to_pylist() == [f32(5.7, 6.2, 40.9, 33.1)]
    assert fl.column("box_trunc").to_pylist() == [[5.0, 6.0, 40.0, 33.0]]
    assert fl.column("aux").to_pylist() == [None]
    assert fl.column("image_id").to_pylist() == ["1000092795.jpg"]
    assert fl.column("text").to_pylist() == [b"two young guys"]


def test_text_keeps_bytes_and_lone_surrogates():
    entries = [(IMG_A, "a", [1, 2, 3, 4], b"\xff raw bytes", "b"),
               (IMG_A, "a", [1, 2, 3, 4], "bad \udcff", "b")]
    t = samples_table(_parse(entries, "unc")[0])
    assert t.column("text").to_pylist() == [b"\xff raw bytes", b"bad \xed\xb3\xbf"]


def test_malformed_entries_are_rejected_with_file_row_and_problem():
    rows, rejected = _parse(UNC_TESTA, "unc", name="unc_testA.pth", split="testA")
    assert [r["official_row"] for r in rows] == [0, 4]
    assert [r["official_row"] for r in rejected] == [1, 2, 3]
    assert {r["reason"] for r in rejected} == {"malformed_entry"}
    details = [r["detail"] for r in rejected]
    assert details[0].startswith("unc_testA.pth row 1:") and "5-element" in details[0]
    assert details[1].startswith("unc_testA.pth row 2:") and "4 numbers" in details[1]
    assert details[2].startswith("unc_testA.pth row 3:") and "not a string" in details[2]
    assert rejected[0]["sample_id"] == "unc/testA/0000001"


def test_non_finite_box_is_kept_for_the_validator_and_huge_ints_are_malformed():
    entries = [(IMG_A, "a", [float("nan"), 1.0, 2.0, 3.0], "x", "b"),
               (IMG_A, "a", [10 ** 400, 1, 2, 3], "x", "b"),
               (IMG_A, "a", [True, 1, 2, 3], "x", "b")]
    rows, rejected = _parse(entries, "unc")
    assert len(rows) == 1 and rows[0]["box_trunc"] is None  # box_not_finite is the validator's
    assert "out of the float range" in rejected[0]["detail"]
    assert "not a number" in rejected[1]["detail"]


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/b.jpg", "", ".."])
def test_image_names_that_escape_the_folder_are_rejected(bad):
    rows, rejected = _parse([(bad, "a", [1, 2, 3, 4], "x", "b")], "unc")
    assert rows == [] and "not a plain file name" in rejected[0]["detail"]


def test_find_split_files_and_train_separate_names(tmp_path):
    root = tmp_path / "unsup_multi_source"
    entries = [(IMG_A, PLACEHOLDER, [1.0, 2.0, 3.0, 4.0], "x", PLACEHOLDER)]
    save(entries, root / "unc+" / "unc+_val.pth")
    save(entries, root / "unc+" / "unc+_trainval.pth")
    save(entries, root / "unc+" / "unc+_train_pseudo.pth")
    save(entries, root / "train_separate" / "1_unc+_train_pseudo_template_0_5.pth")
    save(entries, root / "train_separate" / "1_unc_train_pseudo_template_0_5.pth")  # not unc+
    save(entries, root / "unc+" / "train_separate" / "3_unc+_train_pseudo_caption_0_45.pth")
    save(entries, root / "unc+" / "train_separate" / "2_unc+_train_pseudo_relation_0_5.pth")
    files, notes = find_split_files("unc+", str(root))
    assert [f.name for f in files] == [
        "unc+_val.pth", "unc+_train_pseudo.pth", "1_unc+_train_pseudo_template_0_5.pth",
        "2_unc+_train_pseudo_relation_0_5.pth", "3_unc+_train_pseudo_caption_0_45.pth"]
    assert notes == ["skipped unc+_trainval.pth: trainval is the concatenation of train and val"]
    sep = files[2:]
    # per-source files have their own split: the union file is not counted with them
    assert [(f.source, f.position, f.threshold, f.split) for f in sep] == [
        ("template", 1, 0.5, "train_separate"), ("relation", 2, 0.5, "train_separate"),
        ("caption", 3, 0.45, "train_separate")]
    assert (files[1].split, files[1].source) == ("train_pseudo", "pseudo")
    rows, _ = parse_entries(entries, "unc+", sep[0])
    t = samples_table(rows)
    assert t.column("sample_id").to_pylist() == ["unc+/train_separate-template/0000000"]
    assert t.column("source").to_pylist() == ["template"]
    assert t.column("curriculum_position").to_pylist() == [1]
    assert t.column("source_threshold").to_pylist() == [0.5]
    assert [f.source for f in files[:2]] == ["gt", "pseudo"]
    only, _ = find_split_files("unc+", str(root), ["val"])
    assert [f.name for f in only] == ["unc+_val.pth"]
    with pytest.raises(ValueError, match="unknown split"):
        find_split_files("unc+", str(root), ["bogus"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_split_files("unc+", str(tmp_path / "nowhere"))


# ------------------------------------------------------------------------------ export
@pytest.mark.parametrize("key, entries", [("unc", UNC_TRAIN + UNC_PSEUDO),
                                          ("referit", REFERIT_TEST), ("flickr", FLICKR_TEST)])
def test_parse_export_reload_round_trip(tmp_path, key, entries):
    table = samples_table(_parse(entries, key)[0])
    out = tmp_path / "exported.pth"
    assert export_official(table, key, str(out)) == len(entries)
    assert_same_entries(load_split_file(str(out)), entries, key)
    # the official code reads it with torch.load (weights_only, the torch >= 2.6 default)
    assert len(torch.load(out, weights_only=True)) == len(entries)


def assert_same_entries(got, expected, key):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert isinstance(g, tuple) and len(g) == len(e)
        if key == "flickr":
            assert (g[0], g[1], g[2]) == (e[0], e[1], e[2])
        else:
            assert (g[0], g[2], g[3]) == (e[0], e[2], e[3])  # exact: same floats
            assert normalise(g[1]) == normalise(e[1]) and normalise(g[4]) == normalise(e[4])


def test_export_converts_plain_xyxy_boxes_with_placeholders(tmp_path):
    # a samples table without the import's extra columns (e.g. pseudo labels)
    table = pa.table({"sample_id": ["s0"], "image_id": ["a.jpg"], "text": ["the cat"],
                      "box": pa.array([[10.0, 20.0, 40.5, 60.25]], pa.list_(pa.float32(), 4))})
    export_official(table, "unc", str(tmp_path / "u.pth"))
    export_official(table, "flickr", str(tmp_path / "f.pth"))
    # xywh = 10, 20, 40.5 - 10, 60.25 - 20
    assert load_split_file(str(tmp_path / "u.pth")) == [
        ("a.jpg", PLACEHOLDER, [10.0, 20.0, 30.5, 40.25], "the cat", PLACEHOLDER)]
    assert load_split_file(str(tmp_path / "f.pth")) == [
        ("a.jpg", [10.0, 20.0, 40.5, 60.25], "the cat")]


def test_export_split_selects_split_source_and_ids(tmp_path):
    rows = _parse(UNC_TRAIN, "unc")[0] + _parse(UNC_PSEUDO, "unc", split="train_pseudo",
                                                 source="pseudo")[0]
    storage.write_table(samples_table(rows), str(tmp_path / "ds" / "samples"))
    ds, out = str(tmp_path / "ds"), str(tmp_path / "out.pth")
    assert export_split(ds, "unc", "train", out) == 3
    assert_same_entries(load_split_file(out), UNC_TRAIN, "unc")
    ids = ["unc/train/0000002", "unc/train/0000000"]
    assert export_split(ds, "unc", "train", out, sample_ids=ids) == 2
    assert_same_entries(load_split_file(out), [UNC_TRAIN[0], UNC_TRAIN[2]], "unc")  # table order
    assert export_split(ds, "unc", "train_pseudo", out, source="pseudo") == 1
    with pytest.raises(ValueError, match="not in split 'train'"):
        export_split(ds, "unc", "train", out, sample_ids=["unc/train/0000099"])
    with pytest.raises(ValueError, match="no samples of split 'testB'"):
        export_split(ds, "unc", "testB", out)


# ------------------------------------------------------------------------------ import (ingest)
def read(out, table, **so):
    return storage.read_table(storage.join(str(out), table), **so)


def test_import_unc_copy_validates_and_round_trips(tmp_path):
    split_root, image_root = unc_root(tmp_path)
    out = tmp_path / "unc_ds"
    report = import_official("unc", str(split_root), str(image_root), str(out), images="copy")
    assert [(f["name"], f["rows"], f["rejected"]) for f in report.files] == [
        ("unc_train.pth", 3, 0), ("unc_val.pth", 1, 0), ("unc_testA.pth", 5, 3),
        ("unc_train_pseudo.pth", 1, 0)]
    assert report.notes == ["skipped unc_trainval.pth: trainval is the concatenation of train "
                            "and val"]
    v = report.validation
    # 10 entries: 3 malformed (testA rows 1-3), 1 missing image (testA row 4), 6 fine
    assert (v.input_rows, v.accepted, v.quarantined) == (10, 6, 4)
    assert v.reasons == {"malformed_entry": 3, "missing_image": 1}
    samples = read(out, "samples")
    assert samples.column("sample_id").to_pylist() == [
        "unc/train/0000000", "unc/train/0000001", "unc/train/0000002", "unc/val/0000000",
        "unc/testA/0000000", "unc/train_pseudo/0000000"]
    assert samples.column("source").to_pylist() == ["gt"] * 5 + ["pseudo"]
    assert samples.column("text").to_pylist()[3] == "café ünïcode"
    assert samples.column("box").to_pylist()[0] == f32(303.58, 69.03, 596.87, 494.82)
    assert samples.column("box_trunc").to_pylist()[1] == [0.0, 1.0, 0.0, 3.0]
    images = read(out, "images").sort_by("image_id")
    assert images.column("image_id").to_pylist() == [IMG_A, IMG_B]
    assert images.column("uri").to_pylist() == [f"files/{IMG_A}", f"files/{IMG_B}"]
    assert images.column("width").to_pylist() == [640, 32]
    assert images.column("height").to_pylist() == [480, 24]
    assert (out / "files" / IMG_A).read_bytes() == (
        image_root / "other/images/mscoco/images/train2014" / IMG_A).read_bytes()
    quarantine = read(out, "quarantine").sort_by("official_row")
    assert quarantine.column("reason").to_pylist() == ["malformed_entry"] * 3 + ["missing_image"]
    assert all(d.startswith(f"unc_testA.pth row {r}:") for d, r in zip(
        quarantine.column("detail").to_pylist()[:3], (1, 2, 3)))
    manifest = storage.read_json(str(out / "manifest.json"))
    assert manifest["kind"] == "clipvg-dataset" and manifest["dataset"] == "unc"
    assert manifest["images_mode"] == "copy"
    assert [(f["name"], f["rows"]) for f in manifest["official"]["files"]] == [
        ("unc_train.pth", 3), ("unc_val.pth", 1), ("unc_testA.pth", 5),
        ("unc_train_pseudo.pth", 1)]
    # import -> export -> restricted load: the original entries
    for split, expected in (("train", UNC_TRAIN), ("val", UNC_VAL), ("testA", UNC_TESTA[:1]),
                            ("train_pseudo", UNC_PSEUDO)):
        path = str(tmp_path / f"unc_{split}_export.pth")
        assert export_split(str(out), "unc", split, path) == len(expected)
        assert_same_entries(load_split_file(path), expected, "unc")


@pytest.mark.parametrize("mode", ["pack", "reference"])
def test_import_pack_and_reference(tmp_path, mode):
    split_root, image_root = unc_root(tmp_path)
    out = tmp_path / f"ds_{mode}"
    report = import_official("unc", str(split_root), str(image_root), str(out), images=mode,
                             splits=["train"])
    assert [f["name"] for f in report.files] == ["unc_train.pth"]
    assert report.validation.accepted == 3
    images = read(out, "images").sort_by("image_id")
    coco = image_root / "other/images/mscoco/images/train2014"
    if mode == "pack":
        assert images.column("bytes").to_pylist() == [(coco / IMG_A).read_bytes(),
                                                      (coco / IMG_B).read_bytes()]
    else:
        assert images.column("uri").to_pylist() == [str(coco / IMG_A), str(coco / IMG_B)]
    assert not (out / "files").exists()


def test_import_referit_and_flickr_with_image_dir(tmp_path):
    root, pics = tmp_path / "splits", tmp_path / "pics"
    save(REFERIT_TEST, root / "referit" / "referit_test.pth", "legacy")
    save(FLICKR_TEST, root / "flickr" / "flickr_test.pth", "pickle")
    write_image(tmp_path / "img" / "referit/images" / "8756.jpg", (64, 64))
    write_image(pics / "1000092795.jpg", (48, 40))
    ref = import_official("referit", str(root), str(tmp_path / "img"), str(tmp_path / "r"))
    assert ref.validation.accepted == 1
    assert read(tmp_path / "r", "samples").column("box").to_pylist() == [
        f32(1.9, 2.9, 50.5, 60.5)]
    fl = import_official("flickr", str(root), None, str(tmp_path / "f"), image_dir=str(pics))
    assert fl.validation.accepted == 1
    path = str(tmp_path / "flickr_test.pth")
    export_split(str(tmp_path / "f"), "flickr", "test", path)
    assert load_split_file(path) == FLICKR_TEST


def test_import_refuses_unsafe_file_before_writing(tmp_path):
    split_root, image_root = unc_root(tmp_path)
    marker = tmp_path / "marker"
    save([SystemPayload(f"touch {marker}")], split_root / "unc" / "unc_val.pth", "zip")
    out = tmp_path / "never"
    with pytest.raises(UnsafePickleError, match="unc_val.pth"):
        import_official("unc", str(split_root), str(image_root), str(out))
    assert not marker.exists() and not out.exists()


def test_import_argument_errors(tmp_path):
    split_root, image_root = unc_root(tmp_path)
    with pytest.raises(ValueError, match="copy, pack or reference"):
        import_official("unc", str(split_root), str(image_root), str(tmp_path / "o"),
                        images="link")
    with pytest.raises(FileNotFoundError, match="image folder .*elsewhere.* does not exist"):
        import_official("unc", str(split_root), str(tmp_path / "elsewhere"), str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="no split files of 'gref'"):
        import_official("gref", str(split_root), str(image_root), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="unknown dataset key 'coco'"):
        import_official("coco", str(split_root), str(image_root), str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_import_to_s3_and_export_from_s3(tmp_path, s3):
    split_root, image_root = unc_root(tmp_path)
    out = s3.uri("official")
    report = import_official("unc", str(split_root), str(image_root), out, images="copy",
                             splits=["train", "val"], **s3.options)
    assert (report.validation.accepted, report.validation.quarantined) == (4, 0)
    assert storage.exists(storage.join(out, "manifest.json"), **s3.options)
    assert storage.read_bytes(storage.join(out, "files", IMG_B), **s3.options) == (
        image_root / "other/images/mscoco/images/train2014" / IMG_B).read_bytes()
    exported = storage.join(out, "export", "unc_train.pth")
    assert export_split(out, "unc", "train", exported, **s3.options) == 3
    assert_same_entries(load_split_file(exported, **s3.options), UNC_TRAIN, "unc")


# ------------------------------------------------------------------------------ CLI
def test_cli_import_and_export(tmp_path, capsys):
    split_root, image_root = unc_root(tmp_path)
    out = tmp_path / "cli_ds"
    code = main(["import-official", "--dataset", "unc", "--split-root", str(split_root),
                 "--image-root", str(image_root), "--out", str(out), "--images", "pack"])
    printed = capsys.readouterr().out
    assert code == 1  # rows were quarantined: as `clipvg validate`
    assert "unc_train.pth: 3 rows" in printed and "unc_testA.pth: 5 rows" in printed
    assert "skipped unc_trainval.pth" in printed
    assert "10 samples: 6 accepted, 4 quarantined" in printed
    assert "malformed_entry: 3" in printed and "missing_image: 1" in printed
    target = tmp_path / "val.pth"
    code = main(["export-official", str(out), "--dataset", "unc", "--split", "val",
                 "--out", str(target)])
    assert code == 0 and "exported 1 entries" in capsys.readouterr().out
    assert_same_entries(load_split_file(str(target)), UNC_VAL, "unc")
    clean = main(["import-official", "--dataset", "unc", "--split-root", str(split_root),
                  "--image-root", str(image_root), "--out", str(tmp_path / "clean"),
                  "--splits", "train,val"])
    assert clean == 0 and "4 samples: 4 accepted, 0 quarantined" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["copy", "pack", "reference"])
def test_quarantine_reasons_name_the_source_image(tmp_path, mode):
    split_root, image_root = unc_root(tmp_path)
    coco = image_root / "other/images/mscoco/images/train2014"
    (coco / IMG_B).write_bytes(b"not an image")
    report = import_official("unc", str(split_root), str(image_root), str(tmp_path / "o"),
                             images=mode, splits=["val", "testA"])
    details = {q["reason"]: q["detail"] for q in read(tmp_path / "o", "quarantine").to_pylist()}
    # the file to find is the original, not the copy under <out>/files/ that was never made
    assert str(coco / "missing_image.jpg") in details["missing_image"]
    assert "object at 0x" not in details["image_unreadable"]
    assert IMG_B in details["image_unreadable"]


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    split_root, image_root = unc_root(tmp_path)
    base = ["--split-root", str(split_root), "--image-root", str(image_root),
            "--out", str(tmp_path / "o")]
    assert main(["import-official", "--dataset", "refcoco"] + base) == 2
    assert "unknown dataset key 'refcoco'" in capsys.readouterr().err
    assert main(["import-official", "--dataset", "unc", "--split-root", str(tmp_path / "nope"),
                 "--image-root", str(image_root), "--out", str(tmp_path / "o")]) == 2
    assert "nope is not a folder" in capsys.readouterr().err
    save([CallPayload(builtins.exec, "1")], split_root / "unc" / "unc_train.pth", "pickle")
    assert main(["import-official", "--dataset", "unc"] + base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unc_train.pth" in err and "builtins.exec" in err
    assert "Traceback" not in err
    assert main(["export-official", str(tmp_path / "o"), "--dataset", "unc", "--split", "val",
                 "--out", str(tmp_path / "x.pth")]) == 2
    assert "no Parquet" in capsys.readouterr().err


def test_an_entry_whose_aux_nests_too_deep_is_rejected_not_a_crash():
    """An aux field nested far deeper than JSON can be written (RecursionError in json.dumps,
    which used to end the import with a traceback) rejects that entry, with a reason; the
    other entries of the file are kept. Planted: without the guard the RecursionError escapes."""
    deep: list = []
    for _ in range(200_000):
        deep = [deep]
    good = ("a.jpg", "1.pth", [1.0, 2.0, 30.0, 40.0], "the red circle", "x")
    bad = ("b.jpg", deep, [1.0, 2.0, 30.0, 40.0], "the blue square", "y")
    sf = SplitFile(uri="/x/unc_train.pth", name="unc_train.pth", split="train", source="gt", id_prefix="unc/train")
    rows, rejected = parse_entries([good, bad], "unc", sf)
    assert [r["image_id"] for r in rows] == ["a.jpg"]
    assert len(rejected) == 1 and "nested too deeply" in json.dumps(rejected[0])
