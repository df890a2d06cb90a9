"""A tiny CLIP-VG release in the official layout, made from a synthetic world, for the tests
that run the curriculum the way a researcher with the released files would.

Layout (method doc §1.1-§1.2; the release's folders, COCO-named JPEGs)::

    <root>/image_data/other/images/mscoco/images/train2014/COCO_train2014_<12 digits>.jpg
    <root>/unsup_multi_source/unc/unc_{val,testA,testB,train_pseudo}.pth
    <root>/unsup_multi_source/unc/train_separate/{1,2,3}_unc_train_pseudo_{template,relation,caption}_0_5.pth
    <root>/full_sup_data/unc/unc_{train,val,testA,testB}.pth

Entries are written here by hand as the release has them: ``(image, aux_1, [x, y, w, h],
expression, aux_2)``, ground truth with a per-object ``'<n>.pth'`` aux_1 and a phrase-structure
aux_2, pseudo-labels with ``'useless placeholder'`` in both. The pseudo-labels are the synthetic
world's template / relation / caption generators over its simulated detector, scene graph and
captioner (noisy, as real ones); the union file is the three per-source files concatenated in
curriculum order, as the release's ``merge_file.py`` makes it. The world's test split is cut in
two for testA / testB.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pyarrow.compute as pc
import torch

from clipvg.cli import main
from clipvg.config import SynthConfig
from clipvg.data import storage
from clipvg.pseudo.generate import generate_for_images
from clipvg.sources.synthetic.scenes import write_world

KEY = "unc"
IMAGE_FOLDER = Path("image_data/other/images/mscoco/images/train2014")
PLACEHOLDER = "useless placeholder"
SOURCES = ("template", "relation", "caption")


def tiny_world(tmp: Path) -> str:
    """The tests' tiny synthetic world (64 px, 24 / 6 / 6 images) with JPEG files, at tmp/world."""
    world = str(tmp / "world")
    write_world(world, SynthConfig(image_size=64, train_images=24, val_images=6, test_images=6),
                seed=0, image_format="jpg")
    return world


def cli(*argv: str) -> tuple[int, str]:
    """``clipvg <argv>`` in this process: (exit status, what it printed)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = main(list(argv))
    return rc, text.getvalue()


def coco_name(k: int) -> str:
    return f"COCO_train2014_{k:012d}.jpg"


def _xywh(box) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def _gt_entries(rows: list[dict], names: dict[str, str]) -> list[tuple]:
    return [(names[r["image_id"]], f"{i}.pth", _xywh(r["box"]), r["text"], [("r1", [r["text"].split()[-1]])])
            for i, r in enumerate(rows)]


def _pseudo_entries(rows: list[dict], names: dict[str, str]) -> list[tuple]:
    return [(names[r["image_id"]], PLACEHOLDER, _xywh(r["box"]), r["text"], PLACEHOLDER) for r in rows]


def write_release(world: str, root: Path) -> dict:
    """Write the release of the synthetic world at ``world`` (a jpg world) under ``root``;
    returns ``{"splits": {split: entries}, "sources": {source: entries}, "images": n}``."""
    samples = storage.read_table(f"{world}/samples").to_pylist()
    images = storage.read_table(f"{world}/images")
    names = {im: coco_name(k + 1) for k, im in enumerate(images.column("image_id").to_pylist())}
    folder = root / IMAGE_FOLDER
    folder.mkdir(parents=True)
    for im, uri in zip(images.column("image_id").to_pylist(), images.column("uri").to_pylist()):
        (folder / names[im]).write_bytes(Path(world, uri).read_bytes())

    by_split = {s: [r for r in samples if r["split"] == s] for s in ("train", "val", "test")}
    test_images = sorted({r["image_id"] for r in by_split["test"]})
    half = set(test_images[: len(test_images) // 2])
    splits = {"train": by_split["train"], "val": by_split["val"],
              "testA": [r for r in by_split["test"] if r["image_id"] in half],
              "testB": [r for r in by_split["test"] if r["image_id"] not in half]}
    gt = {s: _gt_entries(rows, names) for s, rows in splits.items()}

    train_images = images.filter(pc.field("split") == "train")
    records = {t: storage.read_table(f"{world}/{t}").filter(pc.field("split") == "train")
               for t in ("detections", "triplets", "captions")}
    pseudo = {s: _pseudo_entries(generate_for_images(s, train_images, records["detections"], records["triplets"],
                                                     records["captions"], seed=0, dataset=KEY).to_pylist(), names)
              for s in SOURCES}

    full, multi = root / "full_sup_data" / KEY, root / "unsup_multi_source" / KEY
    for split, entries in gt.items():
        _save(entries, full / f"{KEY}_{split}.pth")
        if split != "train":  # the unsupervised release has no ground-truth train file
            _save(entries, multi / f"{KEY}_{split}.pth")
    for pos, s in enumerate(SOURCES, 1):
        _save(pseudo[s], multi / "train_separate" / f"{pos}_{KEY}_train_pseudo_{s}_0_5.pth")
    _save([e for s in SOURCES for e in pseudo[s]], multi / f"{KEY}_train_pseudo.pth")
    return {"splits": gt, "sources": pseudo, "images": len(names)}


def _save(entries: list[tuple], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(entries, path)


# ------------------------------------------------------------------------------ real formats
# The world's simulated model outputs, written as the real tools write theirs (docs/pseudo.md
# §1.1): Pseudo-Q's released detection results (file name -> [[class, [x0, y0, x1, y1, conf]]],
# torch.save), COCO detection results + an instances file, RelTR's raw outputs as JSON lines
# (logits over the VG150 vocabularies, boxes normalised cx, cy, w, h), captions as JSON lines.
# RelTR only knows VG150 names, so the world's shapes and predicates are renamed into them.
VG_NAMES = ("plate", "box", "kite", "flower", "sign", "tile", "wheel", "vase")
VG_PREDICATE = {"above": "above", "below": "under"}  # every other world predicate -> "near"


def _records_of(world: str, table: str, images: set[str]) -> list[dict]:
    rows = storage.read_table(f"{world}/{table}").to_pylist()
    return [r for r in rows if r["image_id"] in images]


def _logits(index: int, width: int, peak: float = 8.0) -> list[float]:
    out = [0.0] * width
    out[index] = peak
    return out


def _normalised(box, w: int, h: int) -> list[float]:
    x0, y0, x1, y1 = box
    return [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]


def write_real_records(world: str, root: Path, splits=("train", "val")) -> dict:
    """The four real-format files for the world's images of ``splits`` under ``root``; returns
    their paths and the COCO names of the images they cover."""
    from clipvg.sources.records.vocab import RELTR_CLASSES, RELTR_PREDICATES

    images = storage.read_table(f"{world}/images")
    names = {im: coco_name(k + 1) for k, im in enumerate(images.column("image_id").to_pylist())}
    size = {r["image_id"]: (r["width"], r["height"]) for r in images.to_pylist()}
    covered = {r["image_id"] for r in images.to_pylist() if r["split"] in splits}
    dets = _records_of(world, "detections", covered)
    root.mkdir(parents=True, exist_ok=True)
    files = {}

    pseudoq: dict[str, list] = {names[im]: [] for im in sorted(covered)}
    for d in dets:
        pseudoq[names[d["image_id"]]].append([d["label"], [*map(float, d["box"]), float(d["score"])]])
    torch.save(pseudoq, root / "unc_train_pseudo_split0_detection_results.pth")
    files["pseudoq"] = root / "unc_train_pseudo_split0_detection_results.pth"

    labels = sorted({d["label"] for d in dets})
    ids = {im: k + 1 for k, im in enumerate(sorted(covered))}
    (root / "instances.json").write_text(json.dumps({
        "images": [{"id": ids[im], "file_name": names[im], "width": size[im][0], "height": size[im][1]}
                   for im in sorted(covered)],
        "categories": [{"id": j + 1, "name": n} for j, n in enumerate(labels)]}))
    (root / "coco_results.json").write_text(json.dumps([
        {"image_id": ids[d["image_id"]], "category_id": labels.index(d["label"]) + 1,
         "bbox": _xywh(d["box"]), "score": float(d["score"])} for d in dets]))
    files["coco"], files["instances"] = root / "coco_results.json", root / "instances.json"

    shapes = sorted({t[k] for t in _records_of(world, "triplets", covered) for k in ("subject", "object")})
    assert len(shapes) <= len(VG_NAMES), shapes
    vg = {s: RELTR_CLASSES.index(VG_NAMES[i]) for i, s in enumerate(shapes)}
    lines: dict[str, dict] = {}
    for t in _records_of(world, "triplets", covered):
        w, h = size[t["image_id"]]
        line = lines.setdefault(t["image_id"], {"image": names[t["image_id"]], **{k: [] for k in (
            "sub_logits", "obj_logits", "rel_logits", "sub_boxes", "obj_boxes")}})
        line["sub_logits"].append(_logits(vg[t["subject"]], len(RELTR_CLASSES) + 1))
        line["obj_logits"].append(_logits(vg[t["object"]], len(RELTR_CLASSES) + 1))
        pred = RELTR_PREDICATES.index(VG_PREDICATE.get(t["predicate"], "near"))
        line["rel_logits"].append(_logits(pred, len(RELTR_PREDICATES) + 1))
        line["sub_boxes"].append(_normalised(t["subject_box"], w, h))
        line["obj_boxes"].append(_normalised(t["object_box"], w, h))
    (root / "reltr.jsonl").write_text("".join(json.dumps(v) + "\n" for v in lines.values()))
    files["reltr"] = root / "reltr.jsonl"

    (root / "captions.jsonl").write_text("".join(
        json.dumps({"image": names[c["image_id"]], "caption": c["caption"], "score": float(c["score"])}) + "\n"
        for c in _records_of(world, "captions", covered)))
    files["captions"] = root / "captions.jsonl"
    return {"files": files, "images": {names[im] for im in covered}}
