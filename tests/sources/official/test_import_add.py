"""import-official: released pseudo-label files become curriculum sources, an existing dataset is
never replaced unasked, and ``--add`` puts two releases into one dataset.

The release is tests/official_release.py (every entry listed there); sample ids are
``unc/<split>/<row>`` and ``unc/train_separate-<source>/<row>``.
"""

from __future__ import annotations

import numpy as np
import pytest

from clipvg.cli import main
from clipvg.data import storage
from clipvg.data.dataset import GroundingDataset, load_split
from clipvg.data.pseudo_sources import pseudo_sources, source_rows
from clipvg.data.validate import validate_dataset
from clipvg.errors import UserError
from clipvg.sources.official.export import export_split
from clipvg.sources.official.importer import import_official
from clipvg.sources.official.unpickler import load_split_file
from official_release import (
    CAPTION, IMG_A, IMG_B, IMG_C, RELATION, SINGLE, TEMPLATE, TEST_A, TRAIN, release, snapshot,
)

MULTI_IDS = {  # accepted rows of unsup_multi_source (template row 1 has a zero-width box)
    "unc/val/0000000": ("val", "gt"), "unc/testA/0000000": ("testA", "gt"),
    "unc/testB/0000000": ("testB", "gt"),
    "unc/train_pseudo/0000000": ("train_pseudo", "pseudo"),
    "unc/train_pseudo/0000002": ("train_pseudo", "pseudo"),
    "unc/train_pseudo/0000003": ("train_pseudo", "pseudo"),
    "unc/train_separate-template/0000000": ("train_separate", "template"),
    "unc/train_separate-relation/0000000": ("train_separate", "relation"),
    "unc/train_separate-caption/0000000": ("train_separate", "caption"),
}
SOURCES = {
    "template": {"split": "train_separate", "files": ["1_unc_train_pseudo_template_0_5.pth"],
                 "rows": 1, "position": 1, "threshold": 0.5},
    "relation": {"split": "train_separate", "files": ["2_unc_train_pseudo_relation_0_5.pth"],
                 "rows": 1, "position": 2, "threshold": 0.5},
    "caption": {"split": "train_separate", "files": ["3_unc_train_pseudo_caption_0_45.pth"],
                "rows": 1, "position": 3, "threshold": 0.45},
}


@pytest.fixture
def rel(tmp_path):
    root, images = release(tmp_path)
    return root, images, tmp_path / "ds"


def imp(rel, release_name, **kw):
    root, images, out = rel
    kw.setdefault("progress", False)
    return import_official("unc", str(root / release_name), str(images), str(out), **kw)


def pairs(out) -> dict[str, tuple[str, str]]:
    t = storage.read_table(storage.join(str(out), "samples"))
    return {r["sample_id"]: (r["split"], r["source"]) for r in t.to_pylist()}


def manifest(out) -> dict:
    return storage.read_json(str(out / "manifest.json"))


def test_train_separate_files_are_curriculum_sources(rel):
    report = imp(rel, "unsup_multi_source")
    out = rel[2]
    assert pairs(out) == MULTI_IDS
    assert report.validation.reasons == {"box_degenerate": 2}
    m = manifest(out)
    assert pseudo_sources(str(out)) == SOURCES  # the union file is no curriculum source
    assert m["pseudo_sources"]["pseudo"] == {"split": "train_pseudo", "rows": 3, "position": None,
                                             "files": ["unc_train_pseudo.pth"], "threshold": None}
    assert {s: c["samples"] for s, c in m["counts"].items()} == {
        "testA": 1, "testB": 1, "train_pseudo": 3, "train_separate": 3, "val": 1}
    rows = source_rows(str(out), "template")
    assert rows.column("sample_id").to_pylist() == ["unc/train_separate-template/0000000"]
    assert rows.column("box_raw").to_pylist() == [TEMPLATE[0][2]]  # kept for an export
    # what reads split / source works on it; the images table has no split column
    assert "split" not in storage.table_schema(str(out / "images")).names
    ds = GroundingDataset(str(out), "train_separate", samples=source_rows(str(out), "caption"))
    (image, box, text), sid = ds[0]
    assert image.size == (32, 24) and text == "a red cup"
    np.testing.assert_array_equal(box, [2.0, 2.0, 14.0, 14.0])
    assert [r.sample_id for r in load_split(str(out), "train_separate")] == [
        "unc/train_separate-template/0000000", "unc/train_separate-relation/0000000",
        "unc/train_separate-caption/0000000"]
    path = str(out.parent / "relation.pth")
    assert export_split(str(out), "unc", "train_separate", path, source="relation") == 1
    assert load_split_file(path) == RELATION
    assert validate_dataset(str(out)).quarantined == 0


def test_union_source_names_the_single_source_release(rel):
    imp(rel, "unsup_single_source", union_source="template")
    out = rel[2]
    assert pseudo_sources(str(out)) == {"template": {
        "split": "train_pseudo", "files": ["unc_train_pseudo.pth"], "rows": 1,
        "position": None, "threshold": None}}
    rows = source_rows(str(out), "template")
    assert rows.column("sample_id").to_pylist() == ["unc/train_pseudo/0000000"]
    assert rows.column("text").to_pylist() == [SINGLE[0][3]]


def test_union_source_refusals_write_nothing(rel):
    out = rel[2]
    with pytest.raises(UserError, match="1_unc_train_pseudo_template_0_5.pth is source "
                                        "'template' too; its labels would count twice"):
        imp(rel, "unsup_multi_source", union_source="template")
    with pytest.raises(UserError, match="no unc_train_pseudo.pth is imported"):
        imp(rel, "unsup_single_source", union_source="template", splits=["val"])
    with pytest.raises(UserError, match="not a source name"):
        imp(rel, "unsup_single_source", union_source="gt")
    assert not out.exists()
    # a name no train_separate file has is fine next to them
    imp(rel, "unsup_multi_source", union_source="everything")
    assert set(pseudo_sources(str(out))) == {"template", "relation", "caption", "everything"}


def test_an_existing_dataset_is_refused_and_left_unchanged(rel, capsys):
    root, images, out = rel
    imp(rel, "unsup_multi_source")
    before = snapshot(out)
    with pytest.raises(UserError, match=r"already holds a dataset \(manifest.json, samples, "
                                        r"images, quarantine, files\); .*--add.*--overwrite"):
        imp(rel, "full_sup_data")
    argv = ["import-official", "--dataset", "unc", "--split-root", str(root / "full_sup_data"),
            "--image-root", str(images), "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert snapshot(out) == before
    # part of a dataset (an import that stopped while copying images) counts too
    partial = out.parent / "partial"
    (partial / "files").mkdir(parents=True)
    with pytest.raises(UserError, match=r"already holds a dataset \(files\)"):
        import_official("unc", str(root / "full_sup_data"), str(images), str(partial))
    (out.parent / "empty").mkdir()  # an empty folder is fine
    import_official("unc", str(root / "full_sup_data"), str(images), str(out.parent / "empty"),
                    splits=["val"], progress=False)


def test_add_full_supervision_train_to_the_unsupervised_release(rel):
    out = rel[2]
    imp(rel, "unsup_multi_source")
    first = manifest(out)
    report = imp(rel, "full_sup_data", splits=["train"], add=True)
    assert report.validation.accepted == 2
    train = {"unc/train/0000000": ("train", "gt"), "unc/train/0000001": ("train", "gt")}
    assert pairs(out) == {**MULTI_IDS, **train}
    imgs = storage.read_table(str(out / "images")).sort_by("image_id").to_pylist()
    assert [(r["image_id"], r["uri"], r["width"]) for r in imgs] == [
        (IMG_A, f"files/{IMG_A}", 64), (IMG_B, f"files/{IMG_B}", 32),
        (IMG_C, f"files/{IMG_C}", 40)]
    assert (out / "files" / IMG_C).exists()
    quarantine = storage.read_table(str(out / "quarantine")).column("sample_id").to_pylist()
    assert sorted(quarantine) == ["unc/train_pseudo/0000001",
                                  "unc/train_separate-template/0000001"]
    m = manifest(out)
    assert [f["name"] for f in m["official"]["files"]] == [
        f["name"] for f in first["official"]["files"]] + ["unc_train.pth"]
    assert m["official"]["added"] == [{"split_root": str(rel[0] / "full_sup_data"),
                                       "image_folder": str(rel[1] / "other/images/mscoco/"
                                                           "images/train2014")}]
    assert m["counts"]["train"] == {"images": 2, "samples": 2}
    assert m["counts"]["val"] == first["counts"]["val"]
    assert m["pseudo_sources"] == first["pseudo_sources"]
    v = m["validation"]
    assert (v["input_rows"], v["accepted"], v["quarantined"]) == (13, 11, 2)
    assert validate_dataset(str(out)).quarantined == 0
    path = str(out.parent / "train.pth")
    export_split(str(out), "unc", "train", path)
    assert [(e[0], e[2], e[3]) for e in load_split_file(path)] == [
        (e[0], e[2], e[3]) for e in TRAIN]


def test_add_refuses_what_is_there_and_changes_nothing(rel, tmp_path):
    root, images, out = rel
    imp(rel, "unsup_multi_source")
    imp(rel, "full_sup_data", splits=["train"], add=True)
    before = snapshot(out)
    refusals = [
        (dict(splits=["train"]), "unc_train.pth is in .* already"),
        (dict(splits=["val"]), "unc_val.pth is in .* already"),
        (dict(images="pack"), "was imported with --images copy, not pack"),
    ]
    for kw, message in refusals:
        with pytest.raises(UserError, match=message):
            imp(rel, "full_sup_data", add=True, **kw)
    # another file of a (split, source) the dataset has: the template source at another h
    other = root / "unsup_other" / "train_separate" / "1_unc_train_pseudo_template_0_3.pth"
    other.parent.mkdir(parents=True)
    other.write_bytes((root / "unsup_multi_source" / "train_separate" /
                       "1_unc_train_pseudo_template_0_5.pth").read_bytes())
    with pytest.raises(UserError, match=r"has split train_separate \(source template\) already"):
        imp(rel, "unsup_other", add=True)
    with pytest.raises(UserError, match="holds dataset 'unc', not 'unc\\+'"):
        (root / "full_sup_data" / "unc+").mkdir()
        (root / "full_sup_data" / "unc" / "unc_val.pth").rename(
            root / "full_sup_data" / "unc+" / "unc+_val.pth")
        import_official("unc+", str(root / "full_sup_data"), str(images), str(out), add=True)
    assert snapshot(out) == before
    with pytest.raises(UserError, match="give --overwrite .* or --add .*, not both"):
        imp(rel, "full_sup_data", add=True, overwrite=True)
    with pytest.raises(UserError, match="holds no dataset to add to"):
        import_official("unc", str(root / "full_sup_data"), str(images), str(tmp_path / "x"),
                        add=True)


def test_add_refuses_a_source_that_would_count_twice(rel):
    root, images, out = rel
    imp(rel, "unsup_single_source", union_source="template")
    before = snapshot(out)
    with pytest.raises(UserError, match="has pseudo-label source 'template' already; "
                                        "1_unc_train_pseudo_template_0_5.pth would count it"):
        imp(rel, "unsup_multi_source", splits=["train_separate"], add=True)
    assert snapshot(out) == before
    # without the template file, the other two sources are new
    (root / "unsup_multi_source" / "train_separate" / "1_unc_train_pseudo_template_0_5.pth"
     ).unlink()
    imp(rel, "unsup_multi_source", splits=["train_separate"], add=True)
    assert pseudo_sources(str(out)) == {
        "template": {"split": "train_pseudo", "files": ["unc_train_pseudo.pth"], "rows": 1,
                     "position": None, "threshold": None},
        "relation": SOURCES["relation"], "caption": SOURCES["caption"]}
    assert source_rows(str(out), "caption").column("text").to_pylist() == [CAPTION[0][3]]


def test_overwrite_replaces_the_dataset(rel, capsys):
    root, images, out = rel
    imp(rel, "unsup_multi_source")
    argv = ["import-official", "--dataset", "unc", "--split-root", str(root / "full_sup_data"),
            "--image-root", str(images), "--out", str(out), "--no-progress", "--splits", "testA"]
    assert main(argv + ["--overwrite"]) == 0
    assert pairs(out) == {"unc/testA/0000000": ("testA", "gt")}
    assert sorted(p.name for p in (out / "files").iterdir()) == [TEST_A[0][0]]
    assert "pseudo_sources" in manifest(out) and pseudo_sources(str(out)) == {}
    assert main(argv[:-2] + ["--splits", "val", "--add"]) == 0
    assert "(added)" in capsys.readouterr().out
    assert pairs(out) == {"unc/testA/0000000": ("testA", "gt"), "unc/val/0000000": ("val", "gt")}
    assert sorted(p.name for p in (out / "files").iterdir()) == sorted([IMG_A, IMG_B])


def test_refuse_and_add_on_s3(rel, s3):
    root, images, _ = rel
    out = s3.uri("added")
    run = lambda name, **kw: import_official(  # noqa: E731
        "unc", str(root / name), str(images), out, progress=False, **s3.options, **kw)
    run("unsup_multi_source", splits=["val", "train_separate"])
    with pytest.raises(UserError, match="already holds a dataset"):
        run("full_sup_data", splits=["train"])
    run("full_sup_data", splits=["train"], add=True)
    samples = storage.read_table(storage.join(out, "samples"), **s3.options)
    assert sorted(samples.column("sample_id").to_pylist()) == [
        "unc/train/0000000", "unc/train/0000001", "unc/train_separate-caption/0000000",
        "unc/train_separate-relation/0000000", "unc/train_separate-template/0000000",
        "unc/val/0000000"]
    assert storage.exists(storage.join(out, "files", IMG_C), **s3.options)
    assert pseudo_sources(out, **s3.options) == SOURCES
