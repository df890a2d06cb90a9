"""A tiny copy of CLIP-VG's released split roots for the ``unc`` key, written by the tests.

``release(tmp)`` writes ``full_sup_data/``, ``unsup_single_source/`` and
``unsup_multi_source/`` (with ``train_separate/``) as the README lays them out (method doc
§1.1), and an image root with the three COCO images they use. Every entry is listed here, so a
test can say exactly which rows it expects.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

P = "useless placeholder"
IMG_A, IMG_B, IMG_C = ("COCO_train2014_000000000839.jpg", "COCO_train2014_000000000840.jpg",
                       "COCO_train2014_000000000841.jpg")
SIZES = {IMG_A: (64, 48), IMG_B: (32, 24), IMG_C: (40, 30)}
COCO = "other/images/mscoco/images/train2014"

VAL = [(IMG_B, "9.pth", [1.5, 2.5, 3.0, 4.0], "Small Red Thing", [("r1", ["thing"])])]
TEST_A = [(IMG_A, "7.pth", [2.0, 3.0, 10.0, 10.0], "left guy", [])]
TEST_B = [(IMG_B, "8.pth", [0.5, 0.5, 5.0, 6.0], "the cup", [])]
TRAIN = [(IMG_A, "1.pth", [3.25, 4.5, 20.0, 15.0], "man on the right", [("r1", ["man"])]),
         (IMG_C, "2.pth", [1.0, 1.0, 8.0, 9.0], "blue bowl", [])]
TEMPLATE = [(IMG_A, P, [5.25, 6.5, 7.0, 8.0], "Left Man", P),
            (IMG_B, P, [4.0, 4.0, 0.0, 3.0], "zero width", P)]  # box_degenerate: quarantined
RELATION = [(IMG_A, P, [1.0, 2.0, 30.0, 20.0], "man near table", P)]
CAPTION = [(IMG_B, P, [2.0, 2.0, 12.0, 12.0], "a red cup", P)]
UNION = TEMPLATE + RELATION + CAPTION  # {d}_train_pseudo.pth of unsup_multi_source
SEPARATE = {"1_unc_train_pseudo_template_0_5.pth": TEMPLATE,
            "2_unc_train_pseudo_relation_0_5.pth": RELATION,
            "3_unc_train_pseudo_caption_0_45.pth": CAPTION}
SINGLE = TEMPLATE  # unsup_single_source's union file is the template source


def _save(entries: list, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(entries, path)


def release(tmp: Path) -> tuple[Path, Path]:
    """(folder holding the three split roots, image root)."""
    root, images = tmp / "release", tmp / "image_data"
    for name, split_files in {
        "full_sup_data": {"train": TRAIN, "val": VAL, "testA": TEST_A, "testB": TEST_B},
        "unsup_single_source": {"train_pseudo": SINGLE, "val": VAL, "testA": TEST_A,
                                "testB": TEST_B},
        "unsup_multi_source": {"train_pseudo": UNION, "val": VAL, "testA": TEST_A,
                               "testB": TEST_B},
    }.items():
        for split, entries in split_files.items():
            _save(entries, root / name / "unc" / f"unc_{split}.pth")
    for name, entries in SEPARATE.items():
        _save(entries, root / "unsup_multi_source" / "train_separate" / name)
    for name, size in SIZES.items():
        (images / COCO).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (200, 30, 30)).save(images / COCO / name, format="JPEG")
    return root, images


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative path -> (size, mtime_ns)."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = Path(dirpath) / name
            st = path.stat()
            out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out
