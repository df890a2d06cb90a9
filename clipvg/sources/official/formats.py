"""The official CLIP-VG split files' vocabulary: dataset keys, split names, image folders and
box formats, shared by the importer (:mod:`clipvg.sources.official.importer`) and the exporter
(:mod:`clipvg.sources.official.export`)."""

from __future__ import annotations

COCO_FAMILY = ("unc", "unc+", "gref", "gref_umd")
KEYS = COCO_FAMILY + ("referit", "flickr")
SPLITS = ("train", "val", "trainval", "test", "testA", "testB", "train_pseudo")
TRAIN_SEPARATE = "train_separate"  # selectable in ``splits=``: the per-source MSA files
IMAGE_FOLDERS = {
    **{k: "other/images/mscoco/images/train2014" for k in COCO_FAMILY},
    "referit": "referit/images",
    "flickr": "Flickr30k/flickr30k-images",
}
PLACEHOLDER = "useless placeholder"  # aux_1 / aux_2 of pseudo-label files


def box_format(key: str) -> str:
    """``"xywh"`` for the COCO family, ``"xyxy"`` for referit and flickr."""
    check_key(key)
    return "xywh" if key in COCO_FAMILY else "xyxy"


def check_key(key: str) -> None:
    if key not in KEYS:
        raise ValueError(f"unknown dataset key {key!r}; expected one of {', '.join(KEYS)}")
