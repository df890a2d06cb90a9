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


def threshold_tag(t: float) -> str:
    """File-name form of a threshold: 0.3 -> "0_3", 0.0 -> "0_0", 0.35 -> "0_35", 1 -> "1_0"."""
    text = f"{t:.1f}" if round(t, 1) == t else f"{t:g}"
    return text.replace(".", "_")


def refine_file(dataset_key: str, tag: str) -> str:
    """An SSA-refined training file: samples with reliability > the tag's threshold."""
    return f"{dataset_key}_train_pseudo_refine_{tag}.pth"


def separate_file(position: int, dataset_key: str, source: str, tag: str) -> str:
    """An MSA step's file under ``train_separate/``: e.g. ``1_unc+_train_pseudo_template_0_5.pth``
    (position in the curriculum, source, threshold tag)."""
    return f"{position}_{dataset_key}_train_pseudo_{source}_{tag}.pth"


def box_format(key: str) -> str:
    """``"xywh"`` for the COCO family, ``"xyxy"`` for referit and flickr."""
    check_key(key)
    return "xywh" if key in COCO_FAMILY else "xyxy"


def check_key(key: str) -> None:
    if key not in KEYS:
        raise ValueError(f"unknown dataset key {key!r}; expected one of {', '.join(KEYS)}")
